// data/tokenized.cpp: reader and split for the pre-tokenized JSONL format.
#include "data/tokenized.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/errors.h"
#include "data/batch.h"

namespace sft::data {
namespace {

std::vector<TokenizedExample> read_file(const std::string& path, int64_t vocab, FileStats& stats) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot open data file");
  std::vector<TokenizedExample> examples;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++stats.lines;
    const std::string where = path + ":" + std::to_string(number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw InputError(where + ": malformed JSON: " + e.what());
    }
    if (!j.is_object() || !j.contains("input_ids") || !j.contains("labels") || !j["input_ids"].is_array() ||
        !j["labels"].is_array()) {
      throw InputError(where + ": expected {\"input_ids\": [...], \"labels\": [...]}");
    }
    TokenizedExample ex;
    ex.source = where;
    for (const auto& v : j["input_ids"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab) {
        throw InputError(where + ": input_ids holds " + v.dump() + ", not a token id in [0, " + std::to_string(vocab) + ")");
      }
      ex.input_ids.push_back(v.get<int32_t>());
    }
    for (const auto& v : j["labels"]) {
      if (!v.is_number_integer() || (v.get<int64_t>() != kIgnoreIndex && (v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab))) {
        throw InputError(where + ": labels holds " + v.dump() + ", not -100 or a token id");
      }
      ex.labels.push_back(v.get<int32_t>());
    }
    if (ex.input_ids.size() != ex.labels.size() || ex.input_ids.empty()) {
      throw InputError(where + ": input_ids and labels must be non-empty and of equal length");
    }
    ++stats.valid;
    examples.push_back(std::move(ex));
  }
  if (stats.lines == 0) throw InputError(path + ": empty data file");
  return examples;
}

void keep_or_drop(std::vector<TokenizedExample>& examples, const DataOptions& o, SplitStats& stats,
                  std::vector<TokenizedExample>& out) {
  for (TokenizedExample& ex : examples) {
    ++stats.examples;
    bool truncated = false;
    const std::string reason = apply_length_policy(ex, o.max_seq_len, o.truncation, &truncated);
    if (!reason.empty()) {
      ++stats.dropped[reason];
      continue;
    }
    int64_t targets = 0;
    for (size_t i = 1; i < ex.labels.size(); ++i) targets += ex.labels[i] != kIgnoreIndex;
    if (targets == 0) {
      ++stats.dropped["no_target"];
      continue;
    }
    ++stats.kept;
    stats.truncated += truncated;
    stats.tokens += static_cast<int64_t>(ex.input_ids.size());
    stats.target_tokens += targets;
    stats.max_length = std::max<int64_t>(stats.max_length, static_cast<int64_t>(ex.input_ids.size()));
    out.push_back(std::move(ex));
  }
}

}  // namespace

PreparedData prepare_tokenized_data(const DataOptions& o, uint64_t seed, int64_t model_vocab_size) {
  PreparedData out;
  DataReport& report = out.report;
  report.chat_template = "none (tokenized)";
  report.max_seq_len = o.max_seq_len;
  report.truncation = enum_name(o.truncation);
  report.packing = o.packing;
  std::vector<TokenizedExample> train, eval;
  for (const std::string& path : o.train) {
    FileStats stats{path, "train", "tokenized", 0, 0, {}};
    auto examples = read_file(path, model_vocab_size, stats);
    train.insert(train.end(), std::make_move_iterator(examples.begin()), std::make_move_iterator(examples.end()));
    report.files.push_back(stats);
  }
  if (o.eval) {
    FileStats stats{*o.eval, "eval", "tokenized", 0, 0, {}};
    eval = read_file(*o.eval, model_vocab_size, stats);
    report.files.push_back(stats);
    report.eval_source = "file";
  } else if (o.eval_ratio > 0) {
    // Seeded Fisher-Yates over example indices with a fully specified engine (mt19937_64).
    const int64_t n = static_cast<int64_t>(train.size());
    if (n < 2) throw InputError("data.eval_ratio: need at least 2 training examples to hold some out");
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    std::mt19937_64 engine(seed ^ 0x746f6b73706c6974ULL);
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[engine() % static_cast<uint64_t>(i + 1)]);
    const int64_t n_eval = std::clamp<int64_t>(std::llround(o.eval_ratio * n), 1, n - 1);
    std::vector<bool> held(n, false);
    for (int64_t i = 0; i < n_eval; ++i) held[order[i]] = true;
    std::vector<TokenizedExample> kept;
    for (int64_t i = 0; i < n; ++i) (held[i] ? eval : kept).push_back(std::move(train[i]));
    train = std::move(kept);
    report.eval_source = "eval_ratio";
    report.eval_ratio = o.eval_ratio;
  }
  keep_or_drop(train, o, report.train, out.train);
  keep_or_drop(eval, o, report.eval, out.eval);
  if (out.train.empty()) throw InputError("data.train: no usable training examples (all dropped; see data_report.json)");
  return out;
}

}  // namespace sft::data
