// trainer/grad_sync.h: data-parallel gradient sync by hook-driven buckets (DDP's design, our code).
//
// Trainable parameters are grouped, in reverse registration order (the order backward produces their
// gradients), into buckets of about dist.bucket_mb, one dtype and device per bucket. set_up_grad_sync()
// (before the loop) puts a post-accumulate-grad hook on every parameter. While the sync is armed
// (only during the LAST micro-batch's backward of a step: earlier micro-batches only accumulate, as
// DDP's no_sync), the hook copies the accumulated .grad into its bucket's flat buffer, and the bucket's
// asynchronous SUM allreduce starts as soon as its last gradient is in, so communication overlaps the
// rest of the backward. wait() (one visible call in train_step, before clipping) launches any bucket
// whose hooks never fired (a rank whose last micro-batch had no targets, a parameter unused this
// step: its .grad counts as zeros), waits for every bucket, and copies the sums back into .grad.
//
// Each rank backprops micro_loss / global_target_count, so the SUM is exactly the gradient of the
// step's global loss, the same as one process running every micro-batch. No averaging by world size.
//
// Why not c10d::Reducer: its constructor and bucket assignment are internal API (they change between
// torch releases and expect Python-side DDP bookkeeping); ours rests on two stable calls, the
// post-accumulate-grad hook and Backend::allreduce, and is ~150 lines we can read and test. The bucket
// layout is also where a later ZeRO stage would reduce-scatter instead (each rank keeping its slice).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "trainer/optimizer.h"
#include "trainer/process_group.h"

namespace sft {

class GradientBuckets {
 public:
  // `params` must outlive this object. Does nothing in a world of one (no hooks, no buffers).
  // overlap false: the hooks never launch; wait() starts every bucket after the backward (the baseline
  // that scripts/bench_dist.sh compares against, --grad-sync-after-backward).
  GradientBuckets(const std::vector<NamedParameter>& params, Collectives& group, double bucket_mb, bool overlap = true);
  ~GradientBuckets();
  GradientBuckets(const GradientBuckets&) = delete;
  GradientBuckets& operator=(const GradientBuckets&) = delete;

  // The next backward is the step's last: its hooks start the allreduces.
  void arm();
  // Starts what the hooks did not, waits for every bucket, writes the summed gradients into .grad.
  // Returns the seconds spent blocked in the wait (exposed communication).
  double wait();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Called by the hooks (public for them; not part of the trainer's interface).
  void on_grad_ready(int64_t param_index);

 private:
  struct Slot {
    int64_t bucket = 0, offset = 0, numel = 0;
  };
  struct Bucket {
    at::Tensor flat;                 // [sum of numels], the parameters' dtype and device
    std::vector<int64_t> params;     // indices into params_
    int64_t ready = 0;               // hooks fired while armed
    c10::intrusive_ptr<c10d::Work> work;
  };
  void launch(Bucket& bucket);
  void copy_in(int64_t param_index);

  const std::vector<NamedParameter>& params_;
  Collectives& group_;
  std::vector<Slot> slots_;      // per parameter
  std::vector<Bucket> buckets_;
  std::vector<bool> copied_;     // per parameter: its grad is in the bucket this step
  bool armed_ = false;
  bool overlap_ = true;
};

// The named set-up step before the loop: buckets + hooks (nothing in a world of one).
std::unique_ptr<GradientBuckets> set_up_grad_sync(const std::vector<NamedParameter>& params, Collectives& group,
                                                  double bucket_mb, bool overlap = true);

}  // namespace sft
