// tests/test_data.cpp: tokenize + mask (data/dataset.*) proven by decoding the supervised spans, the
// length policy and the rest of the pipeline (data/pipeline.*): the eval split, --out and the data
// report. Readers: test_data_formats.cpp; templates: test_data_template.cpp; packing and the sampler:
// test_data_loader.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "common/errors.h"
#include "data/dataset.h"
#include "data/formats.h"
#include "data/loader.h"
#include "data/packing.h"
#include "data/pipeline.h"
#include "data/template.h"
#include "data/tokenizer.h"
#include "tests/data_test_util.h"
#include "tests/test_util.h"

namespace sft::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace test_support;

// ---------------------------------------------------------------- masks (byte tokenizer: 1 byte = 1 token)

const Conversation kMultiTurn = convo({{Role::kSystem, "Sys"}, {Role::kUser, "Q1"}, {Role::kAssistant, "A1"},
                                       {Role::kUser, "Q2"}, {Role::kAssistant, "A2"}});

TEST(DataMask, OnlyAssistantTextAndEndOfTurn) {
  ByteTokenizer tok;
  TokenizedExample e = tokenize_conversation(kMultiTurn, named("chatml"), tok, MaskOptions{});
  EXPECT_EQ(supervised_texts(e, tok), (std::vector<std::string>{"A1<|im_end|>", "A2<|im_end|>"}));
  EXPECT_EQ(count_targets(e.labels), 6);
  std::string audit = format_mask_audit(e, tok);
  EXPECT_NE(audit.find("assistant\n\u27E6A1<|im_end|>\u27E7\n<|im_start|>user"), std::string::npos) << audit;
  EXPECT_NE(audit.find("mem:1"), std::string::npos);
}

TEST(DataMask, MaskHistoryKeepsOnlyLastTurn) {
  ByteTokenizer tok;
  MaskOptions m;
  m.mask_history = true;
  TokenizedExample e = tokenize_conversation(kMultiTurn, named("chatml"), tok, m);
  EXPECT_EQ(supervised_texts(e, tok), std::vector<std::string>{"A2<|im_end|>"});
  m.train_on_prompt = true;  // with train_on_prompt: the whole last exchange
  e = tokenize_conversation(kMultiTurn, named("chatml"), tok, m);
  EXPECT_EQ(supervised_texts(e, tok),
            std::vector<std::string>{"<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n"});
}

TEST(DataMask, TrainOnPromptCountsEverythingButBos) {
  ByteTokenizer tok;
  MaskOptions m;
  m.train_on_prompt = true;
  TokenizedExample e = tokenize_conversation(kMultiTurn, named("chatml"), tok, m);
  ASSERT_EQ(e.input_ids[0], 1);  // BOS from add_bos
  EXPECT_EQ(e.labels[0], kIgnoreLabel);
  for (size_t i = 1; i < e.labels.size(); ++i) EXPECT_EQ(e.labels[i], e.input_ids[i]) << i;
  EXPECT_EQ(supervised_texts(e, tok).size(), 1u);
}

TEST(DataMask, BosExactlyOnce) {
  ByteTokenizer with_bos(/*add_bos=*/true), without_bos(/*add_bos=*/false);
  Conversation c = convo({{Role::kUser, "Q"}, {Role::kAssistant, "A"}});
  auto bos_count = [](const TokenizedExample& e) { return std::count(e.input_ids.begin(), e.input_ids.end(), 1); };
  // Templates that render "<s>" get no second BOS from add_bos.
  for (const char* name : {"mistral", "llama2", "llama3"}) {
    TokenizedExample e = tokenize_conversation(c, named(name), with_bos, MaskOptions{});
    EXPECT_EQ(e.input_ids[0], 1) << name;
    EXPECT_EQ(bos_count(e), 1) << name;
  }
  // Templates that don't render it follow the tokenizer's add_bos (what HF does for plain text).
  for (const char* name : {"chatml", "alpaca", "plain"}) {
    TokenizedExample e = tokenize_conversation(c, named(name), with_bos, MaskOptions{});
    EXPECT_EQ(e.input_ids[0], 1) << name;
    EXPECT_EQ(bos_count(e), 1) << name;
    EXPECT_EQ(bos_count(tokenize_conversation(c, named(name), without_bos, MaskOptions{})), 0) << name;
  }
}

