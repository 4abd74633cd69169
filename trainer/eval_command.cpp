// trainer/eval_command.cpp: `sft eval` and `sft data`. Both run the same data pipeline as `sft train`
// (same config, same seed, so the same held-out split); eval scores through trainer/evaluate.cpp, the
// code path training uses.
#include "trainer/eval_command.h"

#include <torch/torch.h>

#include <cctype>
#include <fstream>
#include <iostream>

#include "common/errors.h"
#include "data/batch.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "model/generate.h"
#include "model/weights.h"
#include "trainer/checkpoint.h"
#include "trainer/cli.h"
#include "trainer/evaluate.h"
#include "trainer/export.h"
#include "trainer/metrics.h"
#include "trainer/setup.h"

namespace sft {
namespace fs = std::filesystem;

namespace {

// Case and punctuation folded, whitespace collapsed: "Porto-Novo." == "porto novo".
std::string normalize_answer(const std::string& text) {
  std::string out;
  bool space = false;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c >= 0x80) {
      if (space && !out.empty()) out += ' ';
      out += static_cast<char>(std::tolower(c));
      space = false;
    } else {
      space = true;
    }
  }
  return out;
}

std::string trim(const std::string& text) {
  const size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const size_t end = text.find_last_not_of(" \t\r\n");
  return text.substr(begin, end - begin + 1);
}

// The last supervised run of an example: [begin, end) token indices with labels != -100.
std::pair<size_t, size_t> last_supervised_run(const data::TokenizedExample& example) {
  size_t end = example.labels.size();
  while (end > 0 && example.labels[end - 1] == data::kIgnoreIndex) --end;
  size_t begin = end;
  while (begin > 0 && example.labels[begin - 1] != data::kIgnoreIndex) --begin;
  return {begin, end};
}

// Loads what --checkpoint / --adapter name onto the base model: a PEFT adapter directory
// (adapter_config.json) or an HF model directory (a full/freeze run's model/).
model::CausalLM load_scored_model(const Config& config, const Runtime& runtime, const CommandLine& cli,
                                  std::string& described) {
  const auto adapter = cli.value("--adapter");
  const auto checkpoint = cli.value("--checkpoint");
  if (adapter && checkpoint) throw InputError("sft eval: give --checkpoint or --adapter, not both");
  std::optional<std::string> dir = adapter ? adapter : checkpoint;
  if (dir && !fs::is_directory(*dir)) throw InputError("sft eval: '" + *dir + "' is not a directory");
  if (checkpoint && fs::exists(fs::path(*checkpoint) / "manifest.json")) {
    // A training checkpoint: base model + the method's transform + the checkpoint's trainable weights.
    model::CausalLM lm = model::load_pretrained(config.model.path, runtime.dtype, runtime.device);
    apply_finetune_method(lm, config);
    load_checkpoint_weights(lm, *checkpoint);
    described = "checkpoint " + *checkpoint + " on " + config.model.path;
    return lm;
  }
  if (dir && fs::exists(fs::path(*dir) / "config.json") && !fs::exists(fs::path(*dir) / "adapter_config.json")) {
    described = "model " + *dir;
    return model::load_pretrained(*dir, runtime.dtype, runtime.device);
  }
  model::CausalLM lm = model::load_pretrained(config.model.path, runtime.dtype, runtime.device);
  described = "base model " + config.model.path;
  if (dir) {
    if (fs::exists(fs::path(*dir) / "adapter" / "adapter_config.json")) dir = (fs::path(*dir) / "adapter").string();
    if (!fs::exists(fs::path(*dir) / "adapter_config.json")) {
      throw InputError("sft eval: '" + *dir + "' holds neither adapter_config.json (PEFT adapter) nor config.json (HF model)");
    }
    load_peft_adapter(lm, *dir);
    described += " + adapter " + *dir;
  }
  return lm;
}

}  // namespace

