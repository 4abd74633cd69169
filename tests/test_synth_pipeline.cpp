// tests/test_synth_pipeline.cpp: the sft synth pipelines on a scripted model (a Completer whose answers
// are a function of the prompt and the seed): what is written and rejected by reason, determinism, and
// that a run stopped between steps or killed mid-interval resumes to the same file as an uninterrupted
// run. The same mechanics through the real binary and a tiny random model: tests/python/test_synth.py.
#include <gtest/gtest.h>

#include <fstream>
#include <stdexcept>

#include "common/errors.h"
#include "synth/evol.h"
#include "synth/label.h"
#include "synth/rouge.h"
#include "synth/self_instruct.h"
#include "tests/test_util.h"

namespace sft::synth {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// The text between `begin` and `end` in `text` (or "" when absent).
std::string between(const std::string& text, const std::string& begin, const std::string& end) {
  const size_t a = text.find(begin);
  if (a == std::string::npos) return "";
  const size_t b = text.find(end, a + begin.size());
  return text.substr(a + begin.size(), b == std::string::npos ? std::string::npos : b - a - begin.size());
}

const std::vector<std::string> kBank = {
    "Write a limerick about a forgetful cat.", "List three uses of baking soda at home.",
    "Explain how a bicycle gear system works.", "Translate good morning into Spanish and German.",
    "Summarize the causes of the French Revolution.", "Suggest five names for a coffee shop.",
    "Describe the rules of chess for a beginner.", "Give an example of a prime number above fifty.",
    "Write a limerick about a forgetful dog.", "Classify these animals as mammals or birds: owl, bat.",
    "Compose an email asking for a day off.", "Explain why leaves change colour in autumn.",
    "Convert 100 degrees Fahrenheit to Celsius.", "Plan a three day trip to Rome on a budget."};

// Answers as a real model would, deterministically from the prompt and the seed.
class ScriptedModel : public Completer {
 public:
  int calls = 0;
  int crash_at_call = -1;  // throws on this call (a crash in the middle of a step)
  std::vector<ChatPrompt> seen;
  std::vector<Completion> complete(const std::vector<ChatPrompt>& prompts, const DecodeSettings& settings,
                                   const std::vector<uint64_t>& seeds) override {
    if (calls++ == crash_at_call) throw std::runtime_error("scripted crash");
    EXPECT_EQ(prompts.size(), seeds.size());
    std::vector<Completion> out;
    for (size_t i = 0; i < prompts.size(); ++i) {
      seen.push_back(prompts[i]);
      out.push_back(answer(prompts[i], seeds[i], settings));
    }
    return out;
  }

