// synth/prompts.h: the text sft synth sends to a model. Our own wording, written from the papers'
// descriptions of what each prompt asks (none of it is copied from the papers' released prompts):
// - Self-Instruct: a numbered list of example tasks, then the model continues the list;
// - Evol-Instruct: five in-depth rewrites (add constraints, deepen, concretise, add reasoning steps,
//   complicate the input) and one in-breadth rewrite (a new prompt in the same domain);
// - the optional --judge question of elimination rule 1, the --cot reasoning instruction of distill,
//   and the 1-5 rating of backtranslation's self-curation (--score).
#pragma once
#include <string>
#include <vector>

#include "data/formats.h"

namespace sft::synth {

// A chat prompt: the user message, plus the start of the assistant's answer that decoding continues
// from (empty for none). The prefill keeps a small model in the format, e.g. "9." for the next item.
struct ChatPrompt {
  std::string user;
  std::string assistant_prefix;
  std::vector<data::Message> context;  // earlier turns ([system], user, assistant, ...) before `user`
};

// Self-Instruct: `examples` numbered 1..n, asking for `new_tasks` more, numbered n+1..n+new_tasks;
// the answer is prefilled with "n+1." so the model writes item n+1 first.
ChatPrompt self_instruct_prompt(const std::vector<std::string>& examples, int new_tasks);

enum class EvolOperation { kAddConstraints, kDeepen, kConcretize, kAddReasoning, kComplicateInput, kBreadth };
constexpr int kEvolOperationCount = 6;
const char* evol_operation_name(EvolOperation operation);  // "add_constraints", ..., "breadth"
EvolOperation evol_operation(int index);                   // 0..5 in the order above

ChatPrompt evol_prompt(EvolOperation operation, const std::string& prompt);

// Rule 1 with --judge: are the two prompts the same request? The model answers yes or no.
ChatPrompt judge_equal_prompt(const std::string& original, const std::string& evolved);

// distill --cot: the prompt with an instruction to reason step by step before answering.
std::string with_reasoning_instruction(const std::string& prompt);

// backtranslate --score: rate a (prompt, response) pair 1..5 as an answer an assistant would give.
ChatPrompt score_prompt(const std::string& prompt, const std::string& response);

}  // namespace sft::synth
