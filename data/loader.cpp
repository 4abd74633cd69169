// data/loader.cpp: host-side assembly of flattened varlen batches and the resumable loader.
#include "data/loader.h"

#include <algorithm>
#include <stdexcept>

#include "common/errors.h"

namespace sft::data {

static_assert(kIgnoreLabel == kIgnoreIndex, "dataset.h and batch.h disagree on the ignore label");

namespace {

at::Tensor to_tensor_i64(const std::vector<int64_t>& v, bool pin) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return pin ? t.pin_memory() : t;
}

at::Tensor to_tensor_i32(const std::vector<int32_t>& v, bool pin) {
  at::Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::kInt);
  std::copy(v.begin(), v.end(), t.data_ptr<int32_t>());
  return pin ? t.pin_memory() : t;
}

}  // namespace

Batch build_batch(const std::vector<std::vector<const TokenizedExample*>>& rows, bool pad_rows, int32_t pad_id,
                  bool pin_memory) {
  std::vector<int64_t> ids, positions, target_positions, target_ids;
  std::vector<int32_t> cu_seqlens{0};
  int64_t max_seqlen = 0, real = 0, examples = 0;

  auto add_segment = [&](int64_t len) {
    cu_seqlens.push_back(static_cast<int32_t>(ids.size()));
    max_seqlen = std::max(max_seqlen, len);
  };

  size_t longest = 0;
  for (const auto& row : rows) {
    size_t len = 0;
    for (const TokenizedExample* e : row) len += e->input_ids.size();
    longest = std::max(longest, len);
  }
  for (const auto& row : rows) {
    size_t row_len = 0;
    for (const TokenizedExample* e : row) {
      const int64_t offset = static_cast<int64_t>(ids.size());
      const size_t n = e->input_ids.size();
      for (size_t i = 0; i < n; ++i) {
        ids.push_back(e->input_ids[i]);
        positions.push_back(static_cast<int64_t>(i));
        // Token i predicts token i+1 of the same document; the last token predicts nothing.
        if (i + 1 < n && e->labels[i + 1] != kIgnoreIndex) {
          target_positions.push_back(offset + static_cast<int64_t>(i));
          target_ids.push_back(e->labels[i + 1]);
        }
      }
      add_segment(static_cast<int64_t>(n));
      row_len += n;
      real += static_cast<int64_t>(n);
      ++examples;
    }
    if (pad_rows && row_len < longest) {
      for (size_t i = 0; i < longest - row_len; ++i) {
        ids.push_back(pad_id);
        positions.push_back(static_cast<int64_t>(i));
      }
      add_segment(static_cast<int64_t>(longest - row_len));
    }
  }
  if (ids.empty()) {  // a rank without data this step: one padding token, nothing to predict
    ids.push_back(pad_id);
    positions.push_back(0);
    add_segment(1);
  }

  Batch b;
  b.input_ids = to_tensor_i64(ids, pin_memory);
  b.position_ids = to_tensor_i64(positions, pin_memory);
  b.cu_seqlens_host = to_tensor_i32(cu_seqlens, false);
  b.cu_seqlens = pin_memory ? b.cu_seqlens_host.pin_memory() : b.cu_seqlens_host;
  b.max_seqlen = max_seqlen;
  b.target_positions = to_tensor_i64(target_positions, pin_memory);
  b.target_ids = to_tensor_i64(target_ids, pin_memory);
  b.num_tokens = static_cast<int64_t>(ids.size());
  b.num_real_tokens = real;
  b.num_targets = static_cast<int64_t>(target_ids.size());
  b.num_rows = static_cast<int64_t>(rows.size());
  b.num_examples = examples;
  return b;
}

BatchLoader::BatchLoader(std::vector<TokenizedExample> examples, const LoaderOptions& options)
    : examples_(std::move(examples)), options_(options) {
  if (examples_.empty()) throw InputError("data.train: no training examples left after filtering");
  lengths_.reserve(examples_.size());
  for (const auto& e : examples_) {
    if (options_.packing && static_cast<int64_t>(e.input_ids.size()) > options_.max_seq_len) {
      throw std::invalid_argument("BatchLoader: " + e.source + " is longer than max_seq_len");
    }
    lengths_.push_back(static_cast<int64_t>(e.input_ids.size()));
    targets_.push_back(count_targets(e.labels));
  }
  plan(0);
}

void BatchLoader::plan(int64_t epoch) {
  PlanOptions p{options_.micro_batch_size, options_.max_seq_len, options_.packing,
                options_.seed, options_.rank, options_.world_size};
  plan_ = plan_epoch(lengths_, p, epoch);
  epoch_ = epoch;
  position_ = 0;
}

Batch BatchLoader::next() {
  if (position_ >= micro_batches_per_epoch()) plan(epoch_ + 1);
  const auto& planned = plan_[static_cast<size_t>(position_++)];
  std::vector<std::vector<const TokenizedExample*>> rows;
  rows.reserve(planned.size());
  for (const auto& row : planned) {
    rows.emplace_back();
    for (int64_t i : row) rows.back().push_back(&examples_[static_cast<size_t>(i)]);
  }
  return build_batch(rows, /*pad_rows=*/!options_.packing, options_.pad_id, options_.pin_memory);
}

MicroBatchCounts BatchLoader::skip() {
  if (position_ >= micro_batches_per_epoch()) plan(epoch_ + 1);
  MicroBatchCounts counts;
  for (const auto& row : plan_[static_cast<size_t>(position_++)]) {
    for (int64_t i : row) {
      counts.real_tokens += lengths_[static_cast<size_t>(i)];
      counts.targets += targets_[static_cast<size_t>(i)];
    }
  }
  return counts;
}

void BatchLoader::restore(const SamplerState& state) {
  options_.seed = state.seed;
  plan(state.epoch);
  if (state.position > micro_batches_per_epoch()) {
    throw InputError("sampler state: position " + std::to_string(state.position) + " is past the " +
                     std::to_string(micro_batches_per_epoch()) + " micro-batches of an epoch (was the data changed?)");
  }
  position_ = state.position;
}

std::vector<EvalBatch> make_eval_batches(const std::vector<TokenizedExample>& examples, int64_t batch_size,
                                         int32_t pad_id, bool pad_rows) {
  if (batch_size < 1) throw InputError("eval.batch_size must be >= 1");
  std::vector<EvalBatch> out;
  for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(batch_size)) {
    const size_t end = std::min(examples.size(), start + static_cast<size_t>(batch_size));
    std::vector<std::vector<const TokenizedExample*>> rows;
    EvalBatch eb;
    eb.target_offsets.push_back(0);
    for (size_t i = start; i < end; ++i) {
      rows.push_back({&examples[i]});
      eb.example_index.push_back(static_cast<int64_t>(i));
      eb.target_offsets.push_back(eb.target_offsets.back() + count_targets(examples[i].labels));
    }
    eb.batch = build_batch(rows, pad_rows, pad_id);
    out.push_back(std::move(eb));
  }
  return out;
}

}  // namespace sft::data
