// tests/test_tokenizer_components.cpp: the tokenizer's library-backed components on known cases (the
// pre-tokenizer patterns on PCRE2, with Oniguruma's meanings where the two differ; normalization and
// UTF-8 on utf8proc) and every error load_tokenizer raises for bad files. The reference checks on the
// full corpus are in tests/test_tokenizer.cpp.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <map>

#include "common/errors.h"
#include "data/tokenizer.h"
#include "data/tokenizer/regex.h"
#include "data/tokenizer/unicode.h"
#include "tests/test_util.h"

namespace sft::data {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------- regex and Unicode
std::vector<std::string> regex_split(const std::string& pattern, const std::string& text) {
  tokenizer::Regex re(pattern);
  std::vector<tokenizer::ByteRange> m;
  re.find_all(text, m);
  std::vector<std::string> out;
  for (auto [b, e] : m) out.push_back(text.substr(b, e - b));
  return out;
}

TEST(TokenizerRegex, OnigurumaSemanticsOnPreTokenizerPatterns) {
  const std::string gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
  EXPECT_EQ(regex_split(gpt2, "Hello world's  end 123!!"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " end", " 123", "!!"}));
  // \s+(?!\S) backs off one space so the next word keeps its leading space.
  EXPECT_EQ(regex_split(gpt2, "a   b"), (std::vector<std::string>{"a", "  ", " b"}));
  const std::string llama3 =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
      "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  EXPECT_EQ(regex_split(llama3, "I'M 1234567 DON'T\n\n x"),
            (std::vector<std::string>{"I", "'M", " ", "123", "456", "7", " DON", "'T", "\n\n", " x"}));
  // Case-insensitive contractions fold U+017F (long s) to 's', as Oniguruma does.
  EXPECT_EQ(regex_split(llama3, "it'\xC5\xBF"), (std::vector<std::string>{"it", "'\xC5\xBF"}));
  // Unicode classes: CJK is \p{L}, Arabic-Indic digits are \p{N}, U+3000 is \s.
  EXPECT_EQ(regex_split(gpt2, "\xE4\xBD\xA0\xE5\xA5\xBD\xE3\x80\x80\xD9\xA1\xD9\xA2"),
            (std::vector<std::string>{"\xE4\xBD\xA0\xE5\xA5\xBD", "\xE3\x80\x80", "\xD9\xA1\xD9\xA2"}));
  EXPECT_EQ(regex_split("a+?b|[x-z]{2}", "aaab xyz"), (std::vector<std::string>{"aaab", "xy"}));
  EXPECT_EQ(regex_split("(?:ab)+", "ababa ab"), (std::vector<std::string>{"abab", "ab"}));
  // Where PCRE2 10.42 and the reference's Oniguruma disagree, the pattern is rewritten: \s is
  // White_Space (not U+180E, which PCRE2 counts), and \p{L} has CJK Extension H (Unicode 15).
  EXPECT_EQ(regex_split("\\s+", "a\xE1\xA0\x8E\xC2\x85" "b"), (std::vector<std::string>{"\xC2\x85"}));
  EXPECT_EQ(regex_split("[^\\s\\p{L}]+", "x\xF0\xB1\x8D\x90" ","), (std::vector<std::string>{","}));
  EXPECT_EQ(regex_split("\\p{L}+", "\xF0\xB1\x8D\x90" "a1"), (std::vector<std::string>{"\xF0\xB1\x8D\x90" "a"}));
  // Invalid UTF-8 never matches; the search goes on after it.
  EXPECT_EQ(regex_split("\\p{L}+", "ab\xFF" "cd"), (std::vector<std::string>{"ab", "cd"}));
}

TEST(TokenizerRegex, UnsupportedSyntaxIsRejected) {
  // Lookbehind, backreferences and scripts are PCRE2 syntax as they are Oniguruma's: accepted now.
  EXPECT_EQ(regex_split("(?<=a)b", "abb"), (std::vector<std::string>{"b"}));
  EXPECT_EQ(regex_split("(a)\\1", "aaa"), (std::vector<std::string>{"aa"}));
  EXPECT_EQ(regex_split("\\p{Han}+", "x\xE4\xB8\xAD"), (std::vector<std::string>{"\xE4\xB8\xAD"}));
  EXPECT_THROW(tokenizer::Regex("[a-z"), std::invalid_argument);
  EXPECT_THROW(tokenizer::Regex("a)"), std::invalid_argument);
  EXPECT_THROW(tokenizer::Regex("\\p{NoSuchProperty}"), std::invalid_argument);
  // A negated White_Space / letter class inside a class has no PCRE2 spelling with the rewrite.
  EXPECT_THROW(tokenizer::Regex("[\\Sx]"), std::invalid_argument);
  EXPECT_THROW(tokenizer::Regex("[\\P{L}x]"), std::invalid_argument);
}

