// trainer/eval_command.cpp: `sft eval` and `sft data`. Both run the same data pipeline as `sft train`
// (same config, same seed, so the same held-out split); eval scores through trainer/evaluate.cpp, the
// code path training uses.
#include "trainer/eval_command.h"

#include <torch/torch.h>

#include <fstream>
#include <iostream>

#include "common/errors.h"
#include "data/pipeline.h"
#include "kernels/ops.h"
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

// The finetune transform a training checkpoint was saved with (trainer_state.json holds the run's
// resolved config), so a LoRA, freeze or full checkpoint loads whatever config `sft eval` is given.
Config checkpoint_run_config(const fs::path& checkpoint) {
  const fs::path state_path = checkpoint / kCheckpointState;
  std::ifstream in(state_path);
  if (!in) throw InputError(state_path.string() + ": missing: not a training checkpoint");
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(state_path.string() + ": invalid JSON: " + e.what());
  }
  if (!state.contains("config_yaml") || !state["config_yaml"].is_string()) {
    throw InputError(state_path.string() + ": no 'config_yaml' (the run's config)");
  }
  Config run = parse_config(state["config_yaml"].get<std::string>(), state_path.string() + " config_yaml", {}, "run");
  run.finetune.lora.init_from.reset();  // the checkpoint holds the trained adapter; its start is irrelevant
  return run;
}

// Loads what --checkpoint / --adapter name onto the base model (config.model.path):
// - a training checkpoint (output_dir/checkpoints/step-N: manifest.json, weights.safetensors): the run's
//   finetune transform plus the checkpoint's trainable weights;
// - an HF model directory (config.json, e.g. a full/freeze run's model/): that model instead of the base;
// - a PEFT adapter directory (adapter_config.json; ours or PEFT's), or a LoRA run's output_dir holding adapter/.
model::CausalLM load_scored_model(const Config& config, const Runtime& runtime, const CommandLine& cli,
                                  std::string& described) {
  const auto adapter = cli.value("--adapter");
  const auto checkpoint = cli.value("--checkpoint");
  if (adapter && checkpoint) throw InputError("sft eval: give --checkpoint or --adapter, not both");
  std::optional<fs::path> dir;
  if (adapter) dir = *adapter;
  if (checkpoint) dir = *checkpoint;
  const char* flag = adapter ? "--adapter" : "--checkpoint";
  if (dir && !fs::is_directory(*dir)) {
    throw InputError(std::string("sft eval: ") + flag + " '" + dir->string() + "' is not a directory");
  }
  if (checkpoint && (fs::exists(*dir / kCheckpointWeights) || fs::exists(*dir / kCheckpointState))) {
    if (!fs::exists(*dir / kCheckpointManifest)) {
      throw InputError((*dir / kCheckpointManifest).string() + ": missing: not a complete checkpoint");
    }
    const Config run = checkpoint_run_config(*dir);
    Config transform = config;
    transform.finetune = run.finetune;
    transform.model.quantization = run.model.quantization;  // a QLoRA checkpoint trained on the NF4 base
    transform.model.double_quantization = run.model.double_quantization;
    model::CausalLM lm = model::load_pretrained(config.model.path, runtime.dtype, runtime.device,
                                                model_load_options(transform));
    apply_finetune_method(lm, transform);
    load_checkpoint_weights(lm, *dir);  // verifies the manifest's hashes first
    described = "checkpoint " + dir->string() + " (" + enum_name(run.finetune.method) + ") on " + config.model.path;
    return lm;
  }
  if (dir && fs::exists(*dir / "config.json") && !fs::exists(*dir / "adapter_config.json")) {
    described = "model " + dir->string();
    return model::load_pretrained(*dir, runtime.dtype, runtime.device);
  }
  // model.quantization nf4: score the base the QLoRA run trained on (quantised while loading)
  model::CausalLM lm = model::load_pretrained(config.model.path, runtime.dtype, runtime.device,
                                              model_load_options(config));
  described = "base model " + config.model.path + (config.model.quantization == Quantization::kNone ? "" : " (" + std::string(enum_name(config.model.quantization)) + ")");
  if (dir) {
    if (fs::exists(*dir / "adapter" / "adapter_config.json")) dir = *dir / "adapter";
    if (!fs::exists(*dir / "adapter_config.json")) {
      throw InputError(std::string("sft eval: ") + flag + " '" + dir->string() +
                       "' holds no manifest.json (training checkpoint), adapter_config.json (PEFT adapter) or "
                       "config.json (HF model)");
    }
    load_peft_adapter(lm, *dir);
    described += " + adapter " + dir->string();
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
  const Evaluator evaluator(config, runtime, model_config, tokenizer.get(), data.eval);
  std::string described;
  model::CausalLM lm = load_scored_model(config, runtime, cli, described);
  // The same op choice as training (model.fused_ops), so a run's last eval.jsonl line equals `sft eval`
  // of its adapter, checkpoint or exported model to the last digit, whichever path loaded it.
  lm->set_fused_ops(kernels::resolve_fused_ops(config.model.fused_ops, runtime.device.type()));

  const fs::path out_dir = cli.value("--out") ? fs::path(*cli.value("--out")) : fs::path(config.output_dir) / "eval";
  fs::create_directories(out_dir);
  JsonlWriter examples_out(out_dir / "examples.jsonl", /*append=*/false);
  const EvalResult result = evaluator.run(lm, [&](const ExampleScore& score) {
    nlohmann::json line = {{"index", score.index},
                           {"source", data.eval[score.index].source},
                           {"loss", score.targets ? score.loss_sum / score.targets : 0.0},
                           {"target_tokens", score.targets},
                           {"correct_tokens", score.correct}};
    if (score.generation) {
      line["output"] = score.generation->output;
      line["reference"] = score.generation->reference;
      line["exact_match"] = score.generation->exact_match;
      line["exact_match_normalized"] = score.generation->exact_match_normalized;
    }
    examples_out.write(line);
  });
  nlohmann::json summary = result.to_json();
  summary["model"] = described;
  write_text_file(out_dir / "summary.json", summary.dump(2) + "\n");
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
  write_text_file(fs::path(config.output_dir) / "data_report.json", report + "\n");
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
