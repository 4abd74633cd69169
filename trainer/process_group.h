// trainer/process_group.h: the one place that knows the ranks. Reads torchrun's environment contract
// (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT,
// TORCHELASTIC_USE_AGENT_STORE; `sft launch` sets the same), joins the c10d TCPStore, and builds the
// c10d process group: ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for CUDA (device LOCAL_RANK).
//
// Store layout: under torchrun the agent hosts a TCPStore on MASTER_ADDR:MASTER_PORT and every rank
// joins it as a client (TORCHELASTIC_USE_AGENT_STORE=True); without an agent, rank 0 hosts it. Every key
// lives under "/worker/attempt_<TORCHELASTIC_RESTART_COUNT>/" (as torch.distributed does), so an elastic
// restart never reads the keys of the attempt before it. Every wait (store reads, collectives) is
// bounded by dist.timeout_s; Gloo's 30-minute default is never used.
//
// With no distributed environment (or WORLD_SIZE=1) the run is single-process and Collectives is a
// world of one whose operations do nothing, so `sft train` behaves exactly as before; unless
// dist.force_process_group asks for a real process group of one (rank 0 then hosts its own store on
// MASTER_ADDR:MASTER_PORT, or on 127.0.0.1 and a free port without them), which is how one GPU runs NCCL.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace sft {

struct DistEnv {
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;
  std::string master_addr;
  int64_t master_port = 0;
  int64_t restart_count = 0;    // TORCHELASTIC_RESTART_COUNT: which attempt of an elastic job this is
  bool use_agent_store = false;  // TORCHELASTIC_USE_AGENT_STORE=True: the launcher hosts the store
  bool distributed() const { return world_size > 1; }
};

// Parses the environment through `getenv` (std::getenv in production). Throws sft::InputError naming
// the variable for a non-integer, a RANK outside [0, WORLD_SIZE), a LOCAL_RANK outside
// [0, LOCAL_WORLD_SIZE), a missing MASTER_ADDR/MASTER_PORT when WORLD_SIZE > 1, or RANK without
// WORLD_SIZE (and the reverse).
DistEnv read_dist_env(const std::function<const char*(const char*)>& getenv);

// The backend dist.backend resolves to for a device: "gloo" or "nccl". Throws sft::InputError for nccl
// on a CPU device or in a build without CUDA.
std::string resolve_backend(const DistOptions& options, const at::Device& device);

// The ranks of this job and the collectives the trainer uses. Thread-compatible, never concurrent: the
// training thread calls it, and during backward the gradient hooks do (on the training thread for CPU,
// on autograd's device thread for CUDA, while the training thread is blocked in backward()).
class Collectives {
 public:
  // A world of one: every operation is a no-op (single-process runs).
  Collectives() = default;
  // Joins the store and creates the process group for `backend` ("gloo"|"nccl"); "none" (or a world
  // of one without `force_group`) gives the world of one. Blocks until every rank has joined, or
  // throws after dist.timeout_s.
  static std::unique_ptr<Collectives> connect(const DistEnv& env, const std::string& backend,
                                              std::chrono::milliseconds timeout, bool force_group = false);
  ~Collectives();

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  // A process group exists and collectives run: world size > 1, or a forced group of one.
  bool distributed() const { return backend_.defined(); }
  bool is_main() const { return rank_ == 0; }
  const std::string& backend_name() const { return backend_name_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  const at::Device& device() const { return device_; }

  // In-place SUM allreduce started asynchronously; the caller waits on the Work (null in a world of one).
  c10::intrusive_ptr<c10d::Work> allreduce_sum_async(at::Tensor& tensor);
  // In-place SUM allreduce, waited (a sync point on CUDA).
  void allreduce_sum(at::Tensor& tensor);
  void barrier();
  // Every rank publishes `value` under `key`; returns all ranks' values in rank order. Through the
  // store, so it works before anything else agrees (start-up checks) and for strings of any size.
  std::vector<std::string> exchange(const std::string& key, const std::string& value);
  // Rank 0 publishes `value` under `key`; every rank returns it.
  std::string broadcast_from_main(const std::string& key, const std::string& value);

 private:
  int64_t rank_ = 0, world_size_ = 1;
  std::string backend_name_ = "none";
  std::chrono::milliseconds timeout_{0};
  at::Device device_{at::kCPU};                // where the backend's tensors live (CPU for Gloo)
  c10::intrusive_ptr<c10d::Store> store_;      // PrefixStore "sft/" over the attempt's store
  c10::intrusive_ptr<c10d::Backend> backend_;  // ProcessGroupGloo or ProcessGroupNCCL
};

}  // namespace sft