TEST(DataMask, EosStaysSupervisedWhenPadIsEos) {
  ByteTokenizer tok(/*add_bos=*/false, /*pad=*/2);  // pad == eos == 2
  ASSERT_EQ(default_pad_id(tok), 2);
  TokenizedExample a = tokenize_conversation(convo({{Role::kUser, "Q"}, {Role::kAssistant, "Yes"}}), named("plain"), tok, {});
  TokenizedExample b = tokenize_conversation(convo({{Role::kUser, "Q"}, {Role::kAssistant, "A"}}), named("plain"), tok, {});
  EXPECT_EQ(a.labels.back(), 2);
  Batch batch = build_batch({{&a}, {&b}}, /*pad_rows=*/true, default_pad_id(tok));
  // Targets: "Yes</s>" and "A</s>": both EOS tokens are targets, the padding after b is not.
  std::vector<int64_t> targets(batch.target_ids.data_ptr<int64_t>(), batch.target_ids.data_ptr<int64_t>() + batch.num_targets);
  EXPECT_EQ(targets, (std::vector<int64_t>{10 + 'Y', 10 + 'e', 10 + 's', 2, 10 + 'A', 2}));
  EXPECT_EQ(batch.num_tokens, 10);       // rows of 5 tokens: "QYes</s>" and "QA</s>" + 2 padding
  EXPECT_EQ(batch.num_real_tokens, 8);
}

// ---------------------------------------------------------------- length policy

TokenizedExample plain_example(const ByteTokenizer& tok, const std::string& q, const std::string& a) {
  return tokenize_conversation(convo({{Role::kUser, q}, {Role::kAssistant, a}}), named("plain"), tok, {});
}

TEST(DataLength, TruncateRightKeepsTargets) {
  ByteTokenizer tok;
  TokenizedExample e = plain_example(tok, "What?", "Yes");  // <s> W h a t ? Y e s </s>: 10 tokens, 4 targets
  ASSERT_EQ(e.input_ids.size(), 10u);
  bool truncated = false;
  EXPECT_EQ(apply_length_policy(e, 8, Truncation::kRight, &truncated), "");
  EXPECT_TRUE(truncated);
  EXPECT_EQ(e.input_ids.size(), 8u);
  EXPECT_EQ(count_targets(e.labels), 2);  // "Ye" survive
  EXPECT_EQ(tok.decode(e.input_ids), "<s>What?Ye");

  TokenizedExample f = plain_example(tok, "What?", "Yes");
  EXPECT_EQ(apply_length_policy(f, 6, Truncation::kRight, &truncated), drop_reason::kNoTargetAfterTruncation);
  TokenizedExample g = plain_example(tok, "What?", "Yes");
  EXPECT_EQ(apply_length_policy(g, 9, Truncation::kDrop, &truncated), drop_reason::kTooLong);
  TokenizedExample h = plain_example(tok, "What?", "Yes");
  EXPECT_EQ(apply_length_policy(h, 10, Truncation::kDrop, &truncated), "");  // exactly max_seq_len fits
  EXPECT_FALSE(truncated);
  TokenizedExample none{{1, 20, 21}, {kIgnoreLabel, kIgnoreLabel, kIgnoreLabel}, "x"};
  EXPECT_EQ(apply_length_policy(none, 10, Truncation::kRight, &truncated), drop_reason::kNoTarget);
}

