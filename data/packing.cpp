// data/packing.cpp: SplitMix64, Fisher-Yates, best-fit-decreasing packing, epoch plans and the
// sampler state's JSON form.
#include "data/packing.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <stdexcept>

#include "common/errors.h"

namespace sft::data {

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::below(uint64_t n) {
  // Reject the top partial block so every residue is equally likely.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = next();
  } while (x >= limit);
  return x % n;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  SplitMix64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[rng.below(static_cast<uint64_t>(i) + 1)]);
  return p;
}

std::vector<std::vector<int64_t>> pack_rows(const std::vector<int64_t>& lengths, const std::vector<int64_t>& order,
                                            int64_t capacity) {
  std::vector<int64_t> items = order;
  std::stable_sort(items.begin(), items.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<int64_t>> rows;
  std::multimap<int64_t, size_t> free_space;  // remaining capacity -> row; best fit = smallest that fits
  for (int64_t item : items) {
    const int64_t len = lengths[item];
    if (len > capacity || len <= 0) {
      throw std::invalid_argument("pack_rows: example of length " + std::to_string(len) +
                                  " does not fit a row of " + std::to_string(capacity));
    }
    auto it = free_space.lower_bound(len);
    size_t row;
    int64_t remaining;
    if (it == free_space.end()) {
      row = rows.size();
      rows.emplace_back();
      remaining = capacity;
    } else {
      row = it->second;
      remaining = it->first;
      free_space.erase(it);
    }
    rows[row].push_back(item);
    if (remaining - len > 0) free_space.emplace(remaining - len, row);
  }
  return rows;
}

double packing_efficiency(const std::vector<int64_t>& lengths, int64_t capacity) {
  if (lengths.empty()) return 0.0;
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  auto rows = pack_rows(lengths, order, capacity);
  double tokens = std::accumulate(lengths.begin(), lengths.end(), 0.0);
  return tokens / (static_cast<double>(rows.size()) * static_cast<double>(capacity));
}

nlohmann::json SamplerState::to_json() const {
  return nlohmann::json{{"seed", seed}, {"epoch", epoch}, {"position", position}};
}

SamplerState SamplerState::from_json(const nlohmann::json& j, const std::string& what) {
  auto field = [&](const char* key) -> const nlohmann::json& {
    if (!j.is_object() || !j.contains(key)) throw InputError(what + ": missing key \"" + key + "\"");
    const nlohmann::json& v = j.at(key);
    if (!v.is_number_integer()) throw InputError(what + ": key \"" + key + "\" must be an integer");
    return v;
  };
  SamplerState s;
  s.seed = field("seed").get<uint64_t>();
  s.epoch = field("epoch").get<int64_t>();
  s.position = field("position").get<int64_t>();
  if (s.epoch < 0 || s.position < 0) throw InputError(what + ": epoch and position must be >= 0");
  return s;
}

MicroBatchPlan plan_epoch(const std::vector<int64_t>& lengths, const PlanOptions& options, int64_t epoch) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size || options.micro_batch_size < 1) {
    throw std::invalid_argument("plan_epoch: bad rank/world_size/micro_batch_size");
  }
  const int64_t n = static_cast<int64_t>(lengths.size());
  // Independent streams per epoch (and for the row shuffle), derived from the run seed.
  SplitMix64 streams(options.seed ^ (0xD1B54A32D192ED03ULL * static_cast<uint64_t>(epoch + 1)));
  const uint64_t example_seed = streams.next();
  const uint64_t row_seed = streams.next();
  std::vector<int64_t> order = permutation(n, example_seed);

  std::vector<std::vector<int64_t>> rows;
  if (options.packing) {
    // Packing sorts by length, so the packed rows are shuffled again to keep batch order random.
    auto packed = pack_rows(lengths, order, options.max_seq_len);
    for (int64_t r : permutation(static_cast<int64_t>(packed.size()), row_seed)) rows.push_back(std::move(packed[r]));
  } else {
    rows.reserve(order.size());
    for (int64_t i : order) rows.push_back({i});
  }

  const int64_t total_rows = static_cast<int64_t>(rows.size());
  const int64_t rows_per_rank = (total_rows + options.world_size - 1) / options.world_size;
  const int64_t num_micro = (rows_per_rank + options.micro_batch_size - 1) / options.micro_batch_size;
  MicroBatchPlan plan(static_cast<size_t>(num_micro));
  int64_t k = 0;  // k-th row of this rank
  for (int64_t r = options.rank; r < total_rows; r += options.world_size, ++k) {
    plan[k / options.micro_batch_size].push_back(std::move(rows[r]));
  }
  return plan;
}

}  // namespace sft::data
