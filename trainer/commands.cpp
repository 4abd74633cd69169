// trainer/commands.cpp: command dispatch, `sft help`, and the small commands `inspect` and `logits`.
#include "trainer/commands.h"

#include <torch/torch.h>

#include <iomanip>
#include <iostream>
#include <sstream>

#include "common/errors.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "synth/command.h"
#include "trainer/cli.h"
#include "trainer/config.h"
#include "trainer/generate_command.h"
#include "trainer/merge_command.h"
#include "trainer/eval_command.h"
#include "trainer/launch.h"
#include "trainer/train.h"
#include "trainer/version.h"

namespace sft {
namespace fs = std::filesystem;

namespace {

struct CommandInfo {
  const char* name;
  int (*run)(const std::vector<std::string>&);
  const char* usage;
  const char* summary;
};

const std::vector<CommandInfo>& command_table() {
  static const std::vector<CommandInfo> table = {
      {"train", command_train,
       "sft train CONFIG.yaml [key.sub=value ...] [--force] [--ignore-fingerprint] [--allow-batch-change] "
       "[--stop-after-steps K | --fail-at-step RANK:STEP | --grad-sync-after-backward (test hooks)]; multi-process: "
       "torchrun --no-python --nproc-per-node N ... sft train ...",
       "fine-tune (LoRA, freeze or full) as the config says; outputs in output_dir"},
      {"eval", command_eval, "sft eval CONFIG.yaml [--checkpoint DIR | --adapter DIR] [--out DIR] [key.sub=value ...]",
       "score the held-out set: loss, perplexity, token accuracy (+ exact match with eval.generate)"},
      {"data", command_data, "sft data CONFIG.yaml [--out FILE.jsonl] [--show N] [key.sub=value ...]",
       "run the data pipeline only: data report, tokenized examples, mask audit"},
      {"inspect", command_inspect, "sft inspect PATH", "list the tensors of a .safetensors file or an HF model directory"},
      {"logits", command_logits,
       "sft logits --model DIR --ids 1,2,3 [--dtype float32] [--attention auto] [--out FILE.safetensors]",
       "load a model and print the logits and next-token loss of a token sequence"},
      {"generate", command_generate,
       "sft generate --model DIR [--adapter DIR] [--template NAME] (--prompt TEXT | --input FILE.jsonl | --prompt-ids 1,2,3) [--temperature T] [--top-p P] [--top-k K] [--max-new-tokens N] [--seed S] [--system TEXT] [--out FILE] [--threads N] [--no-cache] [--ignore-eos]",
       "decode with a KV cache (greedy by default): stream text, print ids or write JSONL"},
      {"merge", command_merge, "sft merge --model DIR --adapter DIR --out DIR [--dtype bfloat16] [--shard-size BYTES] [--force]", "fold a LoRA adapter into its base model and write an HF model directory"},
      {"launch", command_launch, launch_usage(), launch_summary()},
      {"synth", command_synth, synth_usage(), synth_summary()},
      {"help", command_help, "sft help [command|config]", "this help; `sft help config` lists every config key"},
  };
  return table;
}

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');) {
    try {
      size_t used = 0;
      ids.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw InputError("--ids: '" + item + "' is not an integer token id");
    }
  }
  if (ids.empty()) throw InputError("--ids: give at least one token id");
  return ids;
}

}  // namespace

int command_help(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "config") {
    std::cout << "Config keys (YAML; override any with key.sub=value):\n" << config_reference();
    return 0;
  }
  for (const CommandInfo& info : command_table()) {
    if (!args.empty() && args[0] == info.name) {
      std::cout << "usage: " << info.usage << "\n  " << info.summary << "\n";
      return 0;
    }
  }
  if (!args.empty()) throw InputError("sft help: unknown command '" + args[0] + "'");
  std::cout << "sft " << SFT_VERSION << ": supervised fine-tuning for HF decoder models\n\ncommands:\n";
  for (const CommandInfo& info : command_table()) {
    std::cout << "  " << std::left << std::setw(10) << info.name << info.summary << "\n";
  }
  std::cout << "\n`sft help COMMAND` for its usage, `sft help config` for every config key.\n"
               "Exit codes: 0 success; 2 bad usage, config or input; 1 any other error.\n";
  return 0;
}

