// tests/test_synth.cpp: the pure parts of `sft synth`: our ROUGE-L against Google's rouge-score (the
// pairs and scores of scripts/make_synth_golden.py), every Self-Instruct filter and Evol-Instruct
// elimination rule on crafted cases, prompt assembly, and parsing of model output, malformed included.
// The pipelines and the run output are tested in tests/test_synth_pipeline.cpp.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "synth/filters.h"
#include "synth/parse.h"
#include "synth/prompts.h"
#include "synth/rouge.h"
#include "tests/test_util.h"

namespace sft::synth {
namespace {

using Words = std::vector<std::string>;

// ---- ROUGE-L ---------------------------------------------------------------------------------------

TEST(SynthRouge, MatchesRougeScorePackage) {
  std::ifstream in(test::golden_dir() / "synth" / "rouge_l.jsonl");
  ASSERT_TRUE(in) << "run scripts/make_synth_golden.py";
  std::string line;
  int pairs = 0, partial = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const std::string reference = j["reference"], candidate = j["candidate"];
    const RougeScore ours = rouge_l(reference, candidate);
    const double f1 = j["f1"];
    EXPECT_NEAR(ours.precision, j["precision"].get<double>(), 1e-12) << reference << " | " << candidate;
    EXPECT_NEAR(ours.recall, j["recall"].get<double>(), 1e-12) << reference << " | " << candidate;
    EXPECT_NEAR(ours.f1, f1, 1e-12) << reference << " | " << candidate;
    partial += f1 > 0.05 && f1 < 0.95;
    ++pairs;
  }
  EXPECT_GE(pairs, 420);
  EXPECT_GE(partial, 150) << "too few pairs with partial overlap to test the LCS";
}

TEST(SynthRouge, TokenizesAsRougeScore) {
  EXPECT_EQ(rouge_tokenize("Hello, World!  It's 2023."), (Words{"hello", "world", "it", "s", "2023"}));
  EXPECT_EQ(rouge_tokenize("caf\u00e9-bar_baz"), (Words{"caf", "bar", "baz"}));
  EXPECT_EQ(rouge_tokenize("\u212Aelvin"), (Words{"kelvin"}));       // KELVIN SIGN lowercases to 'k'
  EXPECT_EQ(rouge_tokenize("\u0130stanbul"), (Words{"i", "stanbul"}));  // 'i' + combining dot splits
  EXPECT_TRUE(rouge_tokenize("... \u4e2d\u6587 !!").empty());
}

TEST(SynthRouge, LcsPrecisionRecallAndSymmetry) {
  EXPECT_EQ(lcs_length({"a", "b", "c", "d"}, {"b", "d", "a"}), 2u);
  const RougeScore s = rouge_l(Words{"a", "b", "c", "d"}, Words{"a", "c", "x"});  // lcs 2
  EXPECT_DOUBLE_EQ(s.precision, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.recall, 0.5);
  EXPECT_DOUBLE_EQ(s.f1, 2 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5));
  EXPECT_DOUBLE_EQ(rouge_l("a c x", "a b c d").f1, s.f1);
  EXPECT_EQ(rouge_l("", "a b").f1, 0.0);
  EXPECT_EQ(rouge_l("a b", "c d").f1, 0.0);
}

// ---- Self-Instruct filters -------------------------------------------------------------------------

TEST(SynthFilters, LengthBounds) {
  EXPECT_EQ(check_instruction("Write a poem."), reason::kTooShort);        // 3 words
  EXPECT_EQ(check_instruction("Write a short poem."), std::nullopt);       // 4 words
  std::string long_text = "Explain";
  for (int i = 0; i < 149; ++i) long_text += " why";
  EXPECT_EQ(check_instruction(long_text), std::nullopt);                   // 150 words
  EXPECT_EQ(check_instruction(long_text + " now"), reason::kTooLong);      // 151
  EXPECT_EQ(check_instruction("Write a poem.", {2, 3}), std::nullopt);
  EXPECT_EQ(check_instruction("   "), reason::kTooShort);
}

