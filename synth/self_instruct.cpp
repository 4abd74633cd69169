// synth/self_instruct.cpp: the Self-Instruct loop (see self_instruct.h).
#include "synth/self_instruct.h"

#include <algorithm>
#include <random>

#include "synth/parse.h"
#include "synth/prompts.h"

namespace sft::synth {
namespace {

// Seed stages: each decoding of a step gets its own stream.
constexpr uint64_t kShotsStage = 1, kInstructionStage = 2, kResponseStage = 3;

// k distinct elements of `items` in random order (all of them when k >= size): a partial Fisher-Yates
// with our own index draws, so the choice is the same on every standard library.
std::vector<std::string> pick(const std::vector<std::string>& items, int64_t k, std::mt19937_64& rng) {
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  const size_t n = std::min(order.size(), static_cast<size_t>(std::max<int64_t>(k, 0)));
  for (size_t i = 0; i < n; ++i) std::swap(order[i], order[i + rng() % (order.size() - i)]);
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) out.push_back(items[order[i]]);
  return out;
}

}  // namespace

std::vector<std::string> sample_shots(const std::vector<std::string>& seeds, const std::vector<std::string>& generated,
                                      int64_t shots, int64_t generated_shots, uint64_t rng_seed) {
  std::mt19937_64 rng(rng_seed);
  const int64_t from_generated = std::min<int64_t>(generated_shots, static_cast<int64_t>(generated.size()));
  std::vector<std::string> chosen = pick(seeds, shots - from_generated, rng);
  for (std::string& text : pick(generated, from_generated, rng)) chosen.push_back(std::move(text));
  std::vector<std::string> shuffled = pick(chosen, static_cast<int64_t>(chosen.size()), rng);
  return shuffled;
}

void run_self_instruct(Completer& model, const SelfInstructOptions& o, RunOutput& output,
                       const std::function<bool()>& should_stop, const std::function<void(const Progress&)>& on_step) {
  Progress& progress = output.progress();
  const int64_t max_prompts = o.max_prompts > 0 ? o.max_prompts : 20 * o.num;
  // The pool: seeds and every instruction written so far (a resumed run reads them back from the output).
  InstructionPool pool(o.max_similarity);
  for (const std::string& seed : o.seeds) pool.add(seed);
  std::vector<std::string> generated;
  for (const auto& line : output.previous_lines()) {
    generated.push_back(line.at("prompt").get<std::string>());
    pool.add(generated.back());
  }
  while (progress.accepted < o.num && progress.prompts < max_prompts && !should_stop()) {
    const uint64_t step = static_cast<uint64_t>(progress.step);
    // 1. New instructions from `batch` few-shot prompts.
    std::vector<ChatPrompt> prompts;
    std::vector<uint64_t> seeds;
    for (int64_t j = 0; j < o.batch; ++j) {
      const auto shots = sample_shots(o.seeds, generated, o.shots, o.generated_shots,
                                      derive_seed(o.seed, kShotsStage, step, static_cast<uint64_t>(j)));
      prompts.push_back(self_instruct_prompt(shots, static_cast<int>(o.new_per_prompt)));
      seeds.push_back(derive_seed(o.seed, kInstructionStage, step, static_cast<uint64_t>(j)));
    }
    std::vector<Completion> lists = model.complete(prompts, o.instruction_decoding, seeds);
    progress.prompts += static_cast<int64_t>(prompts.size());
    // 2. Filter: each candidate against the pool and the candidates kept before it in this step, until
    //    the step has as many as the goal still needs (the rest are never judged).
    InstructionPool step_pool = pool;
    std::vector<std::string> kept;
    const size_t wanted = static_cast<size_t>(o.num - progress.accepted);
    for (const Completion& list : lists) progress.generated_tokens += list.new_tokens;
    for (const Completion& list : lists) {
      if (kept.size() >= wanted) break;
      const NumberedList parsed = parse_numbered_list(list.text, list.complete || o.keep_truncated);
      if (parsed.dropped_truncated) progress.reject(reason::kTruncatedItem);
      if (parsed.items.empty() && !parsed.dropped_truncated) progress.reject(reason::kUnparsed);
      for (const std::string& item : parsed.items) {
        if (kept.size() >= wanted) break;
        ++progress.candidates;
        if (auto why = check_instruction(item, o.limits)) {
          progress.reject(*why);
        } else if (!step_pool.is_novel(item)) {
          progress.reject(reason::kTooSimilar);
        } else {
          step_pool.add(item);
          kept.push_back(item);
        }
      }
    }
    // 3. A response for each kept instruction; the pair is written when the response is usable.
    if (!kept.empty()) {
      std::vector<ChatPrompt> asks;
      std::vector<uint64_t> response_seeds;
      for (size_t k = 0; k < kept.size(); ++k) {
        asks.push_back({kept[k], "", {}});
        response_seeds.push_back(derive_seed(o.seed, kResponseStage, step, k));
      }
      std::vector<Completion> responses = model.complete(asks, o.response_decoding, response_seeds);
      for (size_t k = 0; k < kept.size(); ++k) {
        progress.generated_tokens += responses[k].new_tokens;
        const std::string response = trim(responses[k].text);
        if (response.empty()) {
          progress.reject(reason::kEmptyResponse);
        } else if (!responses[k].complete && !o.keep_truncated) {
          progress.reject(reason::kTruncatedResponse);
        } else {
          output.write({{"prompt", kept[k]}, {"response", response}});
          ++progress.accepted;
          pool.add(kept[k]);
          generated.push_back(kept[k]);
        }
      }
    }
    ++progress.step;
    const bool last = progress.accepted >= o.num || progress.prompts >= max_prompts;
    if (last || progress.step % o.commit_every == 0 || should_stop()) output.commit();
    on_step(progress);
  }
  progress.complete = progress.accepted >= o.num;
}

}  // namespace sft::synth
