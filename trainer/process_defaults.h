// trainer/process_defaults.h: the process-wide runtime settings the `sft` executable applies before it
// does anything else (OpenMP wait policy, malloc tuning), each chosen by scripts/bench_runtime.sh's
// measurement (README "Training throughput"), each with an environment escape hatch, and the report of
// what is in effect (a line of `sft --version`).
#pragma once
#include <map>
#include <string>

namespace sft {

// Call first thing in main(). OpenMP: LibTorch's libgomp reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once,
// when it is loaded (before main), so when neither is set this sets OMP_WAIT_POLICY=passive and re-executes
// the binary (same pid and argv) once; a user's own setting is left alone. malloc: unless
// SFT_MALLOC_TUNING=off, mallopt fixes glibc's mmap and trim thresholds (kMallocMmapThreshold and
// kMallocTrimThreshold) so that per-step temporaries reuse heap pages instead of faulting fresh ones.
void apply_process_defaults(char** argv);

// "OpenMP wait policy: passive (sft default; ...)\nmalloc: glibc 2.36, mmap threshold 32 MiB, ..." for
// `sft --version`: what this process actually runs with.
std::string process_defaults_report();

// The variables apply_process_defaults set for its re-execution (OMP_WAIT_POLICY and its marker), removed
// from `env` when they came from sft and not from the user: `sft launch` gives its ranks the environment
// torchrun would (each rank then applies the default itself).
void remove_process_default_variables(std::map<std::string, std::string>& env);

}  // namespace sft
