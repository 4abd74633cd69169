// synth/rouge.cpp: rouge-score's default tokenizer and ROUGE-L (see rouge.h).
#include "synth/rouge.h"

#include <algorithm>

namespace sft::synth {

std::vector<std::string> rouge_tokenize(std::string_view text) {
  std::vector<std::string> tokens;
  std::string word;
  auto split = [&] {
    if (!word.empty()) tokens.push_back(std::move(word));
    word.clear();
  };
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      if (c >= 'A' && c <= 'Z') {
        word += static_cast<char>(c - 'A' + 'a');
      } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
        word += static_cast<char>(c);
      } else {
        split();
      }
      ++i;
      continue;
    }
    // A multi-byte UTF-8 character (or a stray byte): its length from the lead byte.
    const size_t length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    const std::string_view character = text.substr(i, length);
    if (character == "\xE2\x84\xAA") {         // U+212A KELVIN SIGN: lower() is ASCII 'k'
      word += 'k';
    } else if (character == "\xC4\xB0") {      // U+0130: lower() is 'i' + U+0307, which splits
      word += 'i';
      split();
    } else {
      split();
    }
    i += length;
  }
  split();
  return tokens;
}

size_t lcs_length(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<size_t> row(b.size() + 1, 0);  // row[j] = LCS of a[0..i) and b[0..j)
  for (const std::string& word : a) {
    size_t diagonal = 0;  // LCS of a[0..i-1) and b[0..j-1)
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = word == b[j - 1] ? diagonal + 1 : std::max(row[j], row[j - 1]);
      diagonal = above;
    }
  }
  return row[b.size()];
}

RougeScore rouge_l(const std::vector<std::string>& reference, const std::vector<std::string>& candidate) {
  RougeScore score;
  if (reference.empty() || candidate.empty()) return score;
  const double lcs = static_cast<double>(lcs_length(reference, candidate));
  score.precision = lcs / static_cast<double>(candidate.size());
  score.recall = lcs / static_cast<double>(reference.size());
  // rouge-score's scoring.fmeasure, operation for operation.
  if (score.precision + score.recall > 0) {
    score.f1 = 2 * score.precision * score.recall / (score.precision + score.recall);
  }
  return score;
}

RougeScore rouge_l(std::string_view reference, std::string_view candidate) {
  return rouge_l(rouge_tokenize(reference), rouge_tokenize(candidate));
}

}  // namespace sft::synth
