// trainer/launch.h: `sft launch`, our multi-process launcher with torchrun's environment contract.
// This header holds the parsed options and the per-rank environment (pure functions, unit-testable);
// the process supervision (spawning, output relay, signals, failure handling) is trainer/launch_process.h.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sft {

struct LaunchOptions {
  int nproc_per_node = 0;  // required, >= 1
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";  // torchrun's default
  int master_port = 29500;                // torchrun's default; 0 = node 0 picks a free port
  double grace_s = 30.0;                  // SIGTERM -> SIGKILL grace when stopping ranks (torchrun: 30 s)
  std::vector<std::string> command;       // everything after `--`, never empty
};

// Parses `sft launch` arguments (without the word `launch`). Bad usage throws sft::InputError (exit 2).
LaunchOptions parse_launch_options(const std::vector<std::string>& args);

// The variables torchrun's LocalElasticAgent sets for a worker (static rendezvous, no restarts), with the
// values for this local rank. `inherited_omp_threads` is OMP_NUM_THREADS of the launcher, if set.
std::map<std::string, std::string> rank_environment(const LaunchOptions& options, int local_rank, int master_port,
                                                    const char* inherited_omp_threads,
                                                    const char* inherited_nccl_async_error_handling);

// The program and argv a rank runs: a COMMAND with a '/' is a program path run as is (torchrun
// --no-python); otherwise it is an sft subcommand run by `self_exe` (this binary).
std::vector<std::string> rank_argv(const std::vector<std::string>& command, const std::string& self_exe);

int command_launch(const std::vector<std::string>& args);
const char* launch_usage();    // `sft help launch`: the options, their defaults, the COMMAND rule
const char* launch_summary();  // its one line in `sft help`

}  // namespace sft
