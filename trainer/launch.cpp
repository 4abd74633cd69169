// trainer/launch.cpp: `sft launch`: option parsing, torchrun's per-rank environment, the TCPStore that
// node 0 hosts for the job, and the command itself (the processes are trainer/launch_process.cpp).
#include "trainer/launch.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "common/errors.h"
#include "trainer/cli.h"
#include "trainer/launch_process.h"
#include "trainer/process_defaults.h"

extern char** environ;  // POSIX: the launcher's environment, which every rank inherits

namespace sft {
namespace fs = std::filesystem;

namespace {

constexpr int kMaxProcsPerNode = 1024;

// An integer option in [low, high], or `fallback` when absent.
int bounded_integer(const CommandLine& cli, const std::string& flag, int64_t fallback, int64_t low, int64_t high,
                    const std::string& meaning) {
  const int64_t value = cli.integer(flag, fallback);
  if (value < low || value > high) {
    throw InputError("sft launch: " + flag + " must be " + meaning + ", got " + std::to_string(value));
  }
  return static_cast<int>(value);
}

// Hosts the job's TCPStore as torchrun's agent does (c10d's own server, libuv backend). `port` 0 lets
// the kernel pick a free one; the store then knows the real one.
c10::intrusive_ptr<c10d::TCPStore> host_store(const std::string& addr, int port) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = true;
  options.waitWorkers = false;  // ranks join when they start; nobody waits for them here
  options.multiTenant = true;   // as torchrun's static rendezvous
  options.timeout = std::chrono::seconds(30);
  try {
    return c10::make_intrusive<c10d::TCPStore>(addr, options);
  } catch (const c10::Error& e) {
    // c10's message without its C++ backtrace: it ends in the errno name, e.g. "name: EADDRINUSE".
    throw InputError("sft launch: cannot host the TCPStore on master port " + std::to_string(port) +
                     " (is the port in use? pick another with --master-port, or 0 for a free one): " +
                     e.what_without_backtrace());
  }
}

}  // namespace

const char* launch_usage() {
  return "sft launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] [--grace-s S] "
         "-- COMMAND [ARGS ...]\n"
         "  COMMAND: an sft subcommand (train, eval, ...), run by this same binary, or a program path (any\n"
         "           COMMAND with a '/'), run as is, like `torchrun --no-python`\n"
         "  --nproc-per-node N   ranks on this node (required, >= 1)\n"
         "  --nnodes M           nodes in the job (default 1); WORLD_SIZE = M * N\n"
         "  --node-rank R        this node, 0 .. M-1 (default 0); RANK = R * N + LOCAL_RANK\n"
         "  --master-addr A      address of node 0 (default 127.0.0.1)\n"
         "  --master-port P      port of node 0's TCPStore (default 29500); 0 = node 0 picks a free port\n"
         "                       and prints it (other nodes must be given the real one)\n"
         "  --grace-s S          after a rank fails, SIGTERM the others and SIGKILL them S s later (default 30)\n"
         "  Ranks get torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...);\n"
         "  their output is prefixed `[rank K] `; SIGTERM/SIGINT are forwarded (twice: SIGKILL).\n"
         "  Exit code: 0 when every rank exits 0, else the first failing rank's code (1 for a signal).";
}

const char* launch_summary() {
  return "start N ranks of an sft command (or a program) with torchrun's environment; node 0 hosts the TCPStore";
}