TEST(SynthFilters, UnsuitableTopicsAsWholeWords) {
  for (const char* bad : {"Draw a cat sitting on a mat.", "Describe the image below in detail.",
                          "Plot the sales figures by month.", "Open the attached file and summarise it.",
                          "Make a map of your neighbourhood please.", "What does this graph show about prices?",
                          "Look at these pictures and pick one.", "Explain the drawing on the wall."}) {
    EXPECT_EQ(check_instruction(bad), reason::kUnsuitableTopic) << bad;
  }
  for (const char* good : {"Summarise the paragraph in one sentence.", "Explain photography to a child briefly.",
                           "Write a short profile of a chef.", "Describe a drawer full of old letters."}) {
    EXPECT_EQ(check_instruction(good), std::nullopt) << good;
  }
}

TEST(SynthFilters, FirstCharacter) {
  EXPECT_EQ(check_instruction("- Write a poem about rain."), reason::kStartsWithPunctuation);
  EXPECT_EQ(check_instruction("\"Write a poem about rain.\""), reason::kStartsWithPunctuation);
  EXPECT_EQ(check_instruction("  (Write a poem about rain)"), reason::kStartsWithPunctuation);
  EXPECT_EQ(check_instruction("\u00bfQu\u00e9 hora es ahora mismo?"), reason::kStartsWithNonAscii);
  EXPECT_EQ(check_instruction("\u00c9cris un po\u00e8me sur la pluie."), reason::kStartsWithNonAscii);
  EXPECT_EQ(check_instruction("3 ways to save money fast?"), std::nullopt);
}

TEST(SynthFilters, PoolRejectsSimilarInstructions) {
  InstructionPool pool(0.7);
  EXPECT_DOUBLE_EQ(pool.max_similarity("anything at all here"), 0.0);
  pool.add("Give three tips for staying healthy.");
  pool.add("Write a poem about the sea.");
  EXPECT_FALSE(pool.is_novel("give THREE tips for staying healthy!"));
  // All 6 words in order inside 8: P 6/8, R 1, F1 0.857 >= 0.7.
  EXPECT_FALSE(pool.is_novel("Write a poem about the deep blue sea."));
  EXPECT_TRUE(pool.is_novel("Translate this sentence into French."));
  EXPECT_NEAR(pool.max_similarity("Give three tips for staying calm."), 5.0 / 6.0, 1e-12);
  InstructionPool strict(0.9);
  strict.add("Give three tips for staying healthy.");
  EXPECT_TRUE(strict.is_novel("Give three tips for staying calm."));
  EXPECT_EQ(pool.size(), 2u);
}

// ---- Evol-Instruct elimination rules -------------------------------------------------------------------

const std::string kAnswer = "Paris is the capital of France and its largest city.";

TEST(SynthEvolRules, NoInformationGain) {
  EXPECT_TRUE(no_information_gain("What is the capital of France?", "what is the capital of france", 0.9));
  EXPECT_TRUE(no_information_gain("Name a fruit that is red and sweet to eat.",
                                  "Name a fruit that is red and sweet to eat now.", 0.9));  // F1 0.95
  EXPECT_FALSE(no_information_gain("What is the capital of France?",
                                   "What is the capital of France? Answer in one word.", 0.9));  // F1 0.75
  EXPECT_EQ(check_evolution("What is it?", "What is it!", kAnswer), reason::kNoInformationGain);
  // The judge's verdict replaces ROUGE-L.
  EXPECT_EQ(check_evolution("What is it?", "What is it!", kAnswer, {}, false), std::nullopt);
  EXPECT_EQ(check_evolution("What is it?", "Name the capital of France.", kAnswer, {}, true),
            reason::kNoInformationGain);
}

TEST(SynthEvolRules, SorryUnder80Words) {
  EXPECT_TRUE(is_sorry_response("Sorry, I cannot help with that.", 80));
  EXPECT_TRUE(is_sorry_response("I'm SORRY but no.", 80));
  std::string long_sorry = "Sorry for the long answer.";
  for (int i = 0; i < 80; ++i) long_sorry += " word";
  EXPECT_FALSE(is_sorry_response(long_sorry, 80));
  EXPECT_FALSE(is_sorry_response(kAnswer, 80));
  EXPECT_EQ(check_evolution("What is France?", "Name the capital city of France.", "Sorry, I don't know."),
            reason::kSorryResponse);
}

