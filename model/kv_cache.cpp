// model/kv_cache.cpp: KvCache: the buffers, the step plan (positions and packing of the new tokens)
// and the writes of each layer's new keys/values.
#include "model/kv_cache.h"

#include <algorithm>
#include <string>

namespace sft::model {

KvCache::KvCache(const ModelConfig& config, const std::vector<int64_t>& capacities, const at::TensorOptions& options)
    : capacities_(capacities), lengths_(capacities.size(), 0) {
  TORCH_CHECK(!capacities.empty(), "KvCache: no sequences");
  int64_t rows = 0;
  for (int64_t capacity : capacities) {
    TORCH_CHECK(capacity > 0, "KvCache: capacity must be positive, got ", capacity);
    starts_.push_back(rows);
    rows += capacity;
  }
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    keys_.push_back(at::empty({rows, config.num_key_value_heads, config.head_dim}, options));
    values_.push_back(at::empty({rows, config.num_key_value_heads, config.head_dim}, options));
  }
}

KvCache::Step KvCache::plan(const std::vector<int64_t>& slots, const std::vector<int64_t>& counts) {
  TORCH_CHECK(!slots.empty() && slots.size() == counts.size(), "KvCache::plan: ", slots.size(), " sequences for ",
              counts.size(), " token counts");
  const int64_t docs = static_cast<int64_t>(slots.size());
  std::vector<int32_t> cu{0};
  std::vector<int64_t> positions, starts, lengths;
  std::vector<bool> seen(capacities_.size(), false);
  int64_t max_count = 0;
  for (int64_t d = 0; d < docs; ++d) {
    const int64_t s = slots[d], n = counts[d];
    TORCH_CHECK(s >= 0 && s < sequences() && !seen[s], "KvCache::plan: sequence ", s,
                " is out of range or planned twice");
    seen[s] = true;
    TORCH_CHECK(n >= 1, "KvCache::plan: sequence ", s, " gets no tokens");
    TORCH_CHECK(lengths_[s] + n <= capacities_[s], "KvCache: sequence ", s, " exceeds its capacity of ",
                capacities_[s], " positions (", lengths_[s] + n, ")");
    for (int64_t p = lengths_[s]; p < lengths_[s] + n; ++p) positions.push_back(p);
    cu.push_back(cu.back() + static_cast<int32_t>(n));
    starts.push_back(starts_[s]);
    lengths.push_back(lengths_[s] + n);
    max_count = std::max(max_count, n);
  }
  const at::Device device = keys_.empty() ? at::Device(at::kCPU) : keys_[0].device();
  slots_ = slots;
  counts_ = counts;
  planned_tokens_ = cu.back();
  step_starts_ = at::tensor(starts, at::kLong);
  step_lengths_ = at::tensor(lengths, at::kLong);
  planned_ = true;
  at::Tensor cu_host = at::tensor(cu, at::kInt);
  return {at::tensor(positions, at::kLong).to(device), {cu_host.to(device), cu_host, max_count}};
}

kernels::KvCacheView KvCache::append(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(planned_, "KvCache::append: no step planned");
  TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(keys_.size()), "KvCache::append: layer ", layer,
              " of ", keys_.size());
  TORCH_CHECK(k.size(0) == planned_tokens_ && v.size(0) == planned_tokens_, "KvCache::append: ", k.size(0),
              " new rows for a step of ", planned_tokens_, " tokens");
  int64_t row = 0;
  for (size_t d = 0; d < slots_.size(); ++d) {  // each sequence's new rows follow its cached ones
    const int64_t s = slots_[d], n = counts_[d];
    keys_[layer].narrow(0, starts_[s] + lengths_[s], n).copy_(k.narrow(0, row, n));
    values_[layer].narrow(0, starts_[s] + lengths_[s], n).copy_(v.narrow(0, row, n));
    row += n;
  }
  return {keys_[layer], values_[layer], step_starts_, step_lengths_};
}

void KvCache::commit() {
  TORCH_CHECK(planned_, "KvCache::commit: no step planned");
  for (size_t d = 0; d < slots_.size(); ++d) lengths_[slots_[d]] += counts_[d];
  planned_ = false;
}

void KvCache::reset() {
  std::fill(lengths_.begin(), lengths_.end(), 0);
  planned_ = false;
}

}  // namespace sft::model