int command_inspect(const std::vector<std::string>& args) {
  CommandLine cli("inspect", args, {});
  if (cli.positional().size() != 1) throw InputError("usage: sft inspect PATH");
  const fs::path path = cli.positional()[0];
  auto print = [](const std::string& name, const model::StTensorInfo& info, const std::string& file) {
    std::cout << name << "  " << model::st_dtype_name(info.dtype) << " [";
    for (size_t i = 0; i < info.shape.size(); ++i) std::cout << (i ? ", " : "") << info.shape[i];
    std::cout << "]  " << file << "\n";
  };
  if (fs::is_directory(path)) {
    model::CheckpointFiles files = model::CheckpointFiles::open(path);
    for (const std::string& name : files.tensor_names()) print(name, files.info(name), files.file_of(name));
  } else {
    auto file = model::SafetensorsFile::open(path);
    for (const model::StTensorInfo& info : file->header().tensors) print(info.name, info, path.filename().string());
  }
  return 0;
}

int command_logits(const std::vector<std::string>& args) {
  CommandLine cli("logits", args, {"--model", "--ids", "--dtype", "--attention", "--out"});
  const fs::path dir = cli.required("--model");
  const std::vector<int64_t> ids = parse_ids(cli.required("--ids"));
  const at::ScalarType dtype = model::parse_dtype(cli.value("--dtype").value_or("float32"), "--dtype");
  const kernels::AttentionImpl attention = kernels::parse_attention_impl(cli.value("--attention").value_or("auto"));

  model::CausalLM lm = model::load_pretrained(dir, dtype, at::kCPU);
  lm->eval();
  const int64_t vocab = lm->config().vocab_size;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab) {
      throw InputError("--ids: token id " + std::to_string(id) + " is outside the embedding (vocab_size " +
                       std::to_string(vocab) + ")");
    }
  }
  torch::NoGradGuard no_grad;
  const int64_t n = static_cast<int64_t>(ids.size());
  at::Tensor input = at::tensor(ids, at::kLong);
  at::Tensor cu = at::tensor(std::vector<int32_t>{0, static_cast<int32_t>(n)}, at::kInt);
  kernels::PackedSequences seqs{cu, cu, n};
  at::Tensor hidden = lm->forward(input, at::arange(n, at::kLong), seqs, {attention, false});
  at::Tensor logits = lm->logits(hidden).to(at::kFloat);  // [n, vocab]
  if (auto out = cli.value("--out")) {
    model::write_safetensors(*out, {{"input_ids", input}, {"logits", logits}});
  }
  std::cout << "model " << dir.string() << " (" << lm->config().model_type << ", " << lm->config().num_hidden_layers
            << " layers), logits [" << n << ", " << vocab << "]\n";
  at::Tensor top = std::get<1>(logits.max(-1));
  for (int64_t t = 0; t < n; ++t) {
    std::cout << "  pos " << t << "  id " << ids[t] << "  argmax " << top[t].item<int64_t>() << "  logit[0..3] "
              << std::fixed << std::setprecision(5) << logits[t][0].item<float>() << " "
              << logits[t][1].item<float>() << " " << logits[t][2].item<float>() << "\n";
  }
  if (n > 1) {
    at::Tensor loss = at::cross_entropy_loss(logits.slice(0, 0, n - 1), input.slice(0, 1));
    std::cout << "next-token loss " << std::setprecision(6) << loss.item<double>() << "\n";
  }
  return 0;
}

int run_sft(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") return command_help({});
  if (args[0] == "--version" || args[0] == "version") {
    std::cout << version_report();
    return 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  for (const CommandInfo& info : command_table()) {
    if (args[0] == info.name) return info.run(rest);
  }
  throw InputError("unknown command '" + args[0] + "' (see `sft help`)");
}

}  // namespace sft