 private:
  static Completion answer(const ChatPrompt& p, uint64_t seed, const DecodeSettings&) {
    Completion c;
    c.complete = true;
    c.new_tokens = 7;
    const std::string& u = p.user;
    if (!p.assistant_prefix.empty() && p.assistant_prefix.back() == '.') {  // a Self-Instruct list
      const int next = std::stoi(p.assistant_prefix);
      // Every list opens with one item for each filter, then two bank items, then one the token limit cut.
      c.text = p.assistant_prefix + " Draw a picture of a sunset over the sea.\n" + std::to_string(next + 1) +
               ". Hi there\n" + std::to_string(next + 2) + ". Give three tips for staying very healthy.\n" +
               std::to_string(next + 3) + ". " + kBank[seed % kBank.size()] + "\n" + std::to_string(next + 4) +
               ". " + kBank[(seed / 7) % kBank.size()] + "\n" + std::to_string(next + 5) + ". A cut off ite";
      c.complete = seed % 3 != 0;  // some lists hit the token limit: their last item is dropped
      return c;
    }
    if (u.find("#Given Prompt#:") != std::string::npos) {  // an Evol rewrite
      const std::string original = between(u, "#Given Prompt#:\n", "\n\n#");
      if (original.find("SAME") != std::string::npos) c.text = original;
      else if (original.find("COPY") != std::string::npos) c.text = "#Rewritten Prompt#: " + original + " now";
      else c.text = original + " Also give " + std::to_string(seed % 97) + " examples.";
      return c;
    }
    if (u.rfind("Compare these two prompts.", 0) == 0) {
      c.text = between(u, "First prompt:\n", "\n\n") == between(u, "Second prompt:\n", "\n\n") ? "yes" : "no";
      return c;
    }
    if (u.rfind("Below are a request", 0) == 0) {
      const std::string request = between(u, "Request:\n", "\n\n");
      c.text = p.assistant_prefix + (request.find("LOW") != std::string::npos ? " 2"
                                     : request.find("ODD") != std::string::npos ? " great" : " 5");
      return c;
    }
    // A response (or a backtranslated prompt).
    if (u.find("SORRY") != std::string::npos) c.text = "Sorry, I can't.";
    else if (u.find("STOP") != std::string::npos) c.text = "It is what it is.";
    else c.text = "Answer to: " + u;
    return c;
  }
};

std::vector<json> read_lines(const fs::path& path) {
  std::vector<json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

SelfInstructOptions self_instruct_options(int64_t num) {
  SelfInstructOptions o;
  o.seeds = {"Give three tips for staying healthy.", "Write a haiku about winter mornings.",
             "What is the capital of Australia?", "Sort the numbers 5, 2, 9 in ascending order."};
  o.num = num;
  o.shots = 3;
  o.batch = 1;
  o.seed = 5;
  return o;
}

const auto kNever = [] { return false; };
const auto kQuiet = [](const Progress&) {};

TEST(SynthSelfInstruct, WritesFilteredPairsAndCountsEveryRejection) {
  test::TempDir dir;
  const fs::path out = dir.path() / "out.jsonl";
  ScriptedModel model;
  const SelfInstructOptions o = self_instruct_options(8);
  {
    RunOutput output(out, {{"t", 1}}, false, false);
    run_self_instruct(model, o, output, kNever, kQuiet);
    const json report = output.finish();
    EXPECT_TRUE(report["complete"].get<bool>());
    EXPECT_EQ(report["accepted"], 8);
    for (const char* why : {reason::kTooSimilar, reason::kUnsuitableTopic, reason::kTooShort, reason::kTruncatedItem}) {
      EXPECT_GT(report["rejected"].value(why, 0), 0) << why << " " << report.dump();
    }
    EXPECT_EQ(report["rejected_total"].get<int64_t>() + 8,
              report["candidates"].get<int64_t>() + report["rejected"].value(reason::kTruncatedItem, 0));
  }
  const std::vector<json> lines = read_lines(out);
  ASSERT_EQ(lines.size(), 8u);
  std::vector<std::string> kept = o.seeds;
  for (const json& line : lines) {
    const std::string prompt = line["prompt"];
    EXPECT_EQ(line["response"], "Answer to: " + prompt);
    EXPECT_EQ(check_instruction(prompt), std::nullopt) << prompt;
    for (const std::string& other : kept) EXPECT_LT(rouge_l(other, prompt).f1, 0.7) << prompt << " vs " << other;
    kept.push_back(prompt);
  }
  // Later prompts show generated instructions as examples (at most generated_shots of them).
  bool saw_generated = false;
  for (const ChatPrompt& p : model.seen) {
    if (p.assistant_prefix.empty()) continue;
    int generated = 0;
    for (const json& line : lines) generated += p.user.find(line["prompt"].get<std::string>()) != std::string::npos;
    EXPECT_LE(generated, 2);
    saw_generated |= generated > 0;
  }
  EXPECT_TRUE(saw_generated);
}

TEST(SynthSelfInstruct, SameSeedSameFileAndResumeIsExact) {
  test::TempDir dir;
  const SelfInstructOptions o = self_instruct_options(9);
  auto run_whole = [&](const fs::path& out) {
    ScriptedModel model;
    RunOutput output(out, {{"t", 1}}, false, false);
    run_self_instruct(model, o, output, kNever, kQuiet);
    output.finish();
  };
  run_whole(dir.path() / "a.jsonl");
  run_whole(dir.path() / "b.jsonl");
  const std::string whole = test::read_text(dir.path() / "a.jsonl");
  EXPECT_EQ(test::read_text(dir.path() / "b.jsonl"), whole);

  // Stopped (as by SIGINT) after 2 steps, then resumed.
  const fs::path stopped = dir.path() / "stopped.jsonl";
  {
    ScriptedModel model;
    RunOutput output(stopped, {{"t", 1}}, false, false);
    int steps = 0;
    run_self_instruct(model, o, output, [&] { return steps >= 2; }, [&](const Progress&) { ++steps; });
    EXPECT_FALSE(output.finish()["complete"].get<bool>());
  }
  EXPECT_LT(test::read_text(stopped).size(), whole.size());
  // Crashed in the middle of an uncommitted interval (lines past the cursor), then resumed.
  const fs::path crashed = dir.path() / "crashed.jsonl";
  {
    ScriptedModel model;
    model.crash_at_call = 6;  // step 3's list call (2 calls a step); step 2's lines are written, not committed
    SelfInstructOptions every2 = o;
    every2.commit_every = 2;
    RunOutput output(crashed, {{"t", 1}}, false, false);
    EXPECT_THROW(run_self_instruct(model, every2, output, kNever, kQuiet), std::runtime_error);
  }
  std::ifstream cursor_file(RunOutput::cursor_path(crashed));
  const int64_t committed = json::parse(cursor_file)["output_bytes"];
  EXPECT_GT(static_cast<int64_t>(fs::file_size(crashed)), committed) << "the crash should leave uncommitted lines";
  for (const fs::path& out : {stopped, crashed}) {
    ScriptedModel model;
    RunOutput output(out, {{"t", 1}}, true, false);
    EXPECT_TRUE(output.resumed());
    run_self_instruct(model, o, output, kNever, kQuiet);
    EXPECT_TRUE(output.finish()["complete"].get<bool>());
    EXPECT_EQ(test::read_text(out), whole) << out;
  }
}

TEST(SynthRunOutput, RefusesExistingOutputAndOtherArguments) {
  test::TempDir dir;
  const fs::path out = dir.path() / "o.jsonl";
  { RunOutput output(out, {{"--num", "3"}}, false, false); }
  EXPECT_THROW(RunOutput(out, {{"--num", "3"}}, false, false), InputError);
  try {
    RunOutput output(out, {{"--num", "4"}}, true, false);
    FAIL() << "a resume with another --num must be refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--num"), std::string::npos) << e.what();
  }
  test::write_text(out, "{\"prompt\": \"x\", \"response\": \"y\"}\n");
  { RunOutput forced(out, {{"--num", "4"}}, false, true); }  // --force starts over
  EXPECT_EQ(fs::file_size(out), 0u);
  EXPECT_TRUE(fs::exists(RunOutput::cursor_path(out)));
  test::write_text(dir.path() / "plain.jsonl", "{}\n");
  EXPECT_THROW(RunOutput(dir.path() / "plain.jsonl", json::object(), true, false), InputError)
      << "--resume of a file without a cursor";
}

