// model/kv_cache.h: the key/value cache of decoding. Per layer, one buffer holds the keys and values of
// every earlier position of S sequences, so a decoding step reads them instead of recomputing them.
// A step is planned first (which sequences the next forward extends, by how many tokens); the forward
// (CausalLM::forward with ForwardOptions::cache) then has each layer's attention append its new keys
// and values and attend over the cache (kernels::kv_cache_attention), and the step is committed at the
// end of the forward. The model's own DecoderLayer/Attention run every step: there is no second decoder.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "kernels/ops.h"
#include "model/config.h"

namespace sft::model {

class KvCache {
 public:
  // One sequence per entry of `capacities` (its most positions, prompt + new tokens); keys and values in
  // `options` (the model's dtype and device), allocated once: layers x [sum(capacities), Hkv, D].
  KvCache(const ModelConfig& config, const std::vector<int64_t>& capacities, const at::TensorOptions& options);

  // What the planned forward needs besides its token ids.
  struct Step {
    at::Tensor positions;           // int64 [T] on the cache's device: each sequence continues at its length
    kernels::PackedSequences seqs;  // the new tokens as packed documents, one per planned sequence
  };
  // Plans the next forward: its packed document d is sequence slots[d] (distinct), extended by
  // counts[d] >= 1 tokens. Throws when a sequence would exceed its capacity.
  Step plan(const std::vector<int64_t>& slots, const std::vector<int64_t>& counts);

  // Called by layer `layer`'s attention inside the planned forward: writes the step's new keys/values
  // k, v [T, Hkv, D] (packed as planned) into the cache and returns what the attention reads.
  kernels::KvCacheView append(int64_t layer, const at::Tensor& k, const at::Tensor& v);

  // Called once at the end of the planned forward: its tokens become part of their sequences.
  void commit();

  int64_t planned_tokens() const { return planned_ ? planned_tokens_ : -1; }  // -1: no step planned
  int64_t sequences() const { return static_cast<int64_t>(capacities_.size()); }
  int64_t length(int64_t sequence) const { return lengths_.at(sequence); }
  int64_t capacity(int64_t sequence) const { return capacities_.at(sequence); }
  void reset();  // every sequence empty again (the buffers are kept)

 private:
  std::vector<at::Tensor> keys_, values_;  // [layers] of [rows, Hkv, D]
  std::vector<int64_t> capacities_, starts_, lengths_;  // per sequence: rows, first row, cached positions
  // The planned step.
  bool planned_ = false;
  int64_t planned_tokens_ = 0;
  std::vector<int64_t> slots_, counts_;
  at::Tensor step_starts_, step_lengths_;  // int64 [n_docs] CPU: the view's starts and lengths after the append
};

// The cache of one layer as its attention sees it: null cache = no cache (training, full recompute).
struct LayerKvCache {
  KvCache* cache = nullptr;
  int64_t layer = 0;
};

}  // namespace sft::model