TEST(TokenizerUnicode, NormalizationAndUtf8) {
  namespace unicode = tokenizer;
  std::string out;
  std::vector<unicode::NormalizedRun> runs;
  const unicode::UnicodeNormalization nfc(unicode::NormalForm::kNFC), nfd(unicode::NormalForm::kNFD),
      nfkc(unicode::NormalForm::kNFKC);
  EXPECT_TRUE(nfc.normalize("e\xCC\x81", out, runs));
  EXPECT_EQ(out, "\xC3\xA9");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].in_end, 3u);
  EXPECT_TRUE(nfd.normalize("\xC3\xA9", out, runs));
  EXPECT_EQ(out, "e\xCC\x81");
  // Hangul jamo compose algorithmically: U+1100 U+1161 U+11A8 -> U+AC01.
  EXPECT_TRUE(nfc.normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", out, runs));
  EXPECT_EQ(out, "\xEA\xB0\x81");
  // Marks are reordered by combining class: q + dot above (230) + dot below (220) -> below first.
  EXPECT_TRUE(nfc.normalize("q\xCC\x87\xCC\xA3", out, runs));
  EXPECT_EQ(out, "q\xCC\xA3\xCC\x87");
  EXPECT_TRUE(nfkc.normalize("\xEF\xAC\x81", out, runs));  // ligature fi
  EXPECT_EQ(out, "fi");
  EXPECT_FALSE(nfc.normalize("plain ascii", out, runs));
  EXPECT_FALSE(nfc.normalize("\xC3\xA9t\xC3\xA9", out, runs));
  // Lossy UTF-8 replaces each maximal invalid subpart with one U+FFFD, like Rust's from_utf8_lossy.
  EXPECT_EQ(unicode::utf8_lossy("a\xF0\x9F\x98"), "a\xEF\xBF\xBD");
  EXPECT_EQ(unicode::utf8_lossy("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_TRUE(unicode::is_word(0x4E2D));
  EXPECT_FALSE(unicode::is_number(0x4E2D));
  EXPECT_TRUE(unicode::is_number('7'));
  EXPECT_TRUE(unicode::is_number(0x1E4F0));  // Nag Mundari digit zero (Unicode 15)
  EXPECT_TRUE(unicode::is_white_space(0x3000));
  EXPECT_TRUE(unicode::is_white_space(0x85));
  EXPECT_FALSE(unicode::is_white_space(0x200B));
  EXPECT_FALSE(unicode::is_white_space(0x180E));
  // Code points the reference's normalizer does not know pass through: U+32FF (NFKC: 令和 in utf8proc),
  // and U+11935 U+11930, which only utf8proc composes to U+11938.
  EXPECT_FALSE(nfkc.normalize("\xE3\x8B\xBF", out, runs));
  EXPECT_FALSE(nfc.normalize("\xF0\x91\xA4\xB5\xF0\x91\xA4\xB0", out, runs));
}

// ---------------------------------------------------------------- bad input
// A minimal valid byte-level BPE tokenizer.json, edited per test.
json tiny_tokenizer_json() {
  json vocab = json::object();
  int id = 0;
  for (const char* t : {"a", "b", "ab", "Ġ", "Ġab"}) vocab[t] = id++;
  return json{{"version", "1.0"},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
              {"added_tokens", json::array({{{"id", 5}, {"content", "<eos>"}, {"special", true}, {"lstrip", false},
                                             {"rstrip", false}, {"single_word", false}, {"normalized", false}}})},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({"a b", "Ġ ab"})}}}};
}

std::string error_of(const fs::path& dir) {
  try {
    load_tokenizer(dir);
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO ERROR";
}

TEST(TokenizerErrors, TinyTokenizerWorks) {
  test::TempDir dir;
  test::write_text(dir.path() / "tokenizer.json", tiny_tokenizer_json().dump());
  test::write_text(dir.path() / "tokenizer_config.json",
                   R"({"eos_token": {"content": "<eos>"}, "chat_template": [{"name": "tool_use", "template": "T"},
                       {"name": "default", "template": "D"}]})");
  auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->encode_ids("ab ab<eos>"), (std::vector<int32_t>{2, 4, 5}));
  EXPECT_EQ(tok->decode({2, 4, 5}), "ab ab<eos>");
  EXPECT_EQ(tok->decode({2, 4, 5}, true), "ab ab");
  EXPECT_EQ(tok->special_tokens().eos, 5);
  EXPECT_EQ(tok->chat_template(), std::optional<std::string>("D"));
  EXPECT_EQ(tok->vocab_size(), 6);
}

// Writes `files` into a fresh dir and returns load_tokenizer's InputError message.
std::string error_with(const std::map<std::string, std::string>& files, const test::TempDir& dir) {
  for (const auto& [name, text] : files) test::write_text(dir.path() / name, text);
  return error_of(dir.path());
}

#define EXPECT_HAS(haystack, needle) EXPECT_NE((haystack).find(needle), std::string::npos) << (haystack)

TEST(TokenizerErrors, MissingFilesNameTheDirectory) {
  test::TempDir dir;
  std::string e = error_of(dir.path() / "nope");
  EXPECT_HAS(e, (dir.path() / "nope").string());
  EXPECT_HAS(e, "does not exist");
  e = error_of(dir.path());
  EXPECT_HAS(e, dir.path().string());
  EXPECT_HAS(e, "no tokenizer.json or tokenizer.model");
}

