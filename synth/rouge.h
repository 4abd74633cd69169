// synth/rouge.h: ROUGE-L (longest common subsequence of words), as Google's `rouge-score` package
// computes it with its default tokenizer and no stemmer (the setting Self-Instruct filters with):
// lowercase, every run of characters other than [a-z0-9] splits words, F1 of LCS precision and recall.
// tests/test_synth.cpp checks it against rouge-score on the pairs of scripts/make_synth_golden.py.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace sft::synth {

// rouge-score's tokenize(text, stemmer=None): Python's str.lower(), then [^a-z0-9]+ -> space, split.
// Non-ASCII characters separate words, except the two whose Python lowercase is ASCII: U+212A KELVIN
// SIGN -> "k" and U+0130 (dotted capital I) -> "i" followed by a combining dot, which splits.
std::vector<std::string> rouge_tokenize(std::string_view text);

struct RougeScore {
  double precision = 0, recall = 0, f1 = 0;
};

// ROUGE-L of `candidate` against `reference` (rouge-score's score(target=reference, prediction=candidate)):
// precision = LCS / |candidate|, recall = LCS / |reference|, f1 = 2PR / (P + R); all 0 when either side
// has no words. F1 is symmetric in the two arguments.
RougeScore rouge_l(const std::vector<std::string>& reference, const std::vector<std::string>& candidate);
RougeScore rouge_l(std::string_view reference, std::string_view candidate);

// The length of the longest common subsequence of two word sequences (O(|a| |b|) time, O(|b|) memory).
size_t lcs_length(const std::vector<std::string>& a, const std::vector<std::string>& b);

}  // namespace sft::synth
