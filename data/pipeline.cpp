// data/pipeline.cpp: prepare_data (read -> split -> render/tokenize -> length policy -> report),
// the --out writer and the mask audit.
#include "data/pipeline.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "common/errors.h"
#include "common/text_file.h"
#include "data/formats.h"
#include "data/packing.h"

namespace sft::data {
namespace {

constexpr uint64_t kSplitSalt = 0x6576616C73706C74ULL;  // "evalsplt": the split stream differs from the sampler's

// Reads files into `out`, recording per-file stats and enforcing max_invalid across all files read.
void read_files(const std::vector<std::string>& paths, const char* split, const DataOptions& o, DataReport& report,
                std::vector<Conversation>& out, std::string& first_invalid) {
  const Format format = o.format;
  for (const std::string& path : paths) {
    FileReadResult r = read_data_file(path, format, o.skip_invalid);
    FileStats stats;
    stats.path = path;
    stats.split = split;
    stats.format = format_name(r.format);
    stats.lines = r.lines;
    stats.valid = static_cast<int64_t>(r.conversations.size());
    for (const InvalidLine& bad : r.invalid) {
      ++stats.invalid[bad.reason];
      ++report.invalid[bad.reason];
      ++report.invalid_total;
      if (first_invalid.empty()) first_invalid = bad.message;
    }
    report.files.push_back(stats);
    if (report.invalid_total > o.max_invalid) {
      std::string reasons;
      for (const auto& [reason, n] : report.invalid) reasons += (reasons.empty() ? "" : ", ") + reason + "=" + std::to_string(n);
      throw InputError("data.max_invalid=" + std::to_string(o.max_invalid) + " exceeded: " +
                       std::to_string(report.invalid_total) + " invalid lines (" + reasons + "); first: " + first_invalid);
    }
    for (Conversation& c : r.conversations) {
      if (o.direction == Direction::kReverse) reverse_direction(c);
      out.push_back(std::move(c));
    }
  }
}

void tokenize_split(const std::vector<Conversation>& conversations, const ChatTemplate& chat_template,
                    const Tokenizer& tokenizer, const DataOptions& o, int64_t model_vocab_size, SplitStats& stats,
                    std::vector<TokenizedExample>& out) {
  MaskOptions mask{o.train_on_prompt, o.mask_history, o.system_prompt};
  for (const Conversation& c : conversations) {
    ++stats.examples;
    TokenizedExample e = tokenize_conversation(c, chat_template, tokenizer, mask);
    for (int32_t id : e.input_ids) {
      if (id < 0 || id >= model_vocab_size) {
        throw InputError(c.source + ": token id " + std::to_string(id) + " is outside the model's embedding (" +
                         std::to_string(model_vocab_size) + " rows): the tokenizer does not match the model");
      }
    }
    bool truncated = false;
    std::string dropped = apply_length_policy(e, o.max_seq_len, o.truncation, &truncated);
    if (!dropped.empty()) {
      ++stats.dropped[dropped];
      continue;
    }
    stats.truncated += truncated;
    ++stats.kept;
    stats.tokens += static_cast<int64_t>(e.input_ids.size());
    stats.target_tokens += count_targets(e.labels);
    stats.max_length = std::max<int64_t>(stats.max_length, static_cast<int64_t>(e.input_ids.size()));
    out.push_back(std::move(e));
  }
}

// Special markup that must be single tokens for a template to mean what it says.
void check_template_tokens(const ChatTemplate& t, const Tokenizer& tokenizer, DataReport& report) {
  std::vector<const char*> markers;
  if (t.kind == TemplateKind::kChatml || t.kind == TemplateKind::kQwen3) markers = {"<|im_start|>", "<|im_end|>"};
  if (t.kind == TemplateKind::kLlama3) markers = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
  for (const char* m : markers) {
    if (!tokenizer.token_to_id(m)) {
      report.warnings.push_back(std::string("template ") + t.name() + ": \"" + m +
                                "\" is not a token of this tokenizer; it is encoded as plain text");
    }
  }
}

}  // namespace

void reverse_direction(Conversation& conversation) {
  std::vector<Message>& m = conversation.messages;
  for (size_t i = 0; i + 1 < m.size(); ++i) {
    if (m[i].role == Role::kUser && m[i + 1].role == Role::kAssistant) std::swap(m[i].content, m[i + 1].content);
  }
}

std::string apply_length_policy(TokenizedExample& e, int64_t max_seq_len, Truncation truncation,
                                bool* truncated) {
  *truncated = false;
  if (count_targets(e.labels) == 0) return drop_reason::kNoTarget;
  if (static_cast<int64_t>(e.input_ids.size()) <= max_seq_len) return "";
  if (truncation == Truncation::kDrop) return drop_reason::kTooLong;
  e.input_ids.resize(static_cast<size_t>(max_seq_len));
  e.labels.resize(static_cast<size_t>(max_seq_len));
  if (count_targets(e.labels) == 0) return drop_reason::kNoTargetAfterTruncation;
  *truncated = true;
  return "";
}

PreparedData prepare_data(const DataOptions& o, const Tokenizer& tokenizer, uint64_t seed, int64_t model_vocab_size,
                          const std::filesystem::path& tokenizer_dir) {
  check_data_options(o);
  PreparedData out;
  DataReport& report = out.report;
  report.max_seq_len = o.max_seq_len;
  report.truncation = enum_name(o.truncation);
  report.packing = o.packing;

  const std::string config_path =
      (tokenizer_dir.empty() ? std::filesystem::path("tokenizer_config.json") : tokenizer_dir / "tokenizer_config.json").string();
  out.chat_template = resolve_template(o.chat_template, tokenizer.chat_template(), config_path);
  report.chat_template = out.chat_template.name();
  check_template_tokens(out.chat_template, tokenizer, report);
  if (model_vocab_size < tokenizer.vocab_size()) {
    report.warnings.push_back("the model's embedding (" + std::to_string(model_vocab_size) +
                              " rows) is smaller than the tokenizer's vocabulary (" +
                              std::to_string(tokenizer.vocab_size()) + ")");
  }

  std::vector<Conversation> train, eval;
  std::string first_invalid;
  read_files(o.train, "train", o, report, train, first_invalid);
  if (o.eval) {
    read_files({*o.eval}, "eval", o, report, eval, first_invalid);
    report.eval_source = "file";
  } else if (o.eval_ratio > 0.0) {
    const int64_t n = static_cast<int64_t>(train.size());
    if (n < 2) throw InputError("data.eval_ratio: need at least 2 training examples to hold some out");
    int64_t n_eval = std::clamp<int64_t>(std::llround(o.eval_ratio * static_cast<double>(n)), 1, n - 1);
    std::vector<int64_t> perm = permutation(n, seed ^ kSplitSalt);
    std::vector<char> held(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < n_eval; ++i) held[static_cast<size_t>(perm[static_cast<size_t>(i)])] = 1;
    std::vector<Conversation> kept;
    for (int64_t i = 0; i < n; ++i) (held[i] ? eval : kept).push_back(std::move(train[static_cast<size_t>(i)]));
    train = std::move(kept);
    report.eval_source = "eval_ratio";
    report.eval_ratio = o.eval_ratio;
  }

  tokenize_split(train, out.chat_template, tokenizer, o, model_vocab_size, report.train, out.train);
  tokenize_split(eval, out.chat_template, tokenizer, o, model_vocab_size, report.eval, out.eval);
  if (out.train.empty()) {
    throw InputError("data.train: no training examples left (" + std::to_string(report.train.examples) +
                     " read, all dropped: see data_report.json / `sft data`)");
  }
  if (o.packing) {
    std::vector<int64_t> lengths;
    for (const auto& e : out.train) lengths.push_back(static_cast<int64_t>(e.input_ids.size()));
    report.packing_efficiency = packing_efficiency(lengths, o.max_seq_len);
  }
  return out;
}

void write_examples_jsonl(const std::filesystem::path& path, const std::vector<TokenizedExample>& examples) {
  std::optional<TextFileWriter> f;
  try {
    f.emplace(path);
  } catch (const std::runtime_error& e) {
    throw InputError(e.what());  // a --out path that cannot be created is bad input
  }
  auto list = [](const std::vector<int32_t>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
    return out + "]";
  };
  for (const TokenizedExample& e : examples) {
    f->write("{\"input_ids\":" + list(e.input_ids) + ",\"labels\":" + list(e.labels) + "}\n");
  }
  f->close();
}

namespace {

// Runs of equal supervision: [begin, end, supervised].
struct Run {
  size_t begin, end;
  bool supervised;
};

std::vector<Run> supervision_runs(const TokenizedExample& e) {
  std::vector<Run> runs;
  for (size_t i = 0; i < e.labels.size(); ++i) {
    bool s = e.labels[i] != kIgnoreLabel;
    if (runs.empty() || runs.back().supervised != s) runs.push_back({i, i, s});
    runs.back().end = i + 1;
  }
  return runs;
}

// Decodes each run in context: the text added by the run to the decoded prefix. Falls back to decoding
// the run alone when the prefix decode is not a prefix (e.g. a split multi-byte character).
std::vector<std::string> decode_runs(const TokenizedExample& e, const std::vector<Run>& runs, const Tokenizer& tok) {
  std::vector<std::string> texts;
  std::string previous;
  for (const Run& r : runs) {
    std::vector<int32_t> prefix(e.input_ids.begin(), e.input_ids.begin() + static_cast<std::ptrdiff_t>(r.end));
    std::string current = tok.decode(prefix);
    if (current.compare(0, previous.size(), previous) == 0) {
      texts.push_back(current.substr(previous.size()));
    } else {
      std::vector<int32_t> ids(e.input_ids.begin() + static_cast<std::ptrdiff_t>(r.begin),
                               e.input_ids.begin() + static_cast<std::ptrdiff_t>(r.end));
      texts.push_back(tok.decode(ids));
    }
    previous = std::move(current);
  }
  return texts;
}

}  // namespace

std::vector<std::string> supervised_texts(const TokenizedExample& e, const Tokenizer& tokenizer) {
  std::vector<Run> runs = supervision_runs(e);
  std::vector<std::string> texts = decode_runs(e, runs, tokenizer);
  std::vector<std::string> out;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (runs[i].supervised) out.push_back(texts[i]);
  }
  return out;
}

std::string format_mask_audit(const TokenizedExample& e, const Tokenizer& tokenizer) {
  std::vector<Run> runs = supervision_runs(e);
  std::vector<std::string> texts = decode_runs(e, runs, tokenizer);
  std::string out = "=== " + e.source + ": " + std::to_string(e.input_ids.size()) + " tokens, " +
                    std::to_string(count_targets(e.labels)) + " supervised (inside \u27E6 \u27E7)\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    out += runs[i].supervised ? "\u27E6" + texts[i] + "\u27E7" : texts[i];
  }
  out += "\n";
  return out;
}

int32_t default_pad_id(const Tokenizer& tokenizer) {
  const SpecialTokens& s = tokenizer.special_tokens();
  if (s.pad) return *s.pad;
  if (s.eos) return *s.eos;
  return 0;
}

}  // namespace sft::data
