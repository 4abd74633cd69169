// tests/test_data_template.cpp: the chat templates (data/template.*): auto recognition, the built-in
// layouts, and rendered text and ids against transformers' apply_chat_template (golden from
// scripts/make_data_golden.py).
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

// ---------------------------------------------------------------- templates: text level

TEST(DataTemplate, AutoRecognisesAndRejects) {
  EXPECT_EQ(resolve_template("auto", std::string("{% for m in messages %}<|im_start|>..."), "x").kind,
            TemplateKind::kChatml);
  ChatTemplate smol = resolve_template(
      "auto",
      std::string("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                  "'<|im_end|>' + '\\n'}}{% endfor %}"),
      "x");
  EXPECT_EQ(smol.kind, TemplateKind::kChatml);
  EXPECT_EQ(smol.default_system, std::optional<std::string>(
                                     "You are a helpful AI assistant named SmolLM, trained by Hugging Face"));
  // HF often saves the template with literal newlines inside the Jinja string literals.
  EXPECT_EQ(resolve_template("auto", std::string("{{ '<|im_start|>system\nYou are Smol.<|im_end|>\n' }}"), "x").default_system,
            std::optional<std::string>("You are Smol."));
  // Forwarding the user's system message is not a default.
  EXPECT_EQ(resolve_template("auto", std::string("{{ '<|im_start|>system\\n' + messages[0].content }}"), "x").default_system,
            std::nullopt);
  EXPECT_EQ(resolve_template("auto", std::string("[INST] <<SYS>>"), "x").kind, TemplateKind::kLlama2);
  std::string msg = expect_input_error([] { resolve_template("auto", std::string("{{ 'User: ' + m }}"), "dir/tokenizer_config.json"); });
  EXPECT_NE(msg.find("dir/tokenizer_config.json: unrecognised chat_template"), std::string::npos) << msg;
  msg = expect_input_error([] { resolve_template("auto", std::nullopt, "m/tokenizer_config.json"); });
  EXPECT_NE(msg.find("m/tokenizer_config.json: no chat_template"), std::string::npos) << msg;
  msg = expect_input_error(
      [] { resolve_template("auto", std::string("<|start_header_id|> Cutting Knowledge Date"), "t.json"); });
  EXPECT_NE(msg.find("Llama 3.1"), std::string::npos) << msg;
}