TEST(DataLength, PipelineCountsDropsAndTruncation) {
  test::TempDir dir;
  test::write_text(dir.path() / "t.jsonl",
                   R"({"prompt": "What?", "response": "Yes"})" "\n"              // 10 tokens: kept
                   R"({"prompt": "A long question here", "response": "Ok"})" "\n"  // 24: cut, "Ok" gone
                   R"({"prompt": "Hmm", "response": "A longer answer"})" "\n");    // 20: truncated
  ByteTokenizer tok;
  DataOptions o;
  o.train = {(dir.path() / "t.jsonl").string()};
  o.chat_template = TemplateKind::kPlain;
  o.max_seq_len = 12;
  PreparedData d = prepare_data(o, tok, 1, 266);
  EXPECT_EQ(d.report.train.examples, 3);
  EXPECT_EQ(d.report.train.kept, 2);
  EXPECT_EQ(d.report.train.truncated, 1);
  EXPECT_EQ(d.report.train.dropped, (std::map<std::string, int64_t>{{"no_target_after_truncation", 1}}));
  EXPECT_EQ(d.report.train.tokens, 10 + 12);
  EXPECT_EQ(d.report.train.target_tokens, 4 + 8);  // "Yes</s>" + "A longer" (truncated)
  EXPECT_EQ(d.train[1].source, o.train[0] + ":3");
  o.truncation = Truncation::kDrop;
  d = prepare_data(o, tok, 1, 266);
  EXPECT_EQ(d.report.train.kept, 1);
  EXPECT_EQ(d.report.train.dropped, (std::map<std::string, int64_t>{{"too_long", 2}}));
  json j = d.report.to_json();
  EXPECT_EQ(j["train"]["dropped"], 2);
  EXPECT_EQ(j["train"]["dropped_by_reason"]["too_long"], 2);
  // All dropped: a clear error rather than an empty run.
  o.max_seq_len = 5;
  std::string msg = expect_input_error([&] { prepare_data(o, tok, 1, 266); });
  EXPECT_NE(msg.find("no training examples left"), std::string::npos) << msg;
}

