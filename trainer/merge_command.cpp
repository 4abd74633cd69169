// trainer/merge_command.cpp: `sft merge --model DIR --adapter DIR --out DIR [--dtype D] [--shard-size BYTES]`.
// The merge runs in float32 (W + scale * B @ A; DoRA: m * (W + scale * B @ A) / ||W + scale * B @ A|| per output
// row, as PEFT's merge) and casts once at the end, so a bfloat16 output rounds each weight once, as PEFT's
// merge_and_unload on an fp32 model followed by .to(bfloat16) does.
// A QLoRA run's adapter (model.quantization nf4) is an ordinary PEFT adapter and merges the same way: into
// the unquantised weights read from --model, never into dequantised 4-bit weights (peft #2321,
// unsloth-zoo #810), so the merged model is W + scale * B @ A with the original W.
#include "trainer/merge_command.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "model/lora.h"
#include "model/weights.h"
#include "trainer/cli.h"
#include "trainer/export.h"

namespace sft {
namespace fs = std::filesystem;

namespace {

// The base model's stored dtype (config.json torch_dtype, or dtype in newer transformers); float32 if absent.
at::ScalarType base_dtype(const fs::path& model_dir) {
  std::ifstream in(model_dir / "config.json");
  if (!in) throw InputError((model_dir / "config.json").string() + ": cannot open (is --model an HF model directory?)");
  const nlohmann::json config = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (config.is_object() && config.contains(key) && config[key].is_string()) {
      return model::parse_dtype(config[key].get<std::string>(), (model_dir / "config.json").string() + " " + key);
    }
  }
  return at::kFloat;
}

}  // namespace

int command_merge(const std::vector<std::string>& args) {
  CommandLine cli("merge", args, {"--model", "--adapter", "--out", "--dtype", "--shard-size"}, {"--force"});
  const fs::path model_dir = cli.required("--model");
  const fs::path adapter_dir = cli.required("--adapter");
  const fs::path out_dir = cli.required("--out");
  const at::ScalarType dtype =
      cli.value("--dtype") ? model::parse_dtype(*cli.value("--dtype"), "--dtype") : base_dtype(model_dir);
  const int64_t shard_bytes = cli.integer("--shard-size", int64_t{5} << 30);  // transformers' default 5GB
  if (shard_bytes <= 0) throw InputError("--shard-size: must be > 0 bytes");
  if (fs::exists(out_dir) && !fs::is_empty(out_dir) && !cli.has("--force")) {
    throw InputError("--out '" + out_dir.string() + "' exists and is not empty; pass --force to replace it");
  }

  model::CausalLM lm = model::load_pretrained(model_dir, at::kFloat, at::kCPU);
  const model::LoraSpec spec = load_peft_adapter(lm, adapter_dir);
  const size_t adapted = model::lora_modules(lm).size();
  {
    torch::NoGradGuard no_grad;
    model::merge_lora(lm);
  }
  // Written next to the target and renamed, so a failed merge never leaves a half-written model dir.
  const fs::path tmp = out_dir.string() + ".tmp-merge";
  fs::remove_all(tmp);
  model::save_pretrained(lm, model_dir, tmp, dtype, shard_bytes);
  copy_tokenizer_files(model_dir, tmp);
  fs::remove_all(out_dir);
  fs::rename(tmp, out_dir);
  std::cout << "sft merge: folded " << (spec.dora ? "DoRA" : "LoRA") << " (r " << spec.rank << ", " << adapted << " modules) from " << adapter_dir.string()
            << " into " << model_dir.string() << "; wrote " << out_dir.string() << " (" << model::dtype_name(dtype)
            << ")\n";
  return 0;
}

}  // namespace sft
