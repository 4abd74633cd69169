// data/packing.h: the torch-free half of batching: a deterministic RNG, bin packing of examples into
// rows, the per-epoch plan (shuffle -> rows -> shard by rank -> micro-batches) and the resumable
// sampler state. loader.h turns a planned micro-batch into a data::Batch.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace sft::data {

// SplitMix64: tiny, fast, and identical on every platform (std::shuffle and the std distributions are
// implementation-defined, which would break bit-exact resume across toolchains).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t below(uint64_t n);  // uniform in [0, n) by rejection (no modulo bias); n > 0

 private:
  uint64_t state_;
};

// Fisher-Yates permutation of [0, n).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

// Best-fit-decreasing bin packing: examples (lengths[i] <= capacity) sorted by length, longest first,
// ties broken by their position in `order`; each goes into the fullest row that still fits it.
// Returns rows of example indices. BFD never uses more rows than first-fit-decreasing bounds allow
// (<= 11/9 OPT + 6/9) and runs in O(n log n).
std::vector<std::vector<int64_t>> pack_rows(const std::vector<int64_t>& lengths, const std::vector<int64_t>& order,
                                            int64_t capacity);

// Real tokens / (rows * capacity) for BFD packing of `lengths`: the report's packing efficiency.
double packing_efficiency(const std::vector<int64_t>& lengths, int64_t capacity);

// Where the sampler is: everything needed to reproduce the remaining batches exactly.
struct SamplerState {
  uint64_t seed = 0;
  int64_t epoch = 0;     // 0-based
  int64_t position = 0;  // micro-batches this rank already took in `epoch`

  nlohmann::json to_json() const;
  // Throws sft::InputError naming the missing/mistyped key (`what` names the file it came from).
  static SamplerState from_json(const nlohmann::json& j, const std::string& what = "sampler state");
  bool operator==(const SamplerState& o) const { return seed == o.seed && epoch == o.epoch && position == o.position; }
};

struct PlanOptions {
  int64_t micro_batch_size = 4;  // rows per micro-batch
  int64_t max_seq_len = 1024;    // row capacity when packing
  bool packing = true;
  uint64_t seed = 42;
  int64_t rank = 0;
  int64_t world_size = 1;
};

// One rank's micro-batches for one epoch: micro_batches[m][row] = example indices in that row.
// Every rank gets the same number of micro-batches (so data-parallel steps stay in lockstep); a rank
// that runs out of rows gets empty micro-batches at the end, which the loader turns into zero-target
// batches. Across ranks the rows are disjoint and their union is every example exactly once.
using MicroBatchPlan = std::vector<std::vector<std::vector<int64_t>>>;
MicroBatchPlan plan_epoch(const std::vector<int64_t>& lengths, const PlanOptions& options, int64_t epoch);

}  // namespace sft::data
