// data/loader.h: turns tokenized examples into data::Batch micro-batches: the resumable, rank-sharded
// training loader (BatchLoader) and the fixed-order evaluation batches (make_eval_batches).
// The only data/ header besides batch.h that needs ATen.
#pragma once
#include <cstdint>
#include <vector>

#include "data/batch.h"
#include "data/dataset.h"
#include "data/packing.h"

namespace sft::data {

struct LoaderOptions {
  int64_t micro_batch_size = 4;  // rows per micro-batch (train.micro_batch_size)
  int64_t max_seq_len = 1024;    // packed row capacity (data.max_seq_len)
  bool packing = true;           // false: one example per row, rows padded to the longest in the batch
  uint64_t seed = 42;            // train.seed
  int64_t rank = 0;
  int64_t world_size = 1;
  int32_t pad_id = 0;            // fills padding; padding never carries targets, so any valid id works
  bool pin_memory = false;       // pin host tensors (only meaningful with CUDA)
};

// Builds one Batch from rows of examples. pad_rows: every row is padded to the longest row with a
// separate padding segment (positions restart at 0, no targets). Packed rows are not padded: the
// varlen layout needs no padding. An empty `rows` gives a one-token padding batch with zero targets
// (a rank that ran out of data still steps with the others).
Batch build_batch(const std::vector<std::vector<const TokenizedExample*>>& rows, bool pad_rows, int32_t pad_id,
                  bool pin_memory = false);

// Token and target counts of a planned micro-batch, from the plan alone (no tensors built).
struct MicroBatchCounts {
  int64_t real_tokens = 0;
  int64_t targets = 0;
};

// Multi-process training plans with rank 0 / world_size 1, so the sequence of micro-batches is a function
// of (seed, global position) only; the trainer hands global micro-batch j of a step to one rank
// (trainer/train.cpp) and every rank walks the whole sequence: next() for its own, skip() for the others'.
class BatchLoader {
 public:
  // Throws sft::InputError when `examples` is empty.
  BatchLoader(std::vector<TokenizedExample> examples, const LoaderOptions& options);

  int64_t micro_batches_per_epoch() const { return static_cast<int64_t>(plan_.size()); }
  // The next micro-batch of this rank; after the last one of an epoch, reshuffles into the next epoch.
  Batch next();
  // Advances past the next micro-batch without building it; returns its counts (the same the Batch of
  // next() would carry), so every rank knows the step's global token and target counts without talking.
  MicroBatchCounts skip();
  // State after the batches returned so far; restore(state()) reproduces the remaining sequence.
  SamplerState state() const { return {options_.seed, epoch_, position_}; }
  // Adopts the state's seed, epoch and position (position may equal micro_batches_per_epoch: the epoch
  // boundary). Throws sft::InputError if the position is past the end of the epoch.
  void restore(const SamplerState& state);
  int64_t epoch() const { return epoch_; }
  const std::vector<TokenizedExample>& examples() const { return examples_; }

 private:
  void plan(int64_t epoch);

  std::vector<TokenizedExample> examples_;
  std::vector<int64_t> lengths_;
  std::vector<int64_t> targets_;  // per example: supervised next tokens
  LoaderOptions options_;
  MicroBatchPlan plan_;  // this rank's micro-batches in epoch_
  int64_t epoch_ = 0;
  int64_t position_ = 0;
};

// An evaluation micro-batch: one document per example, in file order. Document k of the batch is
// examples[example_index[k]], and its targets are target_ids[target_offsets[k] : target_offsets[k+1]]
// (targets are laid out document by document), so per-example losses need no device sync.
struct EvalBatch {
  Batch batch;
  std::vector<int64_t> example_index;   // [num_examples]
  std::vector<int64_t> target_offsets;  // [num_examples + 1]
};

// batch_size examples per batch (eval.batch_size), no shuffling. pad_rows as in build_batch.
std::vector<EvalBatch> make_eval_batches(const std::vector<TokenizedExample>& examples, int64_t batch_size,
                                         int32_t pad_id, bool pad_rows = true);

}  // namespace sft::data