LaunchOptions parse_launch_options(const std::vector<std::string>& args) {
  const auto separator = std::find(args.begin(), args.end(), "--");
  if (separator == args.end()) {
    throw InputError("sft launch: put the command after `--`, e.g. `sft launch --nproc-per-node 2 -- train "
                     "CONFIG.yaml` (see `sft help launch`)");
  }
  LaunchOptions options;
  options.command.assign(separator + 1, args.end());
  if (options.command.empty()) {
    throw InputError("sft launch: nothing after `--`: give an sft subcommand (train, eval, ...) or a program path");
  }
  // torchrun's underscore spellings (--nproc_per_node, --master_port, ...) are accepted too.
  std::vector<std::string> launcher_args(args.begin(), separator);
  for (std::string& arg : launcher_args) {
    if (arg.rfind("--", 0) != 0) continue;
    const size_t end = std::min(arg.find('='), arg.size());
    std::replace(arg.begin(), arg.begin() + static_cast<std::ptrdiff_t>(end), '_', '-');
  }
  const CommandLine cli("launch", launcher_args,
                        {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--grace-s"});
  for (const std::vector<std::string>* stray : {&cli.positional(), &cli.overrides()}) {
    if (!stray->empty()) {
      throw InputError("sft launch: unexpected argument '" + stray->front() +
                       "' before `--` (the command and its arguments go after `--`)");
    }
  }
  cli.required("--nproc-per-node");  // throws when it is absent: no default, unlike torchrun's 1
  options.nproc_per_node = bounded_integer(cli, "--nproc-per-node", 0, 1, kMaxProcsPerNode,
                                           "between 1 and " + std::to_string(kMaxProcsPerNode));
  options.nnodes = bounded_integer(cli, "--nnodes", 1, 1, 1 << 20, ">= 1");
  options.node_rank = bounded_integer(cli, "--node-rank", 0, 0, options.nnodes - 1,
                                      "in [0, --nnodes) = [0, " + std::to_string(options.nnodes) + ")");
  options.master_port = bounded_integer(cli, "--master-port", 29500, 0, 65535, "a port in [0, 65535]");
  if (options.master_port == 0 && options.node_rank > 0) {
    throw InputError("sft launch: --master-port 0 (pick a free port) works on node 0 only; node " +
                     std::to_string(options.node_rank) + " needs the port node 0 printed");
  }
  options.master_addr = cli.value("--master-addr").value_or(options.master_addr);
  if (options.master_addr.empty()) throw InputError("sft launch: --master-addr is empty");
  options.grace_s = cli.number("--grace-s", options.grace_s);
  if (!(options.grace_s >= 0 && options.grace_s <= 86400)) {
    throw InputError("sft launch: --grace-s must be in [0, 86400] seconds, got " + *cli.value("--grace-s"));
  }
  return options;
}

std::map<std::string, std::string> rank_environment(const LaunchOptions& options, int local_rank, int master_port,
                                                    const char* inherited_omp_threads,
                                                    const char* inherited_nccl_async_error_handling) {
  const int world_size = options.nnodes * options.nproc_per_node;
  const int rank = options.node_rank * options.nproc_per_node + local_rank;
  // Names and values as torch/distributed/elastic/agent/server/local_elastic_agent.py (_start_workers),
  // with one role ("default"), static rendezvous (run id "none", the agent's store) and no restarts.
  std::map<std::string, std::string> env = {
      {"RANK", std::to_string(rank)},
      {"LOCAL_RANK", std::to_string(local_rank)},
      {"GROUP_RANK", std::to_string(options.node_rank)},
      {"ROLE_RANK", std::to_string(rank)},
      {"ROLE_NAME", "default"},
      {"LOCAL_WORLD_SIZE", std::to_string(options.nproc_per_node)},
      {"WORLD_SIZE", std::to_string(world_size)},
      {"GROUP_WORLD_SIZE", std::to_string(options.nnodes)},
      {"ROLE_WORLD_SIZE", std::to_string(world_size)},
      {"MASTER_ADDR", options.master_addr},
      {"MASTER_PORT", std::to_string(master_port)},
      {"TORCHELASTIC_RESTART_COUNT", "0"},
      {"TORCHELASTIC_MAX_RESTARTS", "0"},
      {"TORCHELASTIC_RUN_ID", "none"},
      {"TORCHELASTIC_USE_AGENT_STORE", "True"},
      {"TORCH_NCCL_ASYNC_ERROR_HANDLING",
       inherited_nccl_async_error_handling ? inherited_nccl_async_error_handling : "1"},
  };
  // torch/distributed/run.py: OMP_NUM_THREADS=1 when unset and more than one process per node.
  if (inherited_omp_threads) {
    env["OMP_NUM_THREADS"] = inherited_omp_threads;
  } else if (options.nproc_per_node > 1) {
    env["OMP_NUM_THREADS"] = "1";
  }
  return env;
}

std::vector<std::string> rank_argv(const std::vector<std::string>& command, const std::string& self_exe) {
  if (command[0].find('/') != std::string::npos) return command;
  std::vector<std::string> argv{self_exe};
  argv.insert(argv.end(), command.begin(), command.end());
  return argv;
}

int command_launch(const std::vector<std::string>& args) {
  const LaunchOptions options = parse_launch_options(args);
  const std::vector<std::string> argv = rank_argv(options.command, fs::read_symlink("/proc/self/exe").string());
  if (access(argv[0].c_str(), X_OK) != 0) {
    throw InputError("sft launch: cannot run '" + argv[0] + "': not an executable file");
  }

  const LaunchSignals signals;  // before the store's server thread starts, so it inherits the mask
  c10::intrusive_ptr<c10d::TCPStore> store;  // node 0 only; alive until every rank has ended
  int master_port = options.master_port;
  if (options.node_rank == 0) {
    store = host_store(options.master_addr, options.master_port);
    master_port = store->getPort();
  }
  const int world_size = options.nnodes * options.nproc_per_node;
  const int first_rank = options.node_rank * options.nproc_per_node;
  std::cerr << "sft launch: node " << options.node_rank << " of " << options.nnodes << ", ranks " << first_rank
            << ".." << first_rank + options.nproc_per_node - 1 << " of world size " << world_size << "; TCPStore "
            << (store ? "hosted at " : "of node 0 at ") << options.master_addr << ":" << master_port << std::endl;

  std::map<std::string, std::string> inherited;
  for (char** item = environ; *item; ++item) {
    const std::string text = *item;
    const size_t eq = text.find('=');
    if (eq != std::string::npos) inherited[text.substr(0, eq)] = text.substr(eq + 1);
  }
  remove_process_default_variables(inherited);  // sft's own OpenMP default is not the user's environment
  std::vector<RankSpec> ranks;
  for (int local_rank = 0; local_rank < options.nproc_per_node; ++local_rank) {
    std::map<std::string, std::string> env = inherited;
    for (const auto& [name, value] : rank_environment(options, local_rank, master_port, std::getenv("OMP_NUM_THREADS"),
                                                      std::getenv("TORCH_NCCL_ASYNC_ERROR_HANDLING"))) {
      env[name] = value;
    }
    RankSpec spec{first_rank + local_rank, local_rank, argv, {}};
    for (const auto& [name, value] : env) spec.environment.push_back(name + "=" + value);
    ranks.push_back(std::move(spec));
  }
  return supervise_ranks(ranks, options.grace_s, signals);
}

}  // namespace sft
