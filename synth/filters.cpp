// synth/filters.cpp: Self-Instruct filters and Evol-Instruct elimination rules (see filters.h).
#include "synth/filters.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "synth/rouge.h"

namespace sft::synth {
namespace {

// Words that make an instruction unanswerable in text (Self-Instruct's list, with plurals and verb
// forms spelled out), matched as whole words after lowercasing.
const std::set<std::string>& unsuitable_words() {
  static const std::set<std::string> words = {
      "image", "images", "graph", "graphs", "picture", "pictures", "photo", "photos", "file", "files",
      "map", "maps", "draw", "draws", "drawing", "drawings", "drawn", "plot", "plots", "plotting", "plotted"};
  return words;
}

// Common English function words: articles, pronouns, auxiliaries, prepositions, conjunctions.
const std::set<std::string>& stop_words() {
  static const std::set<std::string> words = {
      "a", "an", "the", "and", "or", "but", "nor", "so", "yet", "if", "then", "else", "than", "as", "of",
      "at", "by", "for", "with", "about", "against", "between", "into", "through", "during", "before",
      "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
      "again", "further", "once", "here", "there", "when", "where", "why", "how", "all", "any", "both",
      "each", "few", "more", "most", "other", "some", "such", "no", "not", "only", "own", "same", "too",
      "very", "can", "will", "just", "should", "would", "could", "may", "might", "must", "shall", "now",
      "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself",
      "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself",
      "they", "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that",
      "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
      "having", "do", "does", "did", "doing", "s", "t", "d", "ll", "m", "o", "re", "ve", "y", "don",
      "ok", "okay", "yes", "oh", "well", "um", "uh"};
  return words;
}

std::string lowercase_ascii(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

size_t count_words(std::string_view text) {
  size_t words = 0;
  bool in_word = false;
  for (char c : text) {
    const bool space = std::isspace(static_cast<unsigned char>(c));
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

std::optional<std::string> check_instruction(std::string_view instruction, const InstructionLimits& limits) {
  const size_t words = count_words(instruction);
  if (words < limits.min_words) return reason::kTooShort;
  if (words > limits.max_words) return reason::kTooLong;
  for (const std::string& word : rouge_tokenize(instruction)) {
    if (unsuitable_words().count(word)) return reason::kUnsuitableTopic;
  }
  const size_t first = instruction.find_first_not_of(" \t\r\n");
  const unsigned char c = static_cast<unsigned char>(instruction[first]);  // words >= 1: first exists
  if (c >= 0x80) return reason::kStartsWithNonAscii;
  if (std::ispunct(c)) return reason::kStartsWithPunctuation;
  return std::nullopt;
}

void InstructionPool::add(std::string_view instruction) { tokenized_.push_back(rouge_tokenize(instruction)); }

double InstructionPool::max_similarity(std::string_view instruction) const {
  const std::vector<std::string> tokens = rouge_tokenize(instruction);
  double best = 0;
  for (const auto& kept : tokenized_) best = std::max(best, rouge_l(kept, tokens).f1);
  return best;
}

bool no_information_gain(std::string_view original, std::string_view evolved, double max_similarity) {
  const std::vector<std::string> a = rouge_tokenize(original), b = rouge_tokenize(evolved);
  if (a == b) return true;
  return rouge_l(a, b).f1 >= max_similarity;
}

bool is_sorry_response(std::string_view response, size_t max_words) {
  return lowercase_ascii(response).find("sorry") != std::string::npos && count_words(response) < max_words;
}

bool is_stop_words_only(std::string_view response) {
  for (const std::string& word : rouge_tokenize(response)) {
    if (!stop_words().count(word)) return false;
  }
  return true;
}

bool copies_rewrite_prompt(std::string_view evolved) {
  // The words with everything but letters squeezed out, so "#Rewritten  Prompt#" and "rewritten-prompt" match.
  std::string joined;
  for (const std::string& word : rouge_tokenize(evolved)) joined += word + " ";
  for (const char* phrase : {"given prompt ", "rewritten prompt ", "created prompt "}) {
    if (joined.find(phrase) != std::string::npos) return true;
  }
  return false;
}

std::optional<std::string> check_evolution(std::string_view original, std::string_view evolved,
                                           std::string_view response, const EvolLimits& limits,
                                           std::optional<bool> judged_equal) {
  if (evolved.find_first_not_of(" \t\r\n") == std::string_view::npos) return reason::kEmptyPrompt;
  const bool same = judged_equal ? *judged_equal : no_information_gain(original, evolved, limits.max_similarity);
  if (same) return reason::kNoInformationGain;
  if (response.find_first_not_of(" \t\r\n") == std::string_view::npos) return reason::kEmptyResponse;
  if (is_sorry_response(response, limits.sorry_max_words)) return reason::kSorryResponse;
  if (is_stop_words_only(response)) return reason::kStopWordsResponse;
  if (copies_rewrite_prompt(evolved)) return reason::kCopiesRewritePrompt;
  return std::nullopt;
}

}  // namespace sft::synth