TEST(DataTemplate, BuiltInLayouts) {
  SpecialTokens sp;
  sp.bos_text = "<s>";
  sp.eos_text = "</s>";
  Conversation c = convo({{Role::kSystem, "S"}, {Role::kUser, " U1 "}, {Role::kAssistant, "A1"}, {Role::kUser, "U2"},
                          {Role::kAssistant, "A2"}});
  EXPECT_EQ(render_conversation(named("llama2"), c, sp, std::nullopt).text,
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST] A2 </s>");
  EXPECT_EQ(render_conversation(named("mistral"), c, sp, std::nullopt).text,
            "<s> [INST] S\n\n U1  [/INST] A1</s> [INST] U2 [/INST] A2</s>");
  EXPECT_EQ(render_conversation(named("alpaca"), c, sp, std::nullopt).text,
            "S\n\n### Instruction:\n U1 \n\n### Response:\nA1</s>\n\n### Instruction:\nU2\n\n### Response:\nA2</s>");
  EXPECT_EQ(render_conversation(named("plain"), c, sp, std::nullopt).text, "S\n\n U1 A1</s>U2A2</s>");
  Conversation single = convo({{Role::kUser, "Q"}, {Role::kAssistant, "A"}});
  EXPECT_EQ(render_conversation(named("alpaca"), single, sp, std::nullopt).text,
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nQ\n\n### Response:\nA</s>");
  EXPECT_EQ(render_conversation(named("chatml"), single, sp, std::string("SYS")).text,
            "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n");
  // The data's own system message wins over data.system_prompt.
  Conversation with_system = convo({{Role::kSystem, "Own"}, {Role::kUser, "Q"}, {Role::kAssistant, "A"}});
  EXPECT_EQ(render_conversation(named("chatml"), with_system, sp, std::string("SYS")).text.substr(0, 25),
            "<|im_start|>system\nOwn<|i");
  // Response ranges hold the assistant text plus the end-of-turn marker, nothing else.
  RenderedConversation r = render_conversation(named("chatml"), single, sp, std::nullopt);
  std::vector<std::string> responses;
  for (const Segment& s : r.segments) {
    if (s.kind == SegmentKind::kResponse) responses.push_back(r.text.substr(s.begin, s.end - s.begin));
  }
  EXPECT_EQ(responses, std::vector<std::string>{"A<|im_end|>"});
  SpecialTokens no_eos;
  std::string msg = expect_input_error([&] { render_conversation(named("plain"), single, no_eos, std::nullopt); });
  EXPECT_NE(msg.find("needs the tokenizer's EOS"), std::string::npos) << msg;
}

fs::path smollm2_dir() { return test::source_dir() / ".cache" / "models" / "smollm2-135m-instruct"; }

// Golden: what transformers renders and tokenizes (scripts/make_data_golden.py).
struct GoldenSet {
  std::string name;
  fs::path tokenizer_dir;
  std::string template_name;  // "auto" or an explicit name (mistral-bpe has no chat_template)
};

std::vector<GoldenSet> golden_sets() {
  fs::path a = test::assets_dir() / "tokenizers";
  std::vector<GoldenSet> sets{{"qwen3", a / "qwen3-bpe", "auto"},
                              {"llama3", a / "llama3-bpe", "auto"},
                              {"mistral", a / "mistral-bpe", "mistral"},
                              {"llama2", a / "mistral-bpe", "llama2"}};
  if (fs::exists(smollm2_dir() / "tokenizer_config.json")) sets.push_back({"smollm2", smollm2_dir(), "auto"});
  return sets;
}

json load_golden(const std::string& name) {
  fs::path p = test::golden_dir() / "data" / ("chat_" + name + ".json");
  if (!fs::exists(p)) throw std::runtime_error(p.string() + " missing: run scripts/make_data_golden.py");
  return json::parse(test::read_text(p));
}

Conversation from_golden(const json& messages) {
  Conversation c;
  c.source = "golden";
  for (const auto& m : messages) {
    const std::string role = m["role"];
    c.messages.push_back({role == "system" ? Role::kSystem : role == "user" ? Role::kUser : Role::kAssistant,
                          m["content"].get<std::string>()});
  }
  return c;
}

// The strings each template must supervise, per case name: for each assistant turn, what transformers
// renders after that turn's generation prompt, through the end-of-turn token (scripts/make_data_golden.py).
std::map<std::string, std::vector<std::string>> load_golden_targets(const std::string& name) {
  fs::path p = test::golden_dir() / "data" / ("chat_" + name + ".targets.json");
  if (!fs::exists(p)) throw std::runtime_error(p.string() + " missing: run scripts/make_data_golden.py");
  const json golden = json::parse(test::read_text(p));
  std::map<std::string, std::vector<std::string>> targets;
  for (const auto& c : golden.at("cases")) {
    targets[c["name"].get<std::string>()] = c["targets"].get<std::vector<std::string>>();
  }
  return targets;
}

SpecialTokens specials_from_config(const fs::path& dir, std::optional<std::string>* jinja) {
  json cfg = json::parse(test::read_text(dir / "tokenizer_config.json"));
  SpecialTokens sp;
  auto text = [&](const char* key) -> std::string {
    if (!cfg.contains(key) || cfg[key].is_null()) return "";
    return cfg[key].is_string() ? cfg[key].get<std::string>() : cfg[key]["content"].get<std::string>();
  };
  sp.bos_text = text("bos_token");
  sp.eos_text = text("eos_token");
  if (cfg.contains("chat_template") && cfg["chat_template"].is_string()) *jinja = cfg["chat_template"].get<std::string>();
  return sp;
}

TEST(DataTemplateGolden, RenderedTextEqualsTransformers) {
  for (const GoldenSet& set : golden_sets()) {
    json golden = load_golden(set.name);
    std::optional<std::string> jinja;
    SpecialTokens sp = specials_from_config(set.tokenizer_dir, &jinja);
    ChatTemplate t = resolve_template(set.template_name, jinja, (set.tokenizer_dir / "tokenizer_config.json").string());
    ASSERT_GE(golden["cases"].size(), 6u);
    for (const auto& c : golden["cases"]) {
      RenderedConversation r = render_conversation(t, from_golden(c["messages"]), sp, std::nullopt);
      EXPECT_EQ(r.text, c["text"].get<std::string>()) << set.name << "/" << c["name"].get<std::string>();
    }
  }
}

void check_ids_against_golden(const std::string& name, const fs::path& dir, const std::string& template_name) {
  json golden = load_golden(name);
  const auto targets = load_golden_targets(name);
  std::unique_ptr<Tokenizer> tok = load_tokenizer(dir);
  ChatTemplate t = resolve_template(template_name, tok->chat_template(), (dir / "tokenizer_config.json").string());
  for (const auto& c : golden["cases"]) {
    const std::string case_name = name + "/" + c["name"].get<std::string>();
    TokenizedExample e = tokenize_conversation(from_golden(c["messages"]), t, *tok, MaskOptions{});
    EXPECT_EQ(e.input_ids, c["ids"].get<std::vector<int32_t>>()) << case_name;
    // The mask audit: decoding exactly the supervised runs gives the assistant texts + end-of-turn.
    // One tokenizer effect is allowed: when the response starts with whitespace, BPE may merge it with
    // the header's trailing whitespace into one token ("\n" + "\n..." -> "\n\n"); that token holds
    // response bytes, so it is supervised and its prompt-side whitespace decodes with it.
    ASSERT_TRUE(targets.count(c["name"].get<std::string>())) << case_name << ": no supervised targets in the golden";
    std::vector<std::string> got = supervised_texts(e, *tok), want = targets.at(c["name"].get<std::string>());
    ASSERT_EQ(got.size(), want.size()) << case_name;
    for (size_t k = 0; k < got.size(); ++k) {
      const bool exact = got[k] == want[k];
      const bool merged_ws = got[k].size() > want[k].size() &&
                             got[k].compare(got[k].size() - want[k].size(), want[k].size(), want[k]) == 0 &&
                             got[k].find_first_not_of(" \t\n") >= got[k].size() - want[k].size() &&
                             want[k].find_first_of(" \t\n") == 0;
      EXPECT_TRUE(exact || merged_ws) << case_name << ": supervised \"" << got[k] << "\" want \"" << want[k] << "\"";
    }
    // Never a doubled BOS at the start (SmolLM2's BOS is <|im_start|>, so it legitimately recurs later).
    const auto& bos = tok->special_tokens().bos;
    if (bos && e.input_ids.size() > 1) {
      EXPECT_FALSE(e.input_ids[0] == *bos && e.input_ids[1] == *bos) << case_name;
    }
  }
}

TEST(DataTemplateGolden, Qwen3IdsEqualTransformers) {
  check_ids_against_golden("qwen3", test::assets_dir() / "tokenizers" / "qwen3-bpe", "auto");
}
TEST(DataTemplateGolden, Llama3IdsEqualTransformers) {
  check_ids_against_golden("llama3", test::assets_dir() / "tokenizers" / "llama3-bpe", "auto");
}
// mistral-bpe declares tokenizer_class LlamaTokenizer: transformers 5 replaces tokenizer.json's
// Prepend("▁") normalizer with Metaspace(prepend_scheme=always, split=False), so "<s> [INST]" has no
// extra "▁" (28705) after <s>. load_tokenizer rebuilds it the same way (data/tokenizer.cpp).
TEST(DataTemplateGolden, MistralIdsEqualTransformers) {
  json golden = load_golden("mistral");
  std::vector<std::string> cases;
  for (const auto& c : golden["cases"]) cases.push_back(c["name"]);
  for (const char* needed : {"single_turn", "multi_turn", "with_system", "multi_turn_system"}) {
    EXPECT_NE(std::find(cases.begin(), cases.end(), needed), cases.end()) << needed;
  }
  check_ids_against_golden("mistral", test::assets_dir() / "tokenizers" / "mistral-bpe", "mistral");
}
TEST(DataTemplateGolden, Llama2IdsEqualTransformers) {
  check_ids_against_golden("llama2", test::assets_dir() / "tokenizers" / "mistral-bpe", "llama2");
}
TEST(DataTemplateGolden, SmolLM2IdsEqualTransformers) {
  ASSERT_TRUE(fs::exists(smollm2_dir() / "tokenizer_config.json"))
      << smollm2_dir() << " missing: run scripts/get_model.sh (scripts/test.sh does)";
  check_ids_against_golden("smollm2", smollm2_dir(), "auto");
}

}  // namespace
}  // namespace sft::data