TEST(TokenizerErrors, MalformedTokenizerJsonNamesFileAndKey) {
  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type 'WordPiece' is not supported"},
      {"unigram", [](json& j) { j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}}; },
       "model.type 'Unigram' is not supported"},
      {"no model", [](json& j) { j.erase("model"); }, "missing key 'model'"},
      {"no vocab", [](json& j) { j["model"].erase("vocab"); }, "missing key 'vocab'"},
      {"bad merge", [](json& j) { j["model"]["merges"] = json::array({"a zz"}); }, "model.merges[0]"},
      {"bad merge shape", [](json& j) { j["model"]["merges"] = json::array({42}); }, "model.merges[0]"},
      {"bad vocab id", [](json& j) { j["model"]["vocab"]["a"] = "x"; }, "model.vocab['a']"},
      {"pre_tokenizer", [](json& j) { j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}}; },
       "pre_tokenizer type 'BertPreTokenizer' is not supported"},
      {"regex", [](json& j) {
         j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(?<=x)[y"}}}, {"behavior", "Isolated"}};
       }, "regex (?<=x)[y"},
      {"normalizer", [](json& j) { j["normalizer"] = {{"type", "BertNormalizer"}}; },
       "normalizer type 'BertNormalizer' is not supported"},
      {"decoder", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "decoder type 'WordPiece' is not supported"},
      {"added token", [](json& j) { j["added_tokens"][0].erase("content"); }, "added_tokens[0]: missing key 'content'"},
  };
  for (const Case& c : cases) {
    test::TempDir dir;
    json j = tiny_tokenizer_json();
    c.edit(j);
    std::string e = error_with({{"tokenizer.json", j.dump()}}, dir);
    EXPECT_HAS(e, (dir.path() / "tokenizer.json").string()) << " case " << c.what;
    EXPECT_HAS(e, c.expect) << " case " << c.what;
  }
  test::TempDir dir;
  std::string e = error_with({{"tokenizer.json", "{\"model\": "}}, dir);
  EXPECT_HAS(e, (dir.path() / "tokenizer.json").string());
  EXPECT_HAS(e, "malformed JSON");
}

TEST(TokenizerErrors, BadConfigFilesNameFileAndKey) {
  const std::string tj = tiny_tokenizer_json().dump();
  struct Case {
    const char* file;
    const char* text;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"tokenizer_config.json", "{not json", "malformed JSON"},
      {"tokenizer_config.json", R"({"bos_token": "<nope>"})", "bos_token '<nope>' is not in the tokenizer vocabulary"},
      {"tokenizer_config.json", R"({"eos_token": 5})", "eos_token must be a string"},
      {"tokenizer_config.json", R"({"chat_template": 3})", "chat_template must be a string"},
      {"tokenizer_config.json", R"({"chat_template": [{"template": "x"}]})", "chat_template list entries"},
      {"tokenizer_config.json", R"({"add_bos_token": true})", "add_bos_token is true but there is no bos_token"},
      {"special_tokens_map.json", R"({"pad_token": {"content": "<pad>"}})", "pad_token '<pad>'"},
      {"config.json", R"({"eos_token_id": "x"})", "eos_token_id must be an integer"},
      {"config.json", R"({"bos_token_id": 99})", "bos_token id 99 is outside the vocabulary"},
  };
  for (const Case& c : cases) {
    test::TempDir dir;
    std::string e = error_with({{"tokenizer.json", tj}, {c.file, c.text}}, dir);
    EXPECT_HAS(e, (dir.path() / c.file).string()) << " file " << c.file;
    EXPECT_HAS(e, c.expect);
  }
}

TEST(TokenizerErrors, CorruptSentencePieceModel) {
  test::TempDir dir;
  std::string e = error_with({{"tokenizer.model", "this is not a protobuf"}}, dir);
  EXPECT_HAS(e, (dir.path() / "tokenizer.model").string());
  EXPECT_HAS(e, "cannot load SentencePiece model");
}

TEST(TokenizerErrors, SentencePieceOnlyDirUsesModelIds) {
  // A dir holding only tokenizer.model: bos/eos/unk come from the model itself.
  test::TempDir dir;
  fs::copy_file((test::assets_dir() / "tokenizers" / "llama2-sp") / "tokenizer.model", dir.path() / "tokenizer.model");
  auto tok = load_tokenizer(dir.path());
  EXPECT_EQ(tok->special_tokens().bos, 1);
  EXPECT_EQ(tok->special_tokens().eos, 2);
  EXPECT_EQ(tok->special_tokens().unk, 0);
  EXPECT_FALSE(tok->special_tokens().pad.has_value());
  EXPECT_EQ(tok->special_tokens().eos_text, "</s>");
  EXPECT_FALSE(tok->chat_template().has_value());
}

}  // namespace
}  // namespace sft::data
