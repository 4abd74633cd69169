// synth/prompts.cpp: the prompt texts of sft synth (see prompts.h).
#include "synth/prompts.h"

#include <stdexcept>

namespace sft::synth {

ChatPrompt self_instruct_prompt(const std::vector<std::string>& examples, int new_tasks) {
  const int n = static_cast<int>(examples.size());
  std::string user = "Here is a numbered list of " + std::to_string(n) +
                     " tasks that people ask an AI assistant to do. Continue the list with " +
                     std::to_string(new_tasks) + " new tasks, numbered " + std::to_string(n + 1) + " to " +
                     std::to_string(n + new_tasks) +
                     ". Each new task is one self-contained instruction, written as a user would write it, "
                     "and differs from every task above in topic and in wording. Mix the kinds of task: "
                     "questions, writing, editing, classification, reasoning, planning, coding. Every task "
                     "must be answerable in text alone, without seeing or making pictures or files.\n\n";
  for (int i = 0; i < n; ++i) user += std::to_string(i + 1) + ". " + examples[static_cast<size_t>(i)] + "\n";
  return {user, std::to_string(n + 1) + ".", {}};
}

const char* evol_operation_name(EvolOperation operation) {
  switch (operation) {
    case EvolOperation::kAddConstraints: return "add_constraints";
    case EvolOperation::kDeepen: return "deepen";
    case EvolOperation::kConcretize: return "concretize";
    case EvolOperation::kAddReasoning: return "add_reasoning";
    case EvolOperation::kComplicateInput: return "complicate_input";
    case EvolOperation::kBreadth: return "breadth";
  }
  return "?";
}

EvolOperation evol_operation(int index) {
  if (index < 0 || index >= kEvolOperationCount) throw std::out_of_range("evol operation index");
  return static_cast<EvolOperation>(index);
}

namespace {

// What each in-depth rewrite adds to the prompt.
const char* depth_change(EvolOperation operation) {
  switch (operation) {
    case EvolOperation::kAddConstraints:
      return "Add one more constraint or requirement that the answer has to satisfy.";
    case EvolOperation::kDeepen:
      return "Ask about the subject in more depth or more breadth: for more detail, more cases or a deeper "
             "explanation.";
    case EvolOperation::kConcretize:
      return "Replace general ideas in the prompt with more specific, concrete ones.";
    case EvolOperation::kAddReasoning:
      return "If the prompt can be answered in a few obvious steps, reword it so that answering it takes "
             "several explicit steps of reasoning.";
    case EvolOperation::kComplicateInput:
      return "Add a piece of input for the prompt to work on, such as a short table, a code snippet, a "
             "formula or a passage of text, in a form that suits the prompt.";
    case EvolOperation::kBreadth: break;
  }
  return "";
}

}  // namespace

ChatPrompt evol_prompt(EvolOperation operation, const std::string& prompt) {
  if (operation == EvolOperation::kBreadth) {
    return {"Write a brand-new prompt that takes the prompt below as its inspiration: the same domain, but a "
            "rarer and more specific topic. It should be about as long and as hard as the prompt below, and "
            "a person must be able to understand and answer it. Reply with the new prompt only.\n\n"
            "#Given Prompt#:\n" + prompt + "\n\n#Created Prompt#:",
            "", {}};
  }
  return {std::string("Rewrite the prompt below into a harder version of itself that people can still "
                      "understand and an AI assistant can still answer. Keep any input it holds (text, code, "
                      "a table) and add no more than 10 to 20 words. ") +
              depth_change(operation) +
              " Reply with the rewritten prompt only.\n\n#Given Prompt#:\n" + prompt + "\n\n#Rewritten Prompt#:",
          "", {}};
}

ChatPrompt judge_equal_prompt(const std::string& original, const std::string& evolved) {
  return {"Compare these two prompts.\n\nFirst prompt:\n" + original + "\n\nSecond prompt:\n" + evolved +
              "\n\nDo they ask for the same thing, with the same constraints and the same depth? Answer with "
              "one word, yes or no.",
          "", {}};
}

std::string with_reasoning_instruction(const std::string& prompt) {
  return prompt + "\n\nWork through this step by step, showing your reasoning, then give the final answer.";
}

ChatPrompt score_prompt(const std::string& prompt, const std::string& response) {
  return {"Below are a request and a candidate answer to it. Rate the answer, as the reply an AI assistant "
          "would give to this request, from 1 to 5:\n"
          "1: it does not address the request, or is off topic, incomplete or unreadable.\n"
          "2: it addresses most of the request but misses or gets wrong something important.\n"
          "3: it is helpful, but reads like text written for something else (a web page, a blog post), "
          "not an answer to this request.\n"
          "4: it is a clear and complete answer written for this request, with a little room to be more "
          "focused or concise.\n"
          "5: it is an excellent answer: focused, complete, correct and well organised.\n\n"
          "Request:\n" + prompt + "\n\nAnswer:\n" + response + "\n\nReply in the form \"Score: N\".",
          "Score:", {}};
}

}  // namespace sft::synth
