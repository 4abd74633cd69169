// tests/test_data.cpp: the SFT data pipeline: JSONL readers and bad input, chat templates against
// transformers' apply_chat_template (golden from scripts/make_data_golden.py), label masks proven by
// decoding the supervised spans, length policy, packing, the resumable sharded sampler, the eval split
// and the data report.
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
#include "tests/test_util.h"

namespace sft::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixture(const std::string& name) { return test::source_dir() / "tests" / "data" / name; }

// A byte-level tokenizer with five special tokens, so masks and lengths can be checked by hand:
// ids 0 <pad>, 1 <s>, 2 </s>, 3 <|im_start|>, 4 <|im_end|>; byte b -> 10 + b.
class ByteTokenizer : public Tokenizer {
 public:
  explicit ByteTokenizer(bool add_bos = true, std::optional<int32_t> pad = 0) {
    specials_.bos = 1;
    specials_.eos = 2;
    specials_.pad = pad;
    specials_.bos_text = "<s>";
    specials_.eos_text = "</s>";
    specials_.pad_text = pad ? kSpecials[*pad] : "";
    specials_.add_bos = add_bos;
  }
  void set_chat_template(std::optional<std::string> t) { chat_template_ = std::move(t); }

  Encoding encode(std::string_view text) const override {
    Encoding e;
    size_t i = 0;
    while (i < text.size()) {
      bool matched = false;
      for (int32_t id = 0; id < 5; ++id) {
        std::string_view s = kSpecials[id];
        if (text.substr(i, s.size()) == s) {
          e.ids.push_back(id);
          e.offsets.push_back({i, i + s.size()});
          i += s.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
      e.ids.push_back(10 + static_cast<unsigned char>(text[i]));
      e.offsets.push_back({i, i + 1});
      ++i;
    }
    return e;
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 5) {
        if (!skip_special) out += kSpecials[id];
      } else {
        out += static_cast<char>(id - 10);
      }
    }
    return out;
  }
  int64_t vocab_size() const override { return 266; }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    for (int32_t id = 0; id < 5; ++id) {
      if (token == kSpecials[id]) return id;
    }
    if (token.size() == 1) return 10 + static_cast<unsigned char>(token[0]);
    return std::nullopt;
  }
  std::string id_to_token(int32_t id) const override { return decode({id}); }
  bool is_special(int32_t id) const override { return id < 5; }

 private:
  static constexpr const char* kSpecials[5] = {"<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"};
};

Conversation convo(std::vector<std::pair<Role, std::string>> turns, std::string source = "mem:1") {
  Conversation c;
  for (auto& [role, text] : turns) c.messages.push_back({role, text});
  c.source = std::move(source);
  return c;
}

ChatTemplate named(const std::string& name) { return resolve_template(name, std::nullopt, "unused"); }

std::string expect_input_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected sft::InputError";
  return "";
}

// ---------------------------------------------------------------- formats

