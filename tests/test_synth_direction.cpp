// tests/test_synth_direction.cpp: data.direction: reverse (the backward model of instruction
// backtranslation): each response becomes the prompt and the prompt the supervised target, for every
// format, through the real data pipeline and a real tokenizer; bad values are refused.
#include <gtest/gtest.h>

#include "common/errors.h"
#include "data/pipeline.h"
#include "tests/test_util.h"
#include "trainer/config.h"

namespace sft::data {
namespace {

TEST(SynthDirection, ReverseSwapsEachUserTurnWithItsAnswer) {
  Conversation c;
  c.messages = {{Role::kSystem, "sys"}, {Role::kUser, "q1"}, {Role::kAssistant, "a1"}, {Role::kUser, "q2"},
                {Role::kAssistant, "a2"}};
  reverse_direction(c);
  EXPECT_EQ(c.messages[0].content, "sys");
  EXPECT_EQ(c.messages[1].role, Role::kUser);
  EXPECT_EQ(c.messages[1].content, "a1");
  EXPECT_EQ(c.messages[2].content, "q1");
  EXPECT_EQ(c.messages[3].content, "a2");
  EXPECT_EQ(c.messages[4].content, "q2");
}

TEST(SynthDirection, ReverseTrainsOnThePrompt) {
  test::TempDir dir;
  test::write_text(dir.path() / "pr.jsonl", R"({"prompt": "What is the capital of Peru?", "response": "Lima is."})" "\n");
  test::write_text(dir.path() / "alpaca.jsonl", R"({"instruction": "Name a red fruit.", "output": "A cherry."})" "\n");
  test::write_text(dir.path() / "messages.jsonl",
                   R"({"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]})" "\n");
  auto tokenizer = load_tokenizer(test::assets_dir() / "tokenizers" / "qwen3-bpe");
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"What is the capital of Peru?", "Lima is."}, {"Name a red fruit.", "A cherry."}, {"Hi there", "Hello!"}};
  for (const Direction direction : {Direction::kForward, Direction::kReverse}) {
    DataOptions o;
    o.train = {(dir.path() / "pr.jsonl").string(), (dir.path() / "alpaca.jsonl").string(),
               (dir.path() / "messages.jsonl").string()};
    o.chat_template = TemplateKind::kChatml;
    o.direction = direction;
    PreparedData d = prepare_data(o, *tokenizer, 1, tokenizer->vocab_size());
    ASSERT_EQ(d.train.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      const auto& [prompt, response] = expected[i];
      const std::vector<std::string> targets = supervised_texts(d.train[i], *tokenizer);
      ASSERT_EQ(targets.size(), 1u);
      // The target is the answer plus chatml's end of turn; the other side sits in the prompt.
      const std::string want = direction == Direction::kForward ? response : prompt;
      const std::string other = direction == Direction::kForward ? prompt : response;
      EXPECT_EQ(targets[0], want + "<|im_end|>") << enum_name(direction);
      const std::string text = tokenizer->decode(d.train[i].input_ids);
      EXPECT_NE(text.find("<|im_start|>user\n" + other + "<|im_end|>"), std::string::npos) << text;
    }
  }
}

TEST(SynthDirection, BadValuesAreRefused) {
  const std::string yaml = "model: {path: m}\ndata: {train: t.jsonl, direction: backwards}\n";
  try {
    parse_config(yaml, "c.yaml", {}, "c");
    FAIL() << "data.direction: backwards must be refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("data.direction 'backwards' is not one of forward|reverse"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_config("model: {path: m}\ndata: {train: t.jsonl, format: tokenized, direction: reverse}\n", "c.yaml",
                            {}, "c"),
               InputError);
  EXPECT_EQ(parse_config("model: {path: m}\ndata: {train: t.jsonl}\n", "c.yaml", {"data.direction=reverse"}, "c")
                .data.direction,
            Direction::kReverse);
  EXPECT_NE(config_to_yaml(parse_config("model: {path: m}\ndata: {train: t.jsonl}\n", "c.yaml", {}, "c"))
                .find("direction: forward"),
            std::string::npos);
}

}  // namespace
}  // namespace sft::data
