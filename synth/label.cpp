// synth/label.cpp: distill and backtranslate (see label.h).
#include "synth/label.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "synth/filters.h"
#include "synth/parse.h"
#include "synth/prompts.h"

namespace sft::synth {
namespace {

constexpr uint64_t kTeacherStage = 21, kBackwardStage = 22, kScoreStage = 23;

// The chunk of step `step`: [first, last).
std::pair<size_t, size_t> chunk(int64_t step, int64_t batch, size_t total) {
  const size_t first = static_cast<size_t>(step * batch);
  return {first, std::min(total, first + static_cast<size_t>(batch))};
}

// Judges a generated text: the reason to drop it, or nullopt.
std::optional<std::string> check_generated(const std::string& text, const Completion& completion, bool keep_truncated,
                                           const char* empty_reason, const char* truncated_reason) {
  if (text.empty()) return std::string(empty_reason);
  if (!completion.complete && !keep_truncated) return std::string(truncated_reason);
  return std::nullopt;
}

void end_step(RunOutput& output, int64_t commit_every, bool done, const std::function<bool()>& should_stop,
              const std::function<void(const Progress&)>& on_step) {
  Progress& progress = output.progress();
  ++progress.step;
  if (done || progress.step % commit_every == 0 || should_stop()) output.commit();
  on_step(progress);
}

}  // namespace

void run_distill(Completer& teacher, const DistillOptions& o, RunOutput& output,
                 const std::function<bool()>& should_stop, const std::function<void(const Progress&)>& on_step) {
  Progress& progress = output.progress();
  const size_t total = o.inputs.size();
  while (static_cast<size_t>(progress.step * o.batch) < total && !should_stop()) {
    const auto [first, last] = chunk(progress.step, o.batch, total);
    std::vector<ChatPrompt> prompts;
    std::vector<uint64_t> seeds;
    for (size_t i = first; i < last; ++i) {
      const std::vector<data::Message>& messages = o.inputs[i].messages;
      const std::string& user = messages.back().content;
      prompts.push_back({o.cot ? with_reasoning_instruction(user) : user, "",
                         std::vector<data::Message>(messages.begin(), messages.end() - 1)});
      seeds.push_back(derive_seed(o.seed, kTeacherStage, i, 0));
    }
    const std::vector<Completion> answers = teacher.complete(prompts, o.decoding, seeds);
    progress.prompts += static_cast<int64_t>(prompts.size());
    for (size_t k = 0; k < answers.size(); ++k) {
      progress.generated_tokens += answers[k].new_tokens;
      ++progress.candidates;
      const std::string response = trim(answers[k].text);
      if (auto why = check_generated(response, answers[k], o.keep_truncated, reason::kEmptyResponse,
                                     reason::kTruncatedResponse)) {
        progress.reject(*why);
        continue;
      }
      const std::vector<data::Message>& messages = o.inputs[first + k].messages;
      if (messages.size() == 1) {
        output.write({{"prompt", messages[0].content}, {"response", response}});
      } else {
        nlohmann::json turns = nlohmann::json::array();
        for (const data::Message& m : messages) turns.push_back({{"role", data::role_name(m.role)}, {"content", m.content}});
        turns.push_back({{"role", "assistant"}, {"content", response}});
        output.write({{"messages", turns}});
      }
      ++progress.accepted;
    }
    end_step(output, o.commit_every, last >= total, should_stop, on_step);
  }
  progress.complete = static_cast<size_t>(progress.step * o.batch) >= total;
}

void run_backtranslate(Completer& backward, Completer* scorer, const BacktranslateOptions& o, RunOutput& output,
                       const std::function<bool()>& should_stop, const std::function<void(const Progress&)>& on_step) {
  Progress& progress = output.progress();
  const size_t total = o.texts.size();
  while (static_cast<size_t>(progress.step * o.batch) < total && !should_stop()) {
    const auto [first, last] = chunk(progress.step, o.batch, total);
    // 1. The backward model answers each text with the prompt it would have come from.
    std::vector<ChatPrompt> prompts;
    std::vector<uint64_t> seeds;
    for (size_t i = first; i < last; ++i) {
      prompts.push_back({o.texts[i], "", {}});
      seeds.push_back(derive_seed(o.seed, kBackwardStage, i, 0));
    }
    const std::vector<Completion> generated = backward.complete(prompts, o.decoding, seeds);
    progress.prompts += static_cast<int64_t>(prompts.size());
    std::vector<std::pair<std::string, std::string>> pairs;  // (prompt, response) that passed
    for (size_t k = 0; k < generated.size(); ++k) {
      progress.generated_tokens += generated[k].new_tokens;
      ++progress.candidates;
      const std::string prompt = trim(generated[k].text);
      if (auto why = check_generated(prompt, generated[k], o.keep_truncated, reason::kEmptyPrompt,
                                     reason::kTruncatedPrompt)) {
        progress.reject(*why);
        continue;
      }
      pairs.emplace_back(prompt, o.texts[first + k]);
    }
    // 2. Self-curation: the forward model rates each pair (greedy), pairs below min_score are dropped.
    std::vector<std::optional<int>> scores(pairs.size());
    if (scorer && !pairs.empty()) {
      std::vector<ChatPrompt> questions;
      std::vector<uint64_t> question_seeds;
      for (size_t k = 0; k < pairs.size(); ++k) {
        questions.push_back(score_prompt(pairs[k].first, pairs[k].second));
        question_seeds.push_back(derive_seed(o.seed, kScoreStage, first + k, 0));
      }
      const std::vector<Completion> ratings = scorer->complete(questions, {16, 0.0, 1.0, 0}, question_seeds);
      for (size_t k = 0; k < ratings.size(); ++k) {
        progress.generated_tokens += ratings[k].new_tokens;
        scores[k] = parse_score(ratings[k].text);
      }
    }
    for (size_t k = 0; k < pairs.size(); ++k) {
      nlohmann::json line = {{"prompt", pairs[k].first}, {"response", pairs[k].second}};
      if (scorer) {
        if (!scores[k]) {
          progress.reject(reason::kUnscored);
          continue;
        }
        if (*scores[k] < o.min_score) {
          progress.reject(reason::kLowScore);
          continue;
        }
        line["score"] = *scores[k];
      }
      output.write(line);
      ++progress.accepted;
    }
    end_step(output, o.commit_every, last >= total, should_stop, on_step);
  }
  progress.complete = static_cast<size_t>(progress.step * o.batch) >= total;
}

std::vector<std::string> read_texts(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path.string() + ": cannot open --input file");
  std::vector<std::string> texts;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    const std::string where = path.string() + ":" + std::to_string(line_no);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (data::find_invalid_utf8(line) != std::string::npos) throw InputError(where + ": not valid UTF-8");
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw InputError(where + ": malformed JSON: " + e.what());
    }
    if (!object.is_object()) throw InputError(where + ": a line must be a JSON object");
    const char* found = nullptr;
    for (const char* key : {"text", "response", "output", "completion"}) {
      if (object.contains(key)) {
        found = key;
        break;
      }
    }
    if (!found) throw InputError(where + ": expected a \"text\" (or \"response\", \"output\", \"completion\") field");
    if (!object[found].is_string()) throw InputError(where + ": field \"" + found + "\" must be a string");
    std::string text = trim(object[found].get<std::string>());
    if (text.empty()) throw InputError(where + ": field \"" + found + "\" is empty");
    texts.push_back(std::move(text));
  }
  if (texts.empty()) throw InputError(path.string() + ": --input file has no lines");
  return texts;
}

}  // namespace sft::synth