TEST(DataFormats, DetectsAndReadsPromptResponse) {
  FileReadResult r = read_data_file(fixture("prompt_response.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kPromptResponse);
  EXPECT_EQ(r.lines, 3);  // the blank line is ignored
  ASSERT_EQ(r.conversations.size(), 3u);
  EXPECT_EQ(r.conversations[0].messages[0].content, "What is the capital of France?");
  EXPECT_EQ(r.conversations[0].messages[1].role, Role::kAssistant);
  EXPECT_EQ(r.conversations[0].messages[1].content, "Paris.");
  EXPECT_EQ(r.conversations[1].messages[1].content, "4");  // "completion" stands for "response"
  EXPECT_EQ(r.conversations[1].source, fixture("prompt_response.jsonl").string() + ":3");
  ASSERT_EQ(r.conversations[2].messages.size(), 3u);
  EXPECT_EQ(r.conversations[2].messages[0].role, Role::kSystem);
  EXPECT_EQ(r.conversations[2].messages[0].content, "Answer briefly.");
}

TEST(DataFormats, DetectsAndReadsAlpaca) {
  FileReadResult r = read_data_file(fixture("alpaca.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kAlpaca);
  ASSERT_EQ(r.conversations.size(), 3u);
  EXPECT_EQ(r.conversations[0].messages[0].content, "Translate to French.\nGood morning");
  EXPECT_EQ(r.conversations[0].messages[1].content, "Bonjour");
  ASSERT_EQ(r.conversations[1].messages.size(), 3u);  // system + user + assistant; empty input adds nothing
  EXPECT_EQ(r.conversations[1].messages[0].content, "Be friendly.");
  EXPECT_EQ(r.conversations[1].messages[1].content, "Say hi.");
  EXPECT_EQ(r.conversations[2].messages[0].content, "Count to two.");
}

TEST(DataFormats, DetectsAndReadsMessages) {
  FileReadResult r = read_data_file(fixture("messages.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kMessages);
  ASSERT_EQ(r.conversations.size(), 2u);
  const auto& m = r.conversations[1].messages;
  ASSERT_EQ(m.size(), 5u);
  EXPECT_EQ(m[0].role, Role::kSystem);
  EXPECT_EQ(m[3].content, "Q2");
  EXPECT_EQ(m[4].role, Role::kAssistant);
}

TEST(DataFormats, DetectsAndReadsShareGpt) {
  FileReadResult r = read_data_file(fixture("sharegpt.jsonl"), Format::kAuto, false);
  EXPECT_EQ(r.format, Format::kShareGpt);
  ASSERT_EQ(r.conversations.size(), 2u);
  EXPECT_EQ(r.conversations[0].messages[0].role, Role::kUser);
  EXPECT_EQ(r.conversations[0].messages[1].content, "Lima.");
  EXPECT_EQ(r.conversations[1].messages[0].role, Role::kSystem);
}

TEST(DataFormats, ExplicitFormatOverridesDetection) {
  // Reading messages data as alpaca: every line lacks "instruction".
  std::string msg = expect_input_error([] { read_data_file(fixture("messages.jsonl"), Format::kAlpaca, false); });
  EXPECT_NE(msg.find("messages.jsonl:1: missing field \"instruction\""), std::string::npos) << msg;
  EXPECT_EQ(parse_format("sharegpt"), Format::kShareGpt);
  msg = expect_input_error([] { parse_format("csv"); });
  EXPECT_NE(msg.find("data.format"), std::string::npos) << msg;
}

TEST(DataFormats, DetectionIsPerFile) {
  test::TempDir dir;
  test::write_text(dir.path() / "a.jsonl", R"({"instruction": "i", "output": "o"})" "\n");
  test::write_text(dir.path() / "b.jsonl", R"({"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]})" "\n");
  ByteTokenizer tok;
  DataOptions o;
  o.train = {(dir.path() / "a.jsonl").string(), (dir.path() / "b.jsonl").string()};
  o.chat_template = "plain";
  PreparedData d = prepare_data(o, tok, 1, 266);
  ASSERT_EQ(d.report.files.size(), 2u);
  EXPECT_EQ(d.report.files[0].format, "alpaca");
  EXPECT_EQ(d.report.files[1].format, "sharegpt");
  EXPECT_EQ(d.train.size(), 2u);
}

// ---------------------------------------------------------------- bad input

struct BadCase {
  const char* file;
  const char* expected;  // substring of the message after "file:line: " (or "file: " for file errors)
  int line;              // 0: a file-level error
  const char* reason;    // the skip_invalid reason, "" for file-level errors
};

class DataBadInput : public ::testing::TestWithParam<BadCase> {};

TEST_P(DataBadInput, NamesFileAndLine) {
  const BadCase& c = GetParam();
  const std::string path = fixture(c.file).string();
  std::string msg = expect_input_error([&] { read_data_file(path, Format::kAuto, false); });
  const std::string where = c.line ? path + ":" + std::to_string(c.line) + ": " : path + ": ";
  EXPECT_EQ(msg.rfind(where, 0), 0u) << msg;
  EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
  if (*c.reason) {  // the same line is skipped and counted by reason with skip_invalid
    FileReadResult r = read_data_file(path, Format::kAuto, true);
    ASSERT_EQ(r.invalid.size(), 1u);
    EXPECT_EQ(r.invalid[0].reason, c.reason);
    EXPECT_EQ(r.invalid[0].source, path + ":" + std::to_string(c.line));
    EXPECT_EQ(r.conversations.size(), 1u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DataBadInput,
    ::testing::Values(BadCase{"bad_json.jsonl", "malformed JSON", 2, invalid_reason::kMalformedJson},
                      BadCase{"bad_missing_field.jsonl", "missing field \"response\"", 2, invalid_reason::kMissingField},
                      BadCase{"bad_wrong_type.jsonl", "field \"messages[1].content\" must be a string (got number)", 2,
                              invalid_reason::kWrongType},
                      BadCase{"bad_unknown_role.jsonl", "unknown role \"robot\"", 2, invalid_reason::kUnknownRole},
                      BadCase{"bad_alternation.jsonl", "turn 1 is \"user\" but \"assistant\" was expected", 2,
                              invalid_reason::kBadTurnOrder},
                      BadCase{"bad_no_assistant.jsonl", "ends with a \"user\" turn", 2, invalid_reason::kNoAssistantTurn},
                      BadCase{"bad_utf8.jsonl", "not valid UTF-8 (byte 16", 2, invalid_reason::kNotUtf8},
                      BadCase{"empty.jsonl", "data file is empty", 0, ""},
                      BadCase{"no_such_file.jsonl", "cannot open", 0, ""}),
    [](const ::testing::TestParamInfo<BadCase>& info) {  // the fixture name: stable, readable test names
      std::string name = info.param.file;
      name = name.substr(0, name.find('.'));
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(DataBadInputExtra, UndetectableFormatAndNonObject) {
  test::TempDir dir;
  test::write_text(dir.path() / "x.jsonl", "\n{\"text\": \"hello\"}\n");
  std::string msg = expect_input_error([&] { read_data_file(dir.path() / "x.jsonl", Format::kAuto, true); });
  EXPECT_NE(msg.find("x.jsonl:2: cannot detect the data format from keys {text}"), std::string::npos) << msg;
  test::write_text(dir.path() / "y.jsonl", "[1, 2]\n");
  msg = expect_input_error([&] { read_data_file(dir.path() / "y.jsonl", Format::kAuto, false); });
  EXPECT_NE(msg.find("y.jsonl:1: a line must be a JSON object (got array)"), std::string::npos) << msg;
  // Whitespace-only files are empty too.
  test::write_text(dir.path() / "z.jsonl", "\n  \n");
  msg = expect_input_error([&] { read_data_file(dir.path() / "z.jsonl", Format::kAuto, true); });
  EXPECT_NE(msg.find("z.jsonl: data file is empty"), std::string::npos) << msg;
}

TEST(DataBadInputExtra, Utf8Validator) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\xa4\x94"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xe9"), 2u);               // latin-1 byte
  EXPECT_EQ(find_invalid_utf8("\xc0\xaf"), 0u);             // overlong '/'
  EXPECT_EQ(find_invalid_utf8("x\xed\xa0\x80"), 1u);        // UTF-16 surrogate
  EXPECT_EQ(find_invalid_utf8("\xe6\x97"), 0u);             // truncated sequence
}

TEST(DataSkipInvalid, CountsByReasonAndEnforcesMaxInvalid) {
  ByteTokenizer tok;
  DataOptions o;
  o.train = {fixture("mixed_invalid.jsonl").string()};
  o.chat_template = "chatml";
  // Default: the first bad line is an error naming it.
  std::string msg = expect_input_error([&] { prepare_data(o, tok, 1, 266); });
  EXPECT_NE(msg.find("mixed_invalid.jsonl:2: malformed JSON"), std::string::npos) << msg;

  o.skip_invalid = true;
  o.max_invalid = 5;
  PreparedData d = prepare_data(o, tok, 1, 266);
  EXPECT_EQ(d.train.size(), 3u);
  EXPECT_EQ(d.report.invalid_total, 5);
  std::map<std::string, int64_t> expected{{"malformed_json", 1}, {"wrong_type", 1}, {"unknown_role", 1},
                                          {"no_assistant_turn", 1}, {"missing_field", 1}};
  EXPECT_EQ(d.report.invalid, expected);
  EXPECT_EQ(d.report.files[0].invalid, expected);
  EXPECT_EQ(d.report.files[0].lines, 8);
  EXPECT_EQ(d.report.files[0].valid, 3);
  json j = d.report.to_json();
  EXPECT_EQ(j["invalid_lines"], 5);
  EXPECT_EQ(j["invalid_by_reason"]["unknown_role"], 1);
  EXPECT_EQ(j["train"]["kept"], 3);

  o.max_invalid = 4;
  msg = expect_input_error([&] { prepare_data(o, tok, 1, 266); });
  EXPECT_NE(msg.find("data.max_invalid=4 exceeded: 5 invalid lines"), std::string::npos) << msg;
  EXPECT_NE(msg.find("first: " + fixture("mixed_invalid.jsonl").string() + ":2"), std::string::npos) << msg;
}

TEST(DataOptionsCheck, BadKeysAreNamed) {
  ByteTokenizer tok;
  DataOptions o;
  o.train = {fixture("messages.jsonl").string()};
  o.chat_template = "chatml";
  auto with = [&](auto change) {
    DataOptions copy = o;
    change(copy);
    return expect_input_error([&] { prepare_data(copy, tok, 1, 266); });
  };
  EXPECT_NE(with([](DataOptions& c) { c.truncation = "left"; }).find("data.truncation"), std::string::npos);
  EXPECT_NE(with([](DataOptions& c) { c.max_seq_len = 1; }).find("data.max_seq_len"), std::string::npos);
  EXPECT_NE(with([](DataOptions& c) { c.eval_ratio = 1.0; }).find("data.eval_ratio"), std::string::npos);
  EXPECT_NE(with([](DataOptions& c) { c.chat_template = "vicuna"; }).find("data.template: unknown template"),
            std::string::npos);
  EXPECT_NE(with([](DataOptions& c) { c.train.clear(); }).find("data.train"), std::string::npos);
}

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
    if (bos && e.input_ids.size() > 1) EXPECT_FALSE(e.input_ids[0] == *bos && e.input_ids[1] == *bos) << case_name;
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
  EXPECT_EQ(apply_length_policy(e, 8, "right", &truncated), "");
  EXPECT_TRUE(truncated);
  EXPECT_EQ(e.input_ids.size(), 8u);
  EXPECT_EQ(count_targets(e.labels), 2);  // "Ye" survive
  EXPECT_EQ(tok.decode(e.input_ids), "<s>What?Ye");

  TokenizedExample f = plain_example(tok, "What?", "Yes");
  EXPECT_EQ(apply_length_policy(f, 6, "right", &truncated), drop_reason::kNoTargetAfterTruncation);
  TokenizedExample g = plain_example(tok, "What?", "Yes");
  EXPECT_EQ(apply_length_policy(g, 9, "drop", &truncated), drop_reason::kTooLong);
  TokenizedExample h = plain_example(tok, "What?", "Yes");
  EXPECT_EQ(apply_length_policy(h, 10, "drop", &truncated), "");  // exactly max_seq_len fits
  EXPECT_FALSE(truncated);
  TokenizedExample none{{1, 20, 21}, {kIgnoreLabel, kIgnoreLabel, kIgnoreLabel}, "x"};
  EXPECT_EQ(apply_length_policy(none, 10, "right", &truncated), drop_reason::kNoTarget);
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
  o.chat_template = "plain";
  o.max_seq_len = 12;
  PreparedData d = prepare_data(o, tok, 1, 266);
  EXPECT_EQ(d.report.train.examples, 3);
  EXPECT_EQ(d.report.train.kept, 2);
  EXPECT_EQ(d.report.train.truncated, 1);
  EXPECT_EQ(d.report.train.dropped, (std::map<std::string, int64_t>{{"no_target_after_truncation", 1}}));
  EXPECT_EQ(d.report.train.tokens, 10 + 12);
  EXPECT_EQ(d.report.train.target_tokens, 4 + 8);  // "Yes</s>" + "A longer" (truncated)
  EXPECT_EQ(d.train[1].source, o.train[0] + ":3");
  o.truncation = "drop";
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
  o.chat_template = "chatml";
  EXPECT_NO_THROW(prepare_data(o, tok, 1, 300));  // a model vocabulary bigger than the tokenizer's is fine
  std::string msg = expect_input_error([&] { prepare_data(o, tok, 1, 100); });
  EXPECT_NE(msg.find(fixture("messages.jsonl").string() + ":1: token id"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(100 rows)"), std::string::npos) << msg;
}

// ---------------------------------------------------------------- packing and batches

TEST(DataPacking, BestFitDecreasing) {
  std::vector<int64_t> lengths{6, 5, 4, 3, 2};
  auto rows = pack_rows(lengths, {0, 1, 2, 3, 4}, 10);
  EXPECT_EQ(rows, (std::vector<std::vector<int64_t>>{{0, 2}, {1, 3, 4}}));
  EXPECT_DOUBLE_EQ(packing_efficiency(lengths, 10), 1.0);
  EXPECT_DOUBLE_EQ(packing_efficiency({7, 7, 7}, 10), 0.7);
  // Random instance: capacity respected, every example exactly once, near-optimal row count.
  SplitMix64 rng(7);
  std::vector<int64_t> many(500);
  for (auto& l : many) l = 1 + static_cast<int64_t>(rng.below(300));
  std::vector<int64_t> order(many.size());
  std::iota(order.begin(), order.end(), 0);
  auto packed = pack_rows(many, order, 512);
  std::vector<int> seen(many.size(), 0);
  int64_t total = 0;
  for (const auto& row : packed) {
    int64_t used = 0;
    for (int64_t i : row) used += many[i], ++seen[i];
    EXPECT_LE(used, 512);
    total += used;
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
  const int64_t lower_bound = (total + 511) / 512;
  EXPECT_LE(static_cast<int64_t>(packed.size()), lower_bound + lower_bound / 10 + 1);
  EXPECT_THROW(pack_rows({11}, {0}, 10), std::invalid_argument);
}

std::vector<int64_t> vec64(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

TEST(DataPacking, PackedBatchBoundariesAndPositions) {
  TokenizedExample a{{11, 12, 13}, {kIgnoreLabel, 12, 13}, "a"};
  TokenizedExample b{{21, 22}, {kIgnoreLabel, 22}, "b"};
  TokenizedExample c{{31, 32, 33, 34}, {kIgnoreLabel, kIgnoreLabel, 33, 34}, "c"};
  Batch packed = build_batch({{&a, &b}, {&c}}, /*pad_rows=*/false, 0);
  EXPECT_EQ(vec64(packed.input_ids), (std::vector<int64_t>{11, 12, 13, 21, 22, 31, 32, 33, 34}));
  EXPECT_EQ(vec64(packed.position_ids), (std::vector<int64_t>{0, 1, 2, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(packed.cu_seqlens.scalar_type(), at::kInt);
  EXPECT_EQ(vec64(packed.cu_seqlens_host), (std::vector<int64_t>{0, 3, 5, 9}));
  // No target crosses a document boundary: 13 does not predict 21, 22 does not predict 31.
  EXPECT_EQ(vec64(packed.target_positions), (std::vector<int64_t>{0, 1, 3, 6, 7}));
  EXPECT_EQ(vec64(packed.target_ids), (std::vector<int64_t>{12, 13, 22, 33, 34}));
  EXPECT_EQ(packed.max_seqlen, 4);
  EXPECT_EQ(packed.num_tokens, 9);
  EXPECT_EQ(packed.num_real_tokens, 9);
  EXPECT_EQ(packed.num_targets, 5);
  EXPECT_EQ(packed.num_rows, 2);
  EXPECT_EQ(packed.num_examples, 3);

  // Padded rows: each row padded to the longest (4); padding is its own segment with no targets.
  Batch padded = build_batch({{&a}, {&b}, {&c}}, /*pad_rows=*/true, 7);
  EXPECT_EQ(vec64(padded.input_ids), (std::vector<int64_t>{11, 12, 13, 7, 21, 22, 7, 7, 31, 32, 33, 34}));
  EXPECT_EQ(vec64(padded.position_ids), (std::vector<int64_t>{0, 1, 2, 0, 0, 1, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(vec64(padded.cu_seqlens_host), (std::vector<int64_t>{0, 3, 4, 6, 8, 12}));
  EXPECT_EQ(vec64(padded.target_positions), (std::vector<int64_t>{0, 1, 4, 9, 10}));
  EXPECT_EQ(padded.num_tokens, 12);
  EXPECT_EQ(padded.num_real_tokens, 9);
  EXPECT_EQ(padded.num_examples, 3);

  Batch empty = build_batch({}, false, 7);  // a rank without data: one pad token, no targets
  EXPECT_EQ(empty.num_tokens, 1);
  EXPECT_EQ(empty.num_targets, 0);
  EXPECT_EQ(empty.num_examples, 0);
  EXPECT_EQ(vec64(empty.cu_seqlens_host), (std::vector<int64_t>{0, 1}));
}

TEST(DataPacking, EvalBatchesFixedOrderWithExampleIndex) {
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < 5; ++i) {
    ex.push_back({{1000 + i, 5, 6}, {kIgnoreLabel, i % 2 ? kIgnoreLabel : 5, 6}, "e" + std::to_string(i)});
  }
  auto batches = make_eval_batches(ex, 2, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].example_index, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(batches[2].example_index, (std::vector<int64_t>{4}));
  EXPECT_EQ(batches[0].target_offsets, (std::vector<int64_t>{0, 2, 3}));
  EXPECT_EQ(vec64(batches[1].batch.input_ids), (std::vector<int64_t>{1002, 5, 6, 1003, 5, 6}));
  EXPECT_EQ(batches[0].batch.num_targets, 3);
}

// ---------------------------------------------------------------- sampler

std::vector<TokenizedExample> numbered_examples(int n, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<TokenizedExample> ex;
  for (int i = 0; i < n; ++i) {
    int len = 2 + static_cast<int>(rng.below(30));
    TokenizedExample e;
    e.input_ids.push_back(1000 + i);  // marks the example: the first token of its segment
    e.labels.push_back(kIgnoreLabel);
    for (int k = 1; k < len; ++k) {
      e.input_ids.push_back(10 + k);
      e.labels.push_back(10 + k);
    }
    e.source = "n:" + std::to_string(i);
    ex.push_back(std::move(e));
  }
  return ex;
}

// Example numbers in a batch, segment by segment (padding segments start with pad id 0).
std::vector<int64_t> examples_in(const Batch& b) {
  std::vector<int64_t> ids = vec64(b.input_ids), cu = vec64(b.cu_seqlens_host), out;
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    if (ids[cu[s]] >= 1000) out.push_back(ids[cu[s]] - 1000);
  }
  return out;
}

LoaderOptions loader_options(bool packing, int64_t rank = 0, int64_t world = 1) {
  LoaderOptions o;
  o.micro_batch_size = 3;
  o.max_seq_len = 40;
  o.packing = packing;
  o.seed = 1234;
  o.rank = rank;
  o.world_size = world;
  o.pad_id = 0;
  return o;
}

TEST(DataSampler, DeterministicShufflesPerEpochAndCoversEveryExample) {
  for (bool packing : {true, false}) {
    auto ex = numbered_examples(37, 5);
    BatchLoader a(ex, loader_options(packing)), b(ex, loader_options(packing));
    const int64_t per_epoch = a.micro_batches_per_epoch();
    std::vector<int64_t> epoch0, epoch1;
    for (int64_t i = 0; i < 2 * per_epoch; ++i) {
      Batch x = a.next(), y = b.next();
      EXPECT_TRUE(x.input_ids.equal(y.input_ids));
      EXPECT_TRUE(x.cu_seqlens_host.equal(y.cu_seqlens_host));
      for (int64_t e : examples_in(x)) (i < per_epoch ? epoch0 : epoch1).push_back(e);
      if (packing) EXPECT_LE(x.num_tokens, 3 * 40);
    }
    EXPECT_EQ(a.epoch(), 1);
    EXPECT_NE(epoch0, epoch1) << "each epoch is reshuffled";
    for (auto* seen : {&epoch0, &epoch1}) {
      std::vector<int64_t> sorted = *seen;
      std::sort(sorted.begin(), sorted.end());
      std::vector<int64_t> all(37);
      std::iota(all.begin(), all.end(), 0);
      EXPECT_EQ(sorted, all);
    }
    LoaderOptions other = loader_options(packing);
    other.seed = 99;
    BatchLoader c(ex, other);
    std::vector<int64_t> other_epoch0;
    for (int64_t i = 0; i < c.micro_batches_per_epoch(); ++i) {
      for (int64_t e : examples_in(c.next())) other_epoch0.push_back(e);
    }
    EXPECT_NE(epoch0, other_epoch0) << "the seed changes the order";
  }
}

TEST(DataSampler, RestoreReproducesRemainingBatches) {
  auto ex = numbered_examples(41, 8);
  for (bool packing : {true, false}) {
    BatchLoader probe(ex, loader_options(packing));
    const int64_t per_epoch = probe.micro_batches_per_epoch();
    // Mid-epoch, exactly at the epoch boundary, and inside the second epoch.
    for (int64_t consumed : {per_epoch / 2, per_epoch, per_epoch + 1}) {
      BatchLoader a(ex, loader_options(packing));
      for (int64_t i = 0; i < consumed; ++i) a.next();
      SamplerState saved = SamplerState::from_json(json::parse(a.state().to_json().dump()));
      EXPECT_EQ(saved, a.state());
      std::vector<Batch> rest;
      for (int64_t i = 0; i < per_epoch + 2; ++i) rest.push_back(a.next());

      LoaderOptions fresh = loader_options(packing);
      fresh.seed = 777;  // the state's seed wins
      BatchLoader b(ex, fresh);
      b.restore(saved);
      EXPECT_EQ(b.state(), saved);
      for (const Batch& want : rest) {
        Batch got = b.next();
        EXPECT_TRUE(got.input_ids.equal(want.input_ids)) << "consumed=" << consumed;
        EXPECT_TRUE(got.target_positions.equal(want.target_positions));
      }
      EXPECT_EQ(b.epoch(), a.epoch());
    }
  }
}

TEST(DataSampler, StateJsonErrorsNameTheKey) {
  std::string msg = expect_input_error([] { SamplerState::from_json(json{{"seed", 1}, {"epoch", 0}}, "ckpt/trainer_state.json"); });
  EXPECT_NE(msg.find("ckpt/trainer_state.json: missing key \"position\""), std::string::npos) << msg;
  msg = expect_input_error([] { SamplerState::from_json(json{{"seed", 1}, {"epoch", "x"}, {"position", 0}}); });
  EXPECT_NE(msg.find("\"epoch\" must be an integer"), std::string::npos) << msg;
  auto ex = numbered_examples(10, 1);
  BatchLoader l(ex, loader_options(true));
  msg = expect_input_error([&] { l.restore({1234, 0, l.micro_batches_per_epoch() + 1}); });
  EXPECT_NE(msg.find("past the"), std::string::npos) << msg;
  msg = expect_input_error([] { BatchLoader empty({}, loader_options(true)); });
  EXPECT_NE(msg.find("no training examples"), std::string::npos) << msg;
}

TEST(DataSampler, RanksSeeDisjointShardsThatCoverTheEpoch) {
  auto ex = numbered_examples(29, 3);
  for (bool packing : {true, false}) {
    for (int64_t world : {1, 2, 3}) {
      std::vector<int> seen(ex.size(), 0);
      int64_t per_epoch = -1;
      for (int64_t rank = 0; rank < world; ++rank) {
        BatchLoader l(ex, loader_options(packing, rank, world));
        if (per_epoch < 0) per_epoch = l.micro_batches_per_epoch();
        EXPECT_EQ(l.micro_batches_per_epoch(), per_epoch) << "ranks must step in lockstep";
        for (int64_t i = 0; i < per_epoch; ++i) {
          for (int64_t e : examples_in(l.next())) ++seen[e];
        }
        EXPECT_EQ(l.epoch(), 0);
      }
      for (size_t i = 0; i < seen.size(); ++i) {
        EXPECT_EQ(seen[i], 1) << "example " << i << " world " << world << " packing " << packing;
      }
    }
  }
}

TEST(DataSampler, ShuffleIsOurOwn) {
  // Pinned values: SplitMix64 and Fisher-Yates must not change (resume across builds depends on it).
  SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xE220A8397B1DCDAFULL);
  EXPECT_EQ(permutation(6, 42), permutation(6, 42));
  std::vector<int64_t> p = permutation(1000, 3);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_NE(p, sorted);
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
  o.chat_template = "plain";
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
  o.chat_template = "chatml";
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