EvolOptions evol_options() {
  EvolOptions o;
  o.inputs = {{"Describe the water cycle for students.", "in:1"},
              {"SAME prompt about rivers here", "in:2"},
              {"COPY prompt about mountains", "in:3"},
              {"SORRY prompt about the sea", "in:4"},
              {"STOP prompt about lakes", "in:5"}};
  o.rounds = 2;
  o.batch = 2;
  o.seed = 9;
  return o;
}

TEST(SynthEvol, EliminationRulesAndRounds) {
  for (bool judge : {false, true}) {
    test::TempDir dir;
    const fs::path out = dir.path() / "evol.jsonl";
    ScriptedModel model;
    EvolOptions o = evol_options();
    o.judge = judge;
    RunOutput output(out, {{"t", 1}}, false, false);
    run_evol(model, o, output, kNever, kQuiet);
    const json report = output.finish();
    EXPECT_EQ(report["accepted"], 2);
    EXPECT_EQ(report["rejected"], (json{{reason::kNoInformationGain, 2}, {reason::kCopiesRewritePrompt, 2},
                                        {reason::kSorryResponse, 2}, {reason::kStopWordsResponse, 2}}))
        << report.dump();
    const std::vector<json> lines = read_lines(out);
    ASSERT_EQ(lines.size(), 2u);
    for (int r = 1; r <= 2; ++r) {
      const json& line = lines[static_cast<size_t>(r - 1)];
      EXPECT_EQ(line["round"], r);
      EXPECT_EQ(line["source"], "in:1");
      EXPECT_EQ(line["operation"], evol_operation_name(choose_operation(o.seed, 0, r)));
      EXPECT_EQ(line["response"], "Answer to: " + line["prompt"].get<std::string>());
    }
    // Round 2 evolves round 1's result.
    EXPECT_EQ(lines[1]["prompt"].get<std::string>().rfind(lines[0]["prompt"].get<std::string>(), 0), 0u);
    int judged = 0;
    for (const ChatPrompt& p : model.seen) judged += p.user.rfind("Compare these two prompts.", 0) == 0;
    EXPECT_EQ(judged, judge ? 10 : 0);  // every non-empty rewrite of both rounds
  }
}

TEST(SynthEvol, OperationsAreSeededAndCoverAllSix) {
  std::set<std::string> seen;
  for (uint64_t i = 0; i < 200; ++i) seen.insert(evol_operation_name(choose_operation(3, i, 1)));
  EXPECT_EQ(seen.size(), 6u);
  EXPECT_EQ(choose_operation(3, 17, 2), choose_operation(3, 17, 2));
  int differ = 0;
  for (uint64_t i = 0; i < 50; ++i) differ += choose_operation(3, i, 1) != choose_operation(4, i, 1);
  EXPECT_GT(differ, 20);
}