TEST(SynthEvolRules, OnlyPunctuationAndStopWords) {
  EXPECT_TRUE(is_stop_words_only("..."));
  EXPECT_TRUE(is_stop_words_only("It is what it is, and that is all."));
  EXPECT_TRUE(is_stop_words_only("Yes."));
  EXPECT_FALSE(is_stop_words_only("It is Paris."));
  EXPECT_EQ(check_evolution("What is France?", "Name the capital city of France.", "?? !!"),
            reason::kStopWordsResponse);
  EXPECT_EQ(check_evolution("What is France?", "Name the capital city of France.", "  "), reason::kEmptyResponse);
}

TEST(SynthEvolRules, CopiesTheRewritingPrompt) {
  EXPECT_TRUE(copies_rewrite_prompt("#Rewritten Prompt#: Name the capital of France."));
  EXPECT_TRUE(copies_rewrite_prompt("In the given prompt, name the capital."));
  EXPECT_TRUE(copies_rewrite_prompt("Here is the created-prompt: what is it"));
  EXPECT_TRUE(copies_rewrite_prompt("#GIVEN  PROMPT# what"));
  EXPECT_FALSE(copies_rewrite_prompt("Write a prompt that is given to a model."));
  EXPECT_EQ(check_evolution("What is France?", "#Rewritten Prompt#: name the capital city of France.", kAnswer),
            reason::kCopiesRewritePrompt);
  EXPECT_EQ(check_evolution("What is France?", "", kAnswer), reason::kEmptyPrompt);
  EXPECT_EQ(check_evolution("What is France?", "Name the capital city of France and its population.", kAnswer),
            std::nullopt);
}

// ---- prompts ----------------------------------------------------------------------------------------

TEST(SynthPrompts, SelfInstructListsTheExamplesAndPrefillsTheNextNumber) {
  const ChatPrompt p = self_instruct_prompt({"Write a haiku about snow.", "Sort these numbers: 3, 1, 2."}, 5);
  EXPECT_NE(p.user.find("\n\n1. Write a haiku about snow.\n2. Sort these numbers: 3, 1, 2.\n"), std::string::npos)
      << p.user;
  EXPECT_NE(p.user.find("numbered 3 to 7"), std::string::npos) << p.user;
  EXPECT_NE(p.user.find("5 new tasks"), std::string::npos);
  EXPECT_EQ(p.assistant_prefix, "3.");
  EXPECT_TRUE(p.context.empty());
  EXPECT_EQ(p.user.substr(p.user.size() - 1), "\n");
}

TEST(SynthPrompts, EvolOperationsEachHaveTheirOwnInstruction) {
  std::set<std::string> names, texts;
  for (int i = 0; i < kEvolOperationCount; ++i) {
    const EvolOperation op = evol_operation(i);
    names.insert(evol_operation_name(op));
    const ChatPrompt p = evol_prompt(op, "What is 2 + 2?");
    texts.insert(p.user);
    EXPECT_NE(p.user.find("#Given Prompt#:\nWhat is 2 + 2?\n\n"), std::string::npos) << p.user;
    const char* marker = op == EvolOperation::kBreadth ? "#Created Prompt#:" : "#Rewritten Prompt#:";
    EXPECT_EQ(p.user.substr(p.user.size() - std::string(marker).size()), marker);
  }
  EXPECT_EQ(names, (std::set<std::string>{"add_constraints", "deepen", "concretize", "add_reasoning",
                                          "complicate_input", "breadth"}));
  EXPECT_EQ(texts.size(), 6u);
  EXPECT_THROW(evol_operation(6), std::out_of_range);
}

TEST(SynthPrompts, JudgeCotAndScore) {
  const ChatPrompt judge = judge_equal_prompt("A?", "B?");
  EXPECT_NE(judge.user.find("First prompt:\nA?\n\nSecond prompt:\nB?"), std::string::npos);
  EXPECT_NE(judge.user.find("yes or no"), std::string::npos);
  EXPECT_EQ(with_reasoning_instruction("Q?").rfind("Q?\n\n", 0), 0u);
  EXPECT_NE(with_reasoning_instruction("Q?").find("step by step"), std::string::npos);
  const ChatPrompt score = score_prompt("Q?", "R.");
  EXPECT_NE(score.user.find("Request:\nQ?\n\nAnswer:\nR."), std::string::npos);
  EXPECT_EQ(score.assistant_prefix, "Score:");
}

