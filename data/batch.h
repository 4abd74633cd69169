// data/batch.h: one micro-batch as the model consumes it, in the packed variable-length layout.
// Rows (packed or padded) are flattened into one token stream of T tokens; cu_seqlens marks every
// document (and every padding run) so attention never crosses a boundary, and positions restart at 0.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace sft::data {

constexpr int32_t kIgnoreIndex = -100;  // label value for unsupervised tokens

struct Batch {
  at::Tensor input_ids;         // int64 [T]
  at::Tensor position_ids;      // int64 [T], restarts at 0 per document
  at::Tensor cu_seqlens;        // int32 [n_segments + 1], offsets into T (on the compute device)
  at::Tensor cu_seqlens_host;   // the same offsets, always on the CPU: loops over segments never sync
  int64_t max_seqlen = 0;       // longest segment
  at::Tensor target_positions;  // int64 [N]: token index p whose hidden state predicts target_ids (token p+1)
  at::Tensor target_ids;        // int64 [N]: the supervised next tokens (never crosses a document boundary)
  int64_t num_tokens = 0;       // T, padding included
  int64_t num_real_tokens = 0;  // T without padding
  int64_t num_targets = 0;      // N (known on the host: no device sync needed to normalise the loss)
  int64_t num_rows = 0;         // packed or padded rows in this micro-batch
  int64_t num_examples = 0;     // documents in this micro-batch

  // Moves every tensor to `device` (non_blocking from pinned memory where possible).
  Batch to(const at::Device& device) const {
    Batch moved = *this;
    moved.input_ids = input_ids.to(device, /*non_blocking=*/true);
    moved.position_ids = position_ids.to(device, true);
    moved.cu_seqlens = cu_seqlens.to(device, true);
    moved.target_positions = target_positions.to(device, true);
    moved.target_ids = target_ids.to(device, true);
    return moved;
  }
};

}  // namespace sft::data