TEST(SynthEvol, ResumeIsExact) {
  test::TempDir dir;
  const EvolOptions o = evol_options();
  const fs::path whole = dir.path() / "whole.jsonl", part = dir.path() / "part.jsonl";
  {
    ScriptedModel model;
    RunOutput output(whole, {{"t", 1}}, false, false);
    run_evol(model, o, output, kNever, kQuiet);
    output.finish();
  }
  {
    ScriptedModel model;
    RunOutput output(part, {{"t", 1}}, false, false);
    int steps = 0;
    run_evol(model, o, output, [&] { return steps >= 1; }, [&](const Progress&) { ++steps; });
    output.finish();
  }
  ScriptedModel model;
  RunOutput output(part, {{"t", 1}}, true, false);
  run_evol(model, o, output, kNever, kQuiet);
  const json report = output.finish();
  EXPECT_EQ(test::read_text(part), test::read_text(whole));
  EXPECT_EQ(report["rejected_total"], 8);
}

TEST(SynthDistill, AnswersEveryPromptKeepingItsTurns) {
  test::TempDir dir;
  const fs::path out = dir.path() / "d.jsonl";
  ScriptedModel teacher;
  DistillOptions o;
  o.inputs = {{{{data::Role::kUser, "Why is the sky blue?"}}, "p:1"},
              {{{data::Role::kSystem, "Be brief."}, {data::Role::kUser, "Hi"}, {data::Role::kAssistant, "Hello!"},
                {data::Role::kUser, "Name a colour."}}, "p:2"},
              {{{data::Role::kUser, "SORRY case"}}, "p:3"}};
  o.cot = true;
  RunOutput output(out, {{"t", 1}}, false, false);
  run_distill(teacher, o, output, kNever, kQuiet);
  EXPECT_EQ(output.finish()["accepted"], 3);
  const std::vector<json> lines = read_lines(out);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["prompt"], "Why is the sky blue?");
  EXPECT_EQ(lines[0]["response"], "Answer to: " + with_reasoning_instruction("Why is the sky blue?"));
  ASSERT_EQ(lines[1]["messages"].size(), 5u);
  EXPECT_EQ(lines[1]["messages"][0], (json{{"role", "system"}, {"content", "Be brief."}}));
  EXPECT_EQ(lines[1]["messages"][4]["role"], "assistant");
  ASSERT_EQ(teacher.seen.size(), 3u);
  EXPECT_EQ(teacher.seen[1].context.size(), 3u);
  EXPECT_EQ(teacher.seen[1].user, with_reasoning_instruction("Name a colour."));
}

TEST(SynthBacktranslate, SelfCurationKeepsHighScores) {
  test::TempDir dir;
  ScriptedModel backward, forward;
  BacktranslateOptions o;
  o.texts = {"Paris is the capital of France.", "LOW quality text here.", "ODD text the scorer cannot rate."};
  for (bool curate : {false, true}) {
    const fs::path out = dir.path() / (curate ? "curated.jsonl" : "all.jsonl");
    RunOutput output(out, {{"t", 1}}, false, false);
    run_backtranslate(backward, curate ? &forward : nullptr, o, output, kNever, kQuiet);
    const json report = output.finish();
    const std::vector<json> lines = read_lines(out);
    if (!curate) {
      ASSERT_EQ(lines.size(), 3u);
      EXPECT_EQ(lines[0], (json{{"prompt", "Answer to: " + o.texts[0]}, {"response", o.texts[0]}}));
      continue;
    }
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["score"], 5);
    EXPECT_EQ(report["rejected"], (json{{reason::kLowScore, 1}, {reason::kUnscored, 1}}));
  }
}

TEST(SynthBacktranslate, ReadTextsNamesTheBadLine) {
  test::TempDir dir;
  const fs::path path = dir.path() / "t.jsonl";
  test::write_text(path, "{\"text\": \"a\"}\n{\"output\": \"b\"}\n");
  EXPECT_EQ(read_texts(path), (std::vector<std::string>{"a", "b"}));
  for (const auto& [body, needle] : std::vector<std::pair<std::string, std::string>>{
           {"{\"text\": \"a\"}\n{oops\n", ":2: malformed JSON"},
           {"{\"title\": \"a\"}\n", ":1: expected a \"text\""},
           {"{\"text\": 3}\n", ":1: field \"text\" must be a string"},
           {"\n\n", "has no lines"}}) {
    test::write_text(path, body);
    try {
      read_texts(path);
      ADD_FAILURE() << body;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace sft::synth