TEST(DataLength, TokenIdBeyondModelVocabIsAnError) {
  ByteTokenizer tok;
  DataOptions o;
  o.train = {fixture("messages.jsonl").string()};
  o.chat_template = TemplateKind::kChatml;
  EXPECT_NO_THROW(prepare_data(o, tok, 1, 300));  // a model vocabulary bigger than the tokenizer's is fine
  std::string msg = expect_input_error([&] { prepare_data(o, tok, 1, 100); });
  EXPECT_NE(msg.find(fixture("messages.jsonl").string() + ":1: token id"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(100 rows)"), std::string::npos) << msg;
}

// ---------------------------------------------------------------- eval split, output, report

TEST(DataEvalSplit, SeededRatioNeverOverlapsTrain) {
  test::TempDir dir;
  std::string lines;
  for (int i = 0; i < 20; ++i) lines += R"({"prompt": "q)" + std::to_string(i) + R"(", "response": "a"})" "\n";
  test::write_text(dir.path() / "t.jsonl", lines);
  ByteTokenizer tok;
  DataOptions o;
  o.train = {(dir.path() / "t.jsonl").string()};
  o.chat_template = TemplateKind::kPlain;
  o.eval_ratio = 0.25;
  auto sources = [](const std::vector<TokenizedExample>& ex) {
    std::set<std::string> s;
    for (const auto& e : ex) s.insert(e.source);
    return s;
  };
  PreparedData d = prepare_data(o, tok, 11, 266);
  EXPECT_EQ(d.eval.size(), 5u);
  EXPECT_EQ(d.train.size(), 15u);
  std::set<std::string> train = sources(d.train), eval = sources(d.eval), both;
  std::set_intersection(train.begin(), train.end(), eval.begin(), eval.end(), std::inserter(both, both.end()));
  EXPECT_TRUE(both.empty());
  EXPECT_EQ(train.size() + eval.size(), 20u);
  EXPECT_EQ(d.report.eval_source, "eval_ratio");
  EXPECT_EQ(d.report.eval.kept, 5);
  EXPECT_EQ(sources(prepare_data(o, tok, 11, 266).eval), eval) << "same seed, same split";
  EXPECT_NE(sources(prepare_data(o, tok, 12, 266).eval), eval) << "the seed drives the split";
  // Train keeps file order.
  EXPECT_TRUE(std::is_sorted(d.train.begin(), d.train.end(), [](const auto& a, const auto& b) {
    return std::stoi(a.source.substr(a.source.rfind(':') + 1)) < std::stoi(b.source.substr(b.source.rfind(':') + 1));
  }));

  o.eval = fixture("prompt_response.jsonl").string();  // an eval file wins over eval_ratio
  d = prepare_data(o, tok, 11, 266);
  EXPECT_EQ(d.report.eval_source, "file");
  EXPECT_EQ(d.train.size(), 20u);
  EXPECT_EQ(d.eval.size(), 3u);
  EXPECT_EQ(d.report.files.at(1).split, "eval");
}

TEST(DataOutput, WriteExamplesJsonl) {
  test::TempDir dir;
  std::vector<TokenizedExample> ex{{{1, 2, 3}, {kIgnoreLabel, 2, 3}, "a:1"}, {{4, 5}, {kIgnoreLabel, 5}, "a:2"}};
  write_examples_jsonl(dir.path() / "out.jsonl", ex);
  EXPECT_EQ(test::read_text(dir.path() / "out.jsonl"),
            "{\"input_ids\":[1,2,3],\"labels\":[-100,2,3]}\n{\"input_ids\":[4,5],\"labels\":[-100,5]}\n");
  std::string msg = expect_input_error([&] { write_examples_jsonl(dir.path() / "no" / "dir" / "x.jsonl", ex); });
  EXPECT_NE(msg.find("cannot open"), std::string::npos) << msg;
}

TEST(DataReportJson, RecordsEveryCount) {
  ByteTokenizer tok;
  DataOptions o;
  o.train = {fixture("messages.jsonl").string(), fixture("sharegpt.jsonl").string()};
  o.chat_template = TemplateKind::kChatml;
  o.max_seq_len = 64;
  PreparedData d = prepare_data(o, tok, 1, 266);
  json j = d.report.to_json();
  EXPECT_EQ(j["template"], "chatml");
  EXPECT_EQ(j["files"].size(), 2u);
  EXPECT_EQ(j["files"][1]["format"], "sharegpt");
  EXPECT_EQ(j["train"]["examples"], 4);
  int64_t tokens = 0, targets = 0;
  for (const auto& e : d.train) tokens += e.input_ids.size(), targets += count_targets(e.labels);
  EXPECT_EQ(j["train"]["tokens"], tokens);
  EXPECT_EQ(j["train"]["target_tokens"], targets);
  std::vector<int64_t> lengths;
  for (const auto& e : d.train) lengths.push_back(e.input_ids.size());
  EXPECT_DOUBLE_EQ(j["packing_efficiency"].get<double>(), packing_efficiency(lengths, 64));
  EXPECT_GT(j["packing_efficiency"].get<double>(), 0.5);
  EXPECT_EQ(j["eval_source"], "none");
  for (const char* key : {"invalid_lines", "invalid_by_reason", "max_seq_len", "truncation", "packing", "eval", "warnings"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

TEST(DataReportJson, AutoTemplateErrorNamesTokenizerConfig) {
  ByteTokenizer tok;  // no chat_template
  DataOptions o;
  o.train = {fixture("messages.jsonl").string()};
  std::string msg = expect_input_error([&] { prepare_data(o, tok, 1, 266, "/models/x"); });
  EXPECT_NE(msg.find("/models/x/tokenizer_config.json: no chat_template"), std::string::npos) << msg;
  tok.set_chat_template("{{ messages }}");
  msg = expect_input_error([&] { prepare_data(o, tok, 1, 266, "/models/x"); });
  EXPECT_NE(msg.find("/models/x/tokenizer_config.json: unrecognised chat_template"), std::string::npos) << msg;
}

}  // namespace
}  // namespace sft::data
