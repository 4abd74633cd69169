// trainer/process_group.cpp: torchrun's environment -> TCPStore client (or host) -> PrefixStore per
// restart attempt -> ProcessGroupGloo / ProcessGroupNCCL (made by the CUDA plugin, kernels/cuda_plugin.h),
// and the few collectives the trainer uses.
#include "trainer/process_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>

#include "common/errors.h"
#include "kernels/cuda_plugin.h"

namespace sft {
namespace {

std::optional<int64_t> env_int(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* text = getenv(name);
  if (!text || !*text) return std::nullopt;
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used, 10);
    if (used == std::string(text).size()) return value;
  } catch (const std::exception&) {
  }
  throw InputError(std::string("environment: ") + name + "='" + text + "' is not an integer");
}

std::vector<uint8_t> to_bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string from_bytes(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

bool is_loopback(const std::string& host) { return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1"; }

}  // namespace

DistEnv read_dist_env(const std::function<const char*(const char*)>& getenv) {
  DistEnv env;
  const auto rank = env_int(getenv, "RANK");
  const auto world = env_int(getenv, "WORLD_SIZE");
  if (!rank && !world) return env;  // no launcher: single process
  if (!rank || !world) {
    throw InputError(std::string("environment: ") + (rank ? "RANK" : "WORLD_SIZE") + " is set but " +
                     (rank ? "WORLD_SIZE" : "RANK") + " is not (launch with torchrun or sft launch)");
  }
  if (*world < 1) throw InputError("environment: WORLD_SIZE=" + std::to_string(*world) + " must be >= 1");
  if (*rank < 0 || *rank >= *world) {
    throw InputError("environment: RANK=" + std::to_string(*rank) + " is outside [0, WORLD_SIZE=" +
                     std::to_string(*world) + ")");
  }
  env.rank = *rank;
  env.world_size = *world;
  env.local_world_size = env_int(getenv, "LOCAL_WORLD_SIZE").value_or(*world);
  env.local_rank = env_int(getenv, "LOCAL_RANK").value_or(*rank);
  if (env.local_world_size < 1 || env.local_world_size > env.world_size) {
    throw InputError("environment: LOCAL_WORLD_SIZE=" + std::to_string(env.local_world_size) + " is outside [1, WORLD_SIZE=" +
                     std::to_string(env.world_size) + "]");
  }
  if (env.local_rank < 0 || env.local_rank >= env.local_world_size) {
    throw InputError("environment: LOCAL_RANK=" + std::to_string(env.local_rank) + " is outside [0, LOCAL_WORLD_SIZE=" +
                     std::to_string(env.local_world_size) + ")");
  }
  env.restart_count = env_int(getenv, "TORCHELASTIC_RESTART_COUNT").value_or(0);
  if (env.restart_count < 0) throw InputError("environment: TORCHELASTIC_RESTART_COUNT must be >= 0");
  const char* agent_store = getenv("TORCHELASTIC_USE_AGENT_STORE");
  env.use_agent_store = agent_store && (std::string(agent_store) == "True" || std::string(agent_store) == "true" ||
                                        std::string(agent_store) == "1");
  // Required when there are other ranks to meet; at WORLD_SIZE=1 taken when given (a forced group of one
  // under torchrun joins the agent's store), and the store is hosted here when not.
  const char* addr = getenv("MASTER_ADDR");
  const auto port = env_int(getenv, "MASTER_PORT");
  if (env.world_size > 1) {
    if (!addr || !*addr) throw InputError("environment: WORLD_SIZE > 1 but MASTER_ADDR is not set");
    if (!port) throw InputError("environment: WORLD_SIZE > 1 but MASTER_PORT is not set");
  }
  if (port && (*port < 1 || *port > 65535)) {
    throw InputError("environment: MASTER_PORT=" + std::to_string(*port) + " is not a port");
  }
  if (addr && *addr && port) {
    env.master_addr = addr;
    env.master_port = *port;
  } else {
    env.use_agent_store = false;  // nothing to join
  }
  return env;
}

std::string resolve_backend(const DistOptions& options, const at::Device& device) {
  if (options.backend == DistBackend::kGloo) return "gloo";
  if (options.backend == DistBackend::kNccl && !device.is_cuda()) {
    throw InputError("dist.backend: nccl needs CUDA devices, but this run trains on " + device.str() +
                     " (use dist.backend: gloo or auto on CPU)");
  }
  if (options.backend == DistBackend::kNccl || (options.backend == DistBackend::kAuto && device.is_cuda())) {
    const kernels::CudaPluginState& cuda = kernels::load_cuda_plugin();
    if (!cuda.plugin) throw InputError("dist.backend: nccl is not available: the CUDA plugin is " + cuda.status);
    return "nccl";
  }
  return "gloo";
}

std::unique_ptr<Collectives> Collectives::connect(const DistEnv& env, const std::string& backend,
                                                  std::chrono::milliseconds timeout, bool force_group) {
  auto out = std::make_unique<Collectives>();
  out->rank_ = env.rank;
  out->world_size_ = env.world_size;
  out->timeout_ = timeout;
  if (backend == "none" || (!env.distributed() && !force_group)) return out;

  // The store: a client of the launcher's (torchrun's agent, sft launch), else hosted by rank 0. A
  // forced group of one without a launcher hosts its own on loopback, on a free port (port 0).
  const std::string master_addr = env.master_addr.empty() ? "127.0.0.1" : env.master_addr;
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(env.master_port);
  store_options.isServer = !env.use_agent_store && env.rank == 0;
  if (store_options.isServer) store_options.numWorkers = static_cast<size_t>(env.world_size);
  store_options.waitWorkers = false;
  store_options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    tcp = c10::make_intrusive<c10d::TCPStore>(master_addr, store_options);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(env.rank) + ": cannot reach the c10d store at " + master_addr +
                             ":" + std::to_string(env.master_port) + " within dist.timeout_s: " + e.what());
  }
  auto attempt = c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(env.restart_count), tcp);
  out->store_ = c10::make_intrusive<c10d::PrefixStore>("sft", attempt);
  auto group_store = c10::make_intrusive<c10d::PrefixStore>("sft-pg", attempt);

  if (backend == "gloo") {
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (is_loopback(master_addr)) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    out->backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(group_store, static_cast<int>(env.rank),
                                                                static_cast<int>(env.world_size), options);
  } else {
    const kernels::CudaPlugin& cuda = kernels::cuda_plugin("dist.backend: nccl");
    cuda.set_device(static_cast<int>(env.local_rank));
    out->backend_ = cuda.make_nccl_backend(group_store, static_cast<int>(env.rank), static_cast<int>(env.world_size),
                                           timeout);
    out->device_ = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  out->backend_name_ = backend;
  return out;
}

