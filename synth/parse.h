// synth/parse.h: reading what a model wrote: the numbered instruction list of a Self-Instruct prompt,
// an evolved prompt, a 1-5 score and a yes/no verdict. Model output is often malformed (text before the
// list, items without numbers, repeated numbers, markdown, an item cut off by the token limit); every
// case has a rule here and a test in tests/test_synth.cpp.
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sft::synth {

struct NumberedList {
  std::vector<std::string> items;  // in output order, trimmed, never empty
  bool dropped_truncated = false;  // the last item was dropped because the output was cut
};

// Items are lines that start with a number and a separator ("9. ", "9) ", "9: ", "Task 9: ", "**9.**",
// "#9."), with any number: repeats and gaps are kept, since the filters judge the text. A line without
// a number continues the current item (joined by a newline) until a blank line; text before the first
// item and after a blank line is not an item. With `complete` false (the output hit the token limit
// instead of a stop token) the last item may be cut mid-sentence and is dropped, as Self-Instruct does.
// An item is trimmed of whitespace and of one pair of enclosing quotes or ** markers.
NumberedList parse_numbered_list(std::string_view text, bool complete);

// An evolved prompt from a rewriting answer: trimmed; a leading "#Rewritten Prompt#:"-style label line
// the model repeated is kept (rule 4 judges it), but enclosing quotes and code fences are removed.
std::string parse_evolved_prompt(std::string_view text);

// The first "Score: N" (any case, optional ** and spaces) with N in 1..5; else the first digit 1..5
// standing alone in the text; else nullopt.
std::optional<int> parse_score(std::string_view text);

// true for an answer that starts with "yes", false for "no" (any case, after whitespace, quotes and
// markdown); nullopt otherwise.
std::optional<bool> parse_yes_no(std::string_view text);

// `text` without leading and trailing whitespace.
std::string trim(std::string_view text);

}  // namespace sft::synth