int command_eval(const std::vector<std::string>& args) {
  CommandLine cli("eval", args, {"--checkpoint", "--adapter", "--out"});
  if (cli.positional().size() != 1) {
    throw InputError("usage: sft eval CONFIG.yaml [--checkpoint DIR | --adapter DIR] [--out DIR] [key.sub=value ...]");
  }
  const Config config = load_config(cli.positional()[0], cli.overrides());
  const Runtime runtime = resolve_runtime(config);
  auto tokenizer = load_tokenizer_if_needed(config);
  const model::ModelConfig model_config = model::load_model_config(config.model.path);
  const data::PreparedData data = load_run_data(config, tokenizer.get(), model_config.vocab_size);
  if (data.eval.empty()) {
    throw InputError("sft eval: the held-out set is empty: set data.eval to a file or data.eval_ratio > 0");
  }
  std::string described;
  model::CausalLM lm = load_scored_model(config, runtime, cli, described);
  lm->eval();

  const fs::path out_dir = cli.value("--out") ? fs::path(*cli.value("--out")) : fs::path(config.output_dir) / "eval";
  fs::create_directories(out_dir);
  JsonlWriter examples_out(out_dir / "examples.jsonl", /*append=*/false);
  const bool generate = config.eval.generate;
  if (generate && !tokenizer) throw InputError("eval.generate needs text data and a tokenizer (not data.format tokenized)");
  model::GenerationOptions generation;
  generation.max_new_tokens = config.eval.max_new_tokens;
  generation.attention = runtime.attention;
  generation.stop_ids = model::default_stop_ids(model_config, tokenizer.get());
  int64_t exact = 0, exact_normalized = 0, generated = 0;

  const auto batches = data::make_eval_batches(data.eval, config.eval.batch_size, run_pad_id(tokenizer.get()));
  EvalResult result = evaluate(lm, batches, runtime, [&](const ExampleScore& score) {
    const data::TokenizedExample& example = data.eval[score.index];
    nlohmann::json line = {{"index", score.index},
                           {"source", example.source},
                           {"loss", score.targets ? score.loss_sum / score.targets : 0.0},
                           {"target_tokens", score.targets},
                           {"correct_tokens", score.correct}};
    if (generate) {
      auto [begin, end] = last_supervised_run(example);
      std::vector<int32_t> prompt(example.input_ids.begin(), example.input_ids.begin() + begin);
      std::vector<int32_t> answer;
      for (size_t i = begin; i < end; ++i) {
        if (!tokenizer->is_special(example.input_ids[i])) answer.push_back(example.input_ids[i]);
      }
      const std::string reference = trim(tokenizer->decode(answer, /*skip_special_tokens=*/true));
      const std::string output = trim(model::generate_text(lm, *tokenizer, prompt, generation));
      const bool match = output == reference;
      const bool match_normalized = normalize_answer(output) == normalize_answer(reference);
      exact += match;
      exact_normalized += match_normalized;
      ++generated;
      line["output"] = output;
      line["reference"] = reference;
      line["exact_match"] = match;
      line["exact_match_normalized"] = match_normalized;
    }
    examples_out.write(line);
  });
  if (generated > 0) {
    result.exact_match = static_cast<double>(exact) / generated;
    result.exact_match_normalized = static_cast<double>(exact_normalized) / generated;
  }
  nlohmann::json summary = {{"model", described},
                            {"examples", result.examples},
                            {"target_tokens", result.target_tokens},
                            {"loss", result.loss},
                            {"perplexity", result.perplexity},
                            {"token_accuracy", result.token_accuracy}};
  if (result.exact_match) {
    summary["exact_match"] = *result.exact_match;
    summary["exact_match_normalized"] = *result.exact_match_normalized;
  }
  std::ofstream(out_dir / "summary.json") << summary.dump(2) << "\n";
  std::cout << summary.dump(2) << "\n";
  return 0;
}

int command_data(const std::vector<std::string>& args) {
  CommandLine cli("data", args, {"--out", "--show"});
  if (cli.positional().size() != 1) {
    throw InputError("usage: sft data CONFIG.yaml [--out FILE.jsonl] [--show N] [key.sub=value ...]");
  }
  const Config config = load_config(cli.positional()[0], cli.overrides());
  auto tokenizer = load_tokenizer_if_needed(config);
  const model::ModelConfig model_config = model::load_model_config(config.model.path);
  const data::PreparedData data = load_run_data(config, tokenizer.get(), model_config.vocab_size);
  fs::create_directories(config.output_dir);
  const std::string report = data.report.to_json().dump(2);
  std::ofstream(fs::path(config.output_dir) / "data_report.json") << report << "\n";
  std::cout << report << "\n";
  if (auto out = cli.value("--out")) data::write_examples_jsonl(*out, data.train);
  const int64_t show = cli.integer("--show", 0);
  if (show < 0) throw InputError("sft data: --show must be >= 0");
  if (show > 0 && !tokenizer) throw InputError("sft data: --show needs a tokenizer (not data.format tokenized)");
  for (int64_t i = 0; i < show && i < static_cast<int64_t>(data.train.size()); ++i) {
    std::cout << "\n--- example " << i << " (" << data.train[i].source << ") ---\n"
              << data::format_mask_audit(data.train[i], *tokenizer) << "\n";
  }
  return 0;
}

}  // namespace sft