Collectives::~Collectives() = default;

c10::intrusive_ptr<c10d::Work> Collectives::allreduce_sum_async(at::Tensor& tensor) {
  if (!distributed()) return {};
  std::vector<at::Tensor> tensors{tensor};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  options.timeout = timeout_;
  return backend_->allreduce(tensors, options);
}

void Collectives::allreduce_sum(at::Tensor& tensor) {
  if (auto work = allreduce_sum_async(tensor)) work->wait(timeout_);
}

void Collectives::barrier() {
  if (!distributed()) return;
  at::Tensor token = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(device_));
  allreduce_sum(token);
  if (device_.is_cuda()) token.cpu();  // SYNC: the barrier must hold for the host, not only the stream
}

std::vector<std::string> Collectives::exchange(const std::string& key, const std::string& value) {
  if (!distributed()) return {value};
  store_->set(key + "/" + std::to_string(rank_), to_bytes(value));
  std::vector<std::string> values;
  for (int64_t r = 0; r < world_size_; ++r) {
    const std::string name = key + "/" + std::to_string(r);
    try {
      store_->wait({name}, timeout_);
      values.push_back(from_bytes(store_->get(name)));
    } catch (const std::exception& e) {
      throw std::runtime_error("rank " + std::to_string(rank_) + ": rank " + std::to_string(r) + " did not publish '" +
                               key + "' within dist.timeout_s (did it fail?): " + e.what());
    }
  }
  return values;
}

std::string Collectives::broadcast_from_main(const std::string& key, const std::string& value) {
  if (!distributed()) return value;
  if (is_main()) {
    store_->set(key, to_bytes(value));
    return value;
  }
  try {
    store_->wait({key}, timeout_);
    return from_bytes(store_->get(key));
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(rank_) + ": rank 0 did not publish '" + key +
                             "' within dist.timeout_s (did it fail?): " + e.what());
  }
}

}  // namespace sft