// ---- parsing model output -------------------------------------------------------------------------

TEST(SynthParse, NumberedListWellFormed) {
  const NumberedList list = parse_numbered_list("9. Write a limerick about cats.\n10. List three uses of salt.\n", true);
  EXPECT_EQ(list.items, (Words{"Write a limerick about cats.", "List three uses of salt."}));
  EXPECT_FALSE(list.dropped_truncated);
}

TEST(SynthParse, NumberedListSeparatorsAndMarkup) {
  const NumberedList list = parse_numbered_list(
      "9) First task here\nTask 10: Second task here\n**11.** Third task here\n  12: \"Quoted task\"\n"
      "#13. Heading task\ninstruction 14. Fourth\n", true);
  EXPECT_EQ(list.items, (Words{"First task here", "Second task here", "Third task here", "Quoted task",
                               "Heading task", "Fourth"}));
}

TEST(SynthParse, NumberedListMalformed) {
  // Text before the list, a continuation line, a blank line ending an item, stray text, repeated and
  // missing numbers, an empty item, a decimal number that is no item.
  const NumberedList list = parse_numbered_list(
      "Sure! Here are some tasks:\n9. Classify the sentiment of this review.\nReview: I loved it.\n\n"
      "Some chatter after a blank line.\n9. Repeated number task\n12.\n3.5 million people live there.\n"
      "15. Last one", true);
  EXPECT_EQ(list.items, (Words{"Classify the sentiment of this review.\nReview: I loved it.", "Repeated number task",
                               "3.5 million people live there.", "Last one"}))
      << "the empty item 12 takes the next line as its text";
  EXPECT_EQ(parse_numbered_list("No list at all, just prose.", true).items, Words{});
  EXPECT_EQ(parse_numbered_list("", true).items, Words{});
}

TEST(SynthParse, NumberedListCutByTheTokenLimitDropsTheLastItem) {
  const NumberedList cut = parse_numbered_list("9. A complete task.\n10. A task that was cut in the mid", false);
  EXPECT_EQ(cut.items, Words{"A complete task."});
  EXPECT_TRUE(cut.dropped_truncated);
  const NumberedList only = parse_numbered_list("9. Cut in the mid", false);
  EXPECT_TRUE(only.items.empty());
  EXPECT_TRUE(only.dropped_truncated);
  EXPECT_FALSE(parse_numbered_list("nothing", false).dropped_truncated);
}

TEST(SynthParse, EvolvedPrompt) {
  EXPECT_EQ(parse_evolved_prompt("  \"Name the capital of France.\"\n"), "Name the capital of France.");
  EXPECT_EQ(parse_evolved_prompt("```\nSort a list in Python.\n```"), "Sort a list in Python.");
  EXPECT_EQ(parse_evolved_prompt("#Rewritten Prompt#: X"), "#Rewritten Prompt#: X");
  EXPECT_EQ(parse_evolved_prompt(" \n "), "");
}

TEST(SynthParse, ScoreAndYesNo) {
  EXPECT_EQ(parse_score("Score: 4"), 4);
  EXPECT_EQ(parse_score("Score:5 because it is great"), 5);
  EXPECT_EQ(parse_score("**score** = 2"), 2);
  EXPECT_EQ(parse_score("I would give it a 3."), 3);
  EXPECT_EQ(parse_score("Score: 9, no: 10/10"), std::nullopt);
  EXPECT_EQ(parse_score("great answer"), std::nullopt);
  EXPECT_EQ(parse_yes_no(" Yes, they are the same."), true);
  EXPECT_EQ(parse_yes_no("**NO**"), false);
  EXPECT_EQ(parse_yes_no("Nope"), std::nullopt);
  EXPECT_EQ(parse_yes_no("Maybe"), std::nullopt);
}

}  // namespace
}  // namespace sft::synth
