// trainer/process_defaults.h: the process-wide runtime settings the `sft` executable applies before it
// does anything else (OpenMP wait policy, malloc tuning), each chosen by scripts/bench_runtime.sh's
// measurement (README "Training throughput"), each with an environment escape hatch, and the report of
// what is in effect (a line of `sft --version`).
#pragma once
#include <map>
#include <optional>
#include <string>

namespace sft {

// Other processes' CPU use at start, in cores, from which sft's OpenMP default follows: at least this many
// busy cores (another job holding half a core or more) and the wait is passive, else libgomp's own spin.
constexpr double kBusyCoresForPassiveWait = 0.5;

// Call first thing in main(). OpenMP: when the user set neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT, this
// looks at /proc/stat for 100 ms; on a busy machine (wants_passive_wait) it sets OMP_WAIT_POLICY=passive
// and re-executes the binary (same pid and argv) once, because LibTorch's libgomp reads the variable only
// when it is loaded (before main); on an idle one libgomp's default stays. A user's own setting is left alone. malloc: unless
// SFT_MALLOC_TUNING=off, mallopt fixes glibc's mmap and trim thresholds (kMallocMmapThreshold and
// kMallocTrimThreshold) so that per-step temporaries reuse heap pages instead of faulting fresh ones.
void apply_process_defaults(char** argv);

// "OpenMP wait policy: passive (sft default; ...)\nmalloc: glibc 2.36, mmap threshold 32 MiB, ..." for
// `sft --version`: what this process actually runs with.
std::string process_defaults_report();

// Hands the free pages of glibc's heap back to the kernel (malloc_trim): called once after the model is
// loaded and transformed, whose temporaries (file reads, quantisation, LoRA init) would otherwise stay
// resident under the 1 GiB trim threshold for the whole run. A no-op under jemalloc or tcmalloc.
void release_free_heap_pages();

// Busy cores between two first lines of /proc/stat ("cpu  user nice system idle iowait ..."): the share
// of non-idle ticks times the online cores. nullopt when a line does not parse or no time passed.
std::optional<double> busy_cores_between(const std::string& stat_before, const std::string& stat_after,
                                         long online_cores);
bool wants_passive_wait(double busy_cores);

// The variables apply_process_defaults set for its re-execution (OMP_WAIT_POLICY and its marker), removed
// from `env` when they came from sft and not from the user: `sft launch` gives its ranks the environment
// torchrun would (each rank then applies the default itself).
void remove_process_default_variables(std::map<std::string, std::string>& env);

}  // namespace sft
