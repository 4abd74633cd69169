// synth/filters.h: the published filters of sft synth, each a pure function of text, tested on crafted
// cases in tests/test_synth.cpp. Every rejection has a reason name (reason::*), counted in the report.
// - Self-Instruct (Wang et al. 2022, section 2.3): an instruction is kept only when its ROUGE-L F1 is
//   below 0.7 against every instruction kept so far (seeds included), it has 4..150 words, it names no
//   images, graphs, pictures, files, maps, drawing or plotting, and it starts with neither punctuation
//   nor a non-ASCII character.
// - Evol-Instruct (Xu et al. 2023, WizardLM, section 3.3): an evolution is dropped when it has no
//   information gain over its original, its response says "sorry" in under 80 words, its response is
//   only punctuation and stop words, or it copies words of the rewriting prompt ("#Rewritten Prompt#").
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sft::synth {

namespace reason {
// Self-Instruct instruction filters.
constexpr const char* kTooShort = "too_short";
constexpr const char* kTooLong = "too_long";
constexpr const char* kUnsuitableTopic = "unsuitable_topic";  // images, graphs, files, drawing, ...
constexpr const char* kStartsWithPunctuation = "starts_with_punctuation";
constexpr const char* kStartsWithNonAscii = "starts_with_non_ascii";
constexpr const char* kTooSimilar = "too_similar";  // ROUGE-L >= threshold against a kept instruction
// Parsing of the model's numbered list.
constexpr const char* kUnparsed = "unparsed_output";     // an output with no numbered item at all
constexpr const char* kTruncatedItem = "truncated_item"; // the last item of an output cut by max tokens
// Evol-Instruct elimination rules (numbered as in the paper).
constexpr const char* kNoInformationGain = "no_information_gain";        // 1
constexpr const char* kSorryResponse = "sorry_response";                 // 2
constexpr const char* kStopWordsResponse = "stop_words_response";        // 3
constexpr const char* kCopiesRewritePrompt = "copies_rewrite_prompt";    // 4
constexpr const char* kEmptyPrompt = "empty_prompt";
constexpr const char* kTruncatedPrompt = "truncated_prompt";  // a rewrite or generated prompt cut by max tokens
// Responses, every command.
constexpr const char* kEmptyResponse = "empty_response";
constexpr const char* kTruncatedResponse = "truncated_response";  // hit --max-new-tokens (see --keep-truncated)
// Self-curation (backtranslate --score).
constexpr const char* kLowScore = "low_score";
constexpr const char* kUnscored = "unscored";  // the scorer's output names no score 1..5
}  // namespace reason

// Words as Self-Instruct counts them: runs of non-whitespace.
size_t count_words(std::string_view text);

struct InstructionLimits {
  size_t min_words = 4;    // the paper drops instructions of 3 words or fewer
  size_t max_words = 150;  // ... and of more than 150
};

// The Self-Instruct filters that look at one instruction alone (all but the similarity), in the order
// above. Returns the reason of the first that fails, or nullopt when the instruction passes.
std::optional<std::string> check_instruction(std::string_view instruction, const InstructionLimits& limits = {});

// The kept instructions, tokenized once for ROUGE-L.
class InstructionPool {
 public:
  explicit InstructionPool(double max_similarity = 0.7) : max_similarity_(max_similarity) {}
  void add(std::string_view instruction);
  // The largest ROUGE-L F1 of `instruction` against the pool (0 for an empty pool).
  double max_similarity(std::string_view instruction) const;
  // true when max_similarity < threshold: the instruction may join.
  bool is_novel(std::string_view instruction) const { return max_similarity(instruction) < max_similarity_; }
  size_t size() const { return tokenized_.size(); }

 private:
  double max_similarity_;
  std::vector<std::vector<std::string>> tokenized_;
};

struct EvolLimits {
  double max_similarity = 0.9;  // rule 1: ROUGE-L F1 at or above this = no information gain
  size_t sorry_max_words = 80;  // rule 2: "sorry" in a response shorter than this many words
};

// Rule 1 without a judge: the evolved prompt equals the original after normalisation (the same
// ROUGE words: case, punctuation and spacing ignored) or is at least `max_similarity` ROUGE-L F1 to it.
bool no_information_gain(std::string_view original, std::string_view evolved, double max_similarity);
// Rule 2: the response contains "sorry" (any case) and has fewer than `max_words` words.
bool is_sorry_response(std::string_view response, size_t max_words);
// Rule 3: every word of the response is a stop word (an empty or punctuation-only response too).
bool is_stop_words_only(std::string_view response);
// Rule 4: the evolved prompt contains words of the rewriting prompt: "given prompt", "rewritten
// prompt", "created prompt" (with or without the # markers, any case or spacing).
bool copies_rewrite_prompt(std::string_view evolved);

// An empty evolved prompt, then the four rules in order, with an empty response after rule 1 (rule 1 by ROUGE-L; `judged_equal` replaces it when --judge gave a verdict).
// Returns the reason of the first that fails, or nullopt to keep the evolution.
std::optional<std::string> check_evolution(std::string_view original, std::string_view evolved,
                                           std::string_view response, const EvolLimits& limits = {},
                                           std::optional<bool> judged_equal = std::nullopt);

}  // namespace sft::synth
