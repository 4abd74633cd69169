// trainer/grad_sync.cpp: gradient buckets, their post-accumulate-grad hooks and the wait.
#include "trainer/grad_sync.h"

#include <chrono>

#include "trainer/grad_ready_hook.h"

namespace sft {

GradientBuckets::GradientBuckets(const std::vector<NamedParameter>& params, Collectives& group, double bucket_mb,
                                 bool overlap)
    : params_(params), group_(group), overlap_(overlap) {
  if (!group_.distributed()) return;
  const int64_t capacity = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024));
  slots_.resize(params_.size());
  copied_.assign(params_.size(), false);
  // Reverse registration order: the last layers' gradients are ready first in backward.
  int64_t open = -1, open_bytes = 0;
  for (int64_t i = static_cast<int64_t>(params_.size()) - 1; i >= 0; --i) {
    const at::Tensor& p = params_[static_cast<size_t>(i)].tensor;
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool fits = open >= 0 && open_bytes + bytes <= capacity &&
                      buckets_[static_cast<size_t>(open)].flat.scalar_type() == p.scalar_type() &&
                      buckets_[static_cast<size_t>(open)].flat.device() == p.device();
    if (!fits) {
      buckets_.emplace_back();
      buckets_.back().flat = at::empty({0}, p.options().requires_grad(false));
      open = static_cast<int64_t>(buckets_.size()) - 1;
      open_bytes = 0;
    }
    Bucket& bucket = buckets_[static_cast<size_t>(open)];
    slots_[static_cast<size_t>(i)] = {open, open_bytes / static_cast<int64_t>(p.element_size()), p.numel()};
    bucket.params.push_back(i);
    open_bytes += bytes;
  }
  for (Bucket& bucket : buckets_) {
    int64_t numel = 0;
    for (int64_t i : bucket.params) numel += params_[static_cast<size_t>(i)].tensor.numel();
    bucket.flat = at::zeros({numel}, bucket.flat.options());
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    set_grad_ready_hook(params_[i].tensor, this, static_cast<int64_t>(i));
  }
}

GradientBuckets::~GradientBuckets() {
  if (!group_.distributed()) return;
  for (const NamedParameter& p : params_) remove_grad_ready_hook(p.tensor);
}

void GradientBuckets::arm() { armed_ = group_.distributed() && overlap_; }

void GradientBuckets::copy_in(int64_t index) {
  const Slot& slot = slots_[static_cast<size_t>(index)];
  at::Tensor target = buckets_[static_cast<size_t>(slot.bucket)].flat.narrow(0, slot.offset, slot.numel);
  const at::Tensor& grad = params_[static_cast<size_t>(index)].tensor.grad();
  if (grad.defined()) {
    target.copy_(grad.reshape({-1}));
  } else {
    target.zero_();  // no gradient on this rank this step: contributes zeros to the sum
  }
  copied_[static_cast<size_t>(index)] = true;
}

void GradientBuckets::on_grad_ready(int64_t index) {
  if (!armed_ || copied_[static_cast<size_t>(index)]) return;
  copy_in(index);
  Bucket& bucket = buckets_[static_cast<size_t>(slots_[static_cast<size_t>(index)].bucket)];
  if (++bucket.ready == static_cast<int64_t>(bucket.params.size())) launch(bucket);
}

void GradientBuckets::launch(Bucket& bucket) { bucket.work = group_.allreduce_sum_async(bucket.flat); }

double GradientBuckets::wait() {
  if (!group_.distributed()) return 0.0;
  // Buckets in launch order; a bucket whose hooks did not all fire is completed from .grad now.
  for (Bucket& bucket : buckets_) {
    if (bucket.work) continue;
    for (int64_t i : bucket.params) {
      if (!copied_[static_cast<size_t>(i)]) copy_in(i);
    }
    launch(bucket);
  }
  const auto start = std::chrono::steady_clock::now();
  for (Bucket& bucket : buckets_) bucket.work->wait(group_.timeout());  // SYNC (host waits for the network)
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (Bucket& bucket : buckets_) {
    for (int64_t i : bucket.params) {
      const Slot& slot = slots_[static_cast<size_t>(i)];
      const at::Tensor& param = params_[static_cast<size_t>(i)].tensor;
      at::Tensor summed = bucket.flat.narrow(0, slot.offset, slot.numel).view(param.sizes());
      if (param.grad().defined()) {
        param.mutable_grad().copy_(summed);
      } else {
        param.mutable_grad() = summed.clone();
      }
    }
    bucket.work.reset();
    bucket.ready = 0;
  }
  std::fill(copied_.begin(), copied_.end(), false);
  armed_ = false;
  return waited;
}

std::unique_ptr<GradientBuckets> set_up_grad_sync(const std::vector<NamedParameter>& params, Collectives& group,
                                                  double bucket_mb, bool overlap) {
  return std::make_unique<GradientBuckets>(params, group, bucket_mb, overlap);
}

}  // namespace sft
