// trainer/config.cpp: YAML + dotted overrides -> Config, validation that reports every problem at once,
// the resolved-config writer and the key reference. One field list (visit_fields) serves all four.
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <type_traits>

#include "common/enum_names.h"
#include "common/errors.h"

namespace sft {
namespace {

// Every config key, in documented order, bound to its member. `V` decides what happens to each field:
// parse it from YAML, emit it, or describe it.
template <class V>
void visit_fields(Config& c, V& v) {
  v("model.path", c.model.path, "HF model directory: config.json + model.safetensors or sharded index (required)");
  v("model.dtype", c.model.dtype, "compute dtype (CPU auto = float32, CUDA auto = bfloat16)");
  v("model.attention", c.model.attention, "attention implementation");
  v("model.fused_ops", c.model.fused_ops, "fused kernels (auto: those measured faster on the device; none: the composite ATen ops)");
  v("model.gradient_checkpointing", c.model.gradient_checkpointing, "recompute layer activations in backward to save memory");
  v("model.deterministic_attention", c.model.deterministic_attention,
    "fused attention backward without atomics: bitwise reproducible dQ, costs an extra pass over the keys");
  v("model.quantization", c.model.quantization, "nf4 = QLoRA, the frozen block projections stored as 4-bit NormalFloat (blocks of 64) and dequantised per call; finetune.method lora only");
  v("model.double_quantization", c.model.double_quantization, "with nf4: quantise the per-block absmax again to 8 bits (blocks of 256, QLoRA's double quantisation)");
  v("tokenizer.path", c.tokenizer.path, "tokenizer directory (default: model.path; tokenizer.json preferred, else tokenizer.model)");
  v("data.train", c.data.train, "training JSONL file or list of files (required)");
  v("data.eval", c.data.eval, "held-out JSONL file; if absent, eval_ratio of train is held out (seeded)");
  v("data.eval_ratio", c.data.eval_ratio, "fraction of train held out when data.eval is absent, in [0, 1)");
  v("data.format", c.data.format, "data file format (auto: detected per file; tokenized = {input_ids, labels} lines)");
  v("data.template", c.data.chat_template, "chat template (auto: recognised from tokenizer_config.json)");
  v("data.system_prompt", c.data.system_prompt, "system prompt added when an example has none");
  v("data.max_seq_len", c.data.max_seq_len, "maximum tokens per example (and per packed row)");
  v("data.truncation", c.data.truncation, "right: cut long examples keeping >= 1 target token | drop: drop them");
  v("data.packing", c.data.packing, "pack several examples per row; attention never crosses examples");
  v("data.train_on_prompt", c.data.train_on_prompt, "false: loss only on assistant/response tokens (+ end-of-turn)");
  v("data.mask_history", c.data.mask_history, "multi-turn: true trains on the last assistant turn only");
  v("data.skip_invalid", c.data.skip_invalid, "false: the first malformed line is an error; true: skip and count");
  v("data.max_invalid", c.data.max_invalid, "with skip_invalid, fail when more than this many lines are bad");
  v("data.direction", c.data.direction, "forward | reverse: swap each user turn with the answer after it, to train a backward model (response -> prompt; sft synth backtranslate)");
  v("finetune.method", c.finetune.method, "fine-tuning method");
  v("finetune.lora.r", c.finetune.lora.r, "LoRA rank (> 0)");
  v("finetune.lora.alpha", c.finetune.lora.alpha, "LoRA alpha; scale = alpha / r (alpha / sqrt(r) with rslora)");
  v("finetune.lora.dropout", c.finetune.lora.dropout, "dropout on the LoRA input, in [0, 1)");
  v("finetune.lora.targets", c.finetune.lora.targets, "module names to adapt, or [all] for every linear layer in the blocks");
  v("finetune.lora.rslora", c.finetune.lora.rslora, "rank-stabilised scaling alpha / sqrt(r)");
  v("finetune.lora.init_from", c.finetune.lora.init_from, "start from an existing PEFT adapter directory");
  v("finetune.lora.dora", c.finetune.lora.dora, "DoRA (PEFT use_dora): trainable magnitude per output row times the row-normalised W + scale*B@A");
  v("finetune.lora.lr_ratio", c.finetune.lora.lr_ratio, "LoRA+ (PEFT create_loraplus_optimizer): B matrices and DoRA magnitudes train at lr * ratio (> 0); null = off");
  v("finetune.lora.init", c.finetune.lora.init, "adapter init, as PEFT init_lora_weights: default (A Kaiming-uniform, B 0), gaussian (A ~ N(0, 1/r)), pissa (SVD), olora (QR)");
  v("finetune.freeze.trainable_layers", c.finetune.freeze.trainable_layers, "N > 0: last N layers; N < 0: first |N|; or a list of layer indices");
  v("finetune.freeze.trainable_modules", c.finetune.freeze.trainable_modules, "all | list of self_attn, mlp, q_proj, ... within the trainable layers");
  v("finetune.freeze.extra_modules", c.finetune.freeze.extra_modules, "also train: embed_tokens, norm, lm_head");
  v("train.seed", c.train.seed, "seed for initialisation, shuffling, dropout and the eval split");
  v("train.epochs", c.train.epochs, "passes over the training set");
  v("train.max_steps", c.train.max_steps, "optimizer steps; -1 = epochs decide");
  v("train.micro_batch_size", c.train.micro_batch_size, "rows per micro-batch (with packing: rows of up to max_seq_len tokens)");
  v("train.grad_accum", c.train.grad_accum, "micro-batches per optimizer step");
  v("train.lr", c.train.lr, "peak learning rate");
  v("train.scheduler", c.train.scheduler, "learning-rate schedule after warmup");
  v("train.warmup_steps", c.train.warmup_steps, "linear warmup steps (0: use warmup_ratio)");
  v("train.warmup_ratio", c.train.warmup_ratio, "warmup as a fraction of total steps, used when warmup_steps is 0");
  v("train.min_lr_ratio", c.train.min_lr_ratio, "final lr as a fraction of lr (cosine and linear)");
  v("train.weight_decay", c.train.weight_decay, "AdamW decoupled weight decay; never applied to norms and biases");
  v("train.adam_betas", c.train.adam_betas, "AdamW betas [beta1, beta2]");
  v("train.adam_eps", c.train.adam_eps, "AdamW epsilon");
  v("train.max_grad_norm", c.train.max_grad_norm, "clip gradients to this global L2 norm (<= 0: no clipping)");
  v("train.optimizer_in_backward", c.train.optimizer_in_backward, "update each parameter during the backward as soon as its gradient is complete, then free the gradient (torchtune's optimizer_in_bwd): one weights-sized buffer less in full fine-tuning; needs train.grad_accum 1 and train.max_grad_norm 0, and one process");
  v("train.device", c.train.device, "training device (auto: cuda when available)");
  v("train.mixed_precision", c.train.mixed_precision, "bf16 = bf16 autocast with fp32 master weights for trained parameters (auto: bf16 on CUDA unless model.dtype is float32/float16, none on CPU)");
  v("train.threads", c.train.threads, "CPU threads; 0 = all cores");
  v("eval.every_steps", c.eval.every_steps, "evaluate every N optimizer steps; 0 = only at the end");
  v("eval.batch_size", c.eval.batch_size, "examples per evaluation batch");
  v("eval.generate", c.eval.generate, "also decode greedily and score exact match");
  v("eval.max_new_tokens", c.eval.max_new_tokens, "generation limit for eval.generate");
  v("eval.generate_batch_size", c.eval.generate_batch_size, "prompts decoded together (batched KV-cache decoding) for eval.generate");
  v("checkpoint.every_steps", c.checkpoint.every_steps, "save every N optimizer steps; 0 = only the final one");
  v("checkpoint.keep_last", c.checkpoint.keep_last, "complete checkpoints to keep (the newest is never deleted)");
  v("resume", c.resume, "auto (newest complete checkpoint in output_dir) | never | PATH");
  v("output_dir", c.output_dir, "run directory (default: runs/<config file name>)");
  v("log.every_steps", c.log.every_steps, "write metrics.jsonl every N optimizer steps");
  v("log.progress", c.log.progress, "progress bar on a terminal; plain lines otherwise");
  v("log.tensorboard", c.log.tensorboard, "also write TensorBoard event files (train/*, eval/* scalars) to output_dir/tensorboard/");
  v("dist.backend", c.dist.backend, "multi-process backend (auto: NCCL on CUDA, Gloo on CPU)");
  v("dist.timeout_s", c.dist.timeout_s, "timeout of every collective and store wait in seconds: a dead or hung rank fails the job after it");
  v("dist.bucket_mb", c.dist.bucket_mb, "gradient allreduce bucket size in MiB (buckets start during the last micro-batch's backward)");
  v("dist.force_process_group", c.dist.force_process_group, "build the process group and run the collectives even at world size 1 (e.g. to check NCCL on one GPU); off: a world of one skips them");
}

std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "null";
}

// Parses each field from a flat map of dotted key -> YAML node, collecting every problem.
class FieldParser {
 public:
  FieldParser(std::map<std::string, YAML::Node> values, std::string label)
      : values_(std::move(values)), label_(std::move(label)) {}

  void operator()(const char* key, std::string& field, const char*) {
    if (auto* node = take(key)) {
      if (!node->IsScalar()) return problem(key, "must be a string, got " + describe(*node));
      field = node->Scalar();
    }
  }
  void operator()(const char* key, std::optional<std::string>& field, const char*) {
    if (auto* node = take(key)) {
      if (node->IsNull()) return field.reset();
      if (!node->IsScalar()) return problem(key, "must be a string or null, got " + describe(*node));
      field = node->Scalar();
    }
  }
  // A config choice: one of its enum's names (common/enum_names.h).
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  void operator()(const char* key, E& field, const char*) {
    if (auto* node = take(key)) {
      if (!node->IsScalar()) return problem(key, "must be one of " + enum_names_joined<E>() + ", got " + describe(*node));
      if (std::optional<E> value = enum_from_name<E>(node->Scalar())) {
        field = *value;
      } else {
        problems_.push_back(label_ + ": " + enum_name_problem<E>(key, node->Scalar()));
      }
    }
  }
  void operator()(const char* key, kernels::FusedOpsChoice& field, const char* help) {
    std::vector<std::string> names = kernels::fused_ops_choice_names(field);
    const size_t before = problems_.size();
    (*this)(key, names, help);
    if (problems_.size() != before) return;
    const std::vector<std::string> unknown = kernels::fused_ops_choice_problems(names);
    for (const std::string& p : unknown) problems_.push_back(label_ + ": " + p);
    if (unknown.empty()) field = kernels::parse_fused_ops_choice(names);
  }
  void operator()(const char* key, int64_t& field, const char*) {
    if (auto* node = take(key)) parse_int(key, *node, field);
  }
  void operator()(const char* key, std::optional<double>& field, const char*) {
    if (auto* node = take(key)) {
      if (node->IsNull()) return field.reset();
      double value = 0;
      if (parse_number(key, *node, value)) field = value;
    }
  }
  void operator()(const char* key, double& field, const char*) {
    if (auto* node = take(key)) parse_number(key, *node, field);
  }
  void operator()(const char* key, bool& field, const char*) {
    if (auto* node = take(key)) {
      bool value = false;
      if (!node->IsScalar() || !YAML::convert<bool>::decode(*node, value)) {
        return problem(key, "must be true or false, got " + describe(*node));
      }
      field = value;
    }
  }
  void operator()(const char* key, std::vector<std::string>& field, const char*) {
    if (auto* node = take(key)) {
      if (node->IsScalar()) {
        field = {node->Scalar()};
        return;
      }
      if (!node->IsSequence()) return problem(key, "must be a string or a list of strings, got " + describe(*node));
      std::vector<std::string> items;
      for (const auto& item : *node) {
        if (!item.IsScalar()) return problem(key, "must be a list of strings");
        items.push_back(item.Scalar());
      }
      field = items;
    }
  }
  void operator()(const char* key, std::vector<double>& field, const char*) {
    if (auto* node = take(key)) {
      if (!node->IsSequence()) return problem(key, "must be a list of numbers, got " + describe(*node));
      std::vector<double> items;
      for (const auto& item : *node) {
        double value = 0;
        if (!parse_number(key, item, value)) return;
        items.push_back(value);
      }
      field = items;
    }
  }
  void operator()(const char* key, LayerSelection& field, const char*) {
    if (auto* node = take(key)) {
      if (node->IsScalar()) {
        int64_t count = 0;
        if (parse_int(key, *node, count)) field = LayerSelection{count, {}};
        return;
      }
      if (!node->IsSequence()) return problem(key, "must be an integer or a list of layer indices");
      LayerSelection selection{std::nullopt, {}};
      for (const auto& item : *node) {
        int64_t index = 0;
        if (!parse_int(key, item, index)) return;
        selection.indices.push_back(index);
      }
      field = selection;
    }
  }

  // Keys present in the YAML that no field consumed.
  void report_unknown(const std::set<std::string>& known) {
    for (const auto& [key, node] : values_) {
      std::string hint;
      for (const std::string& candidate : known) {
        const std::string leaf = candidate.substr(candidate.rfind('.') + 1);
        if (key.size() >= leaf.size() && key.compare(key.size() - leaf.size(), leaf.size(), leaf) == 0) {
          hint = " (did you mean '" + candidate + "'?)";
          break;
        }
      }
      problems_.push_back(label_ + ": unknown key '" + key + "'" + hint);
    }
  }
  void problem(const std::string& key, const std::string& what) { problems_.push_back(label_ + ": " + key + " " + what); }
  std::vector<std::string>& problems() { return problems_; }

 private:
  YAML::Node* take(const char* key) {
    auto it = values_.find(key);
    if (it == values_.end()) return nullptr;
    taken_ = it->second;
    values_.erase(it);
    return &taken_;
  }
  // The whole scalar through `convert` (std::stoll / std::stod), else a problem "KEY must be WHAT, got ...".
  template <class T, class Convert>
  bool parse_scalar(const char* key, const YAML::Node& node, T& out, const char* what, Convert convert) {
    if (node.IsScalar()) {
      const std::string& text = node.Scalar();
      try {
        size_t used = 0;
        const T value = convert(text, &used);
        if (used == text.size()) {
          out = value;
          return true;
        }
      } catch (const std::exception&) {
      }
    }
    problem(key, std::string("must be ") + what + ", got " + describe(node));
    return false;
  }
  bool parse_int(const char* key, const YAML::Node& node, int64_t& out) {
    return parse_scalar(key, node, out, "an integer",
                        [](const std::string& t, size_t* used) { return static_cast<int64_t>(std::stoll(t, used, 10)); });
  }
  bool parse_number(const char* key, const YAML::Node& node, double& out) {
    return parse_scalar(key, node, out, "a number", [](const std::string& t, size_t* used) { return std::stod(t, used); });
  }

  std::map<std::string, YAML::Node> values_;
  std::string label_;
  YAML::Node taken_;
  std::vector<std::string> problems_;
};

struct KeyCollector {
  std::set<std::string> keys;
  template <class T>
  void operator()(const char* key, T&, const char*) { keys.insert(key); }
};

// Flattens nested mappings into dotted keys; a registered leaf key keeps its node whole.
void flatten(const YAML::Node& node, const std::string& prefix, const std::set<std::string>& leaves,
             std::map<std::string, YAML::Node>& out) {
  for (const auto& item : node) {
    const std::string key = prefix.empty() ? item.first.Scalar() : prefix + "." + item.first.Scalar();
    if (item.second.IsMap() && !leaves.count(key)) {
      flatten(item.second, key, leaves, out);
    } else {
      out[key] = item.second;
    }
  }
}

void validate(const Config& c, std::vector<std::string>& problems, const std::string& label) {
  auto check = [&](bool ok, const std::string& message) {
    if (!ok) problems.push_back(label + ": " + message);
  };
  // Names of the choices (enums) were checked as they were parsed; here: the rules between keys.
  check(!c.model.path.empty(), "model.path is required");
  for (const std::string& problem : data::data_option_problems(c.data)) problems.push_back(label + ": " + problem);
  check(c.model.quantization != Quantization::kNf4 || c.finetune.method == FinetuneMethod::kLora,
        "model.quantization nf4 needs finetune.method lora (got " + std::string(enum_name(c.finetune.method)) +
            "): a 4-bit base cannot be trained, only adapted");
  check(c.train.mixed_precision != MixedPrecision::kBf16 || c.model.dtype != model::DtypeChoice::kFloat16,
        "train.mixed_precision bf16 needs model.dtype auto, bfloat16 or float32 (not float16)");
  const LoraOptions& lora = c.finetune.lora;
  check(lora.r > 0, "finetune.lora.r must be > 0");
  check(lora.alpha > 0, "finetune.lora.alpha must be > 0");
  check(lora.dropout >= 0 && lora.dropout < 1, "finetune.lora.dropout must be in [0, 1)");
  check(!lora.targets.empty(), "finetune.lora.targets must not be empty");
  const std::set<std::string> projections{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  for (const std::string& t : lora.targets) {
    check(t == "all" || projections.count(t), "finetune.lora.targets: unknown module '" + t +
                                                  "' (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all)");
  }
  check(!lora.lr_ratio || *lora.lr_ratio > 0,
        "finetune.lora.lr_ratio must be > 0 (or null for no LoRA+), got " + std::to_string(lora.lr_ratio.value_or(0)));
  check(!(lora.dora && (lora.init == LoraInit::kPissa || lora.init == LoraInit::kOlora)),
        "finetune.lora.dora with finetune.lora.init " + std::string(enum_name(lora.init)) +
            " is not implemented (the magnitude would be taken over the residual weight)");
  check(!(c.model.quantization == Quantization::kNf4 && (lora.init == LoraInit::kPissa || lora.init == LoraInit::kOlora)),
        "finetune.lora.init " + std::string(enum_name(lora.init)) +
            " with model.quantization nf4 is not implemented (the residual base would be re-quantised)");
  check(!(lora.init_from && lora.init != LoraInit::kDefault),
        "finetune.lora.init " + std::string(enum_name(lora.init)) + " cannot be combined with finetune.lora.init_from (the adapter is loaded)");
  const FreezeOptions& freeze = c.finetune.freeze;
  check(!freeze.trainable_layers.count || *freeze.trainable_layers.count != 0,
        "finetune.freeze.trainable_layers must not be 0");
  for (const std::string& m : freeze.trainable_modules) {
    check(m == "all" || m == "self_attn" || m == "mlp" || m == "input_layernorm" || m == "post_attention_layernorm" ||
              projections.count(m),
          "finetune.freeze.trainable_modules: unknown module '" + m + "'");
  }
  for (const std::string& m : freeze.extra_modules) {
    check(m == "embed_tokens" || m == "norm" || m == "lm_head",
          "finetune.freeze.extra_modules: unknown module '" + m + "' (embed_tokens, norm, lm_head)");
  }
  const TrainOptions& t = c.train;
  check(t.epochs >= 1, "train.epochs must be >= 1");
  check(t.max_steps == -1 || t.max_steps > 0, "train.max_steps must be -1 or > 0");
  check(t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1");
  check(t.grad_accum >= 1, "train.grad_accum must be >= 1");
  check(t.lr >= 0, "train.lr must be >= 0");
  check(t.warmup_steps >= 0, "train.warmup_steps must be >= 0");
  check(t.warmup_ratio >= 0 && t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)");
  check(t.min_lr_ratio >= 0 && t.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]");
  check(t.weight_decay >= 0, "train.weight_decay must be >= 0");
  check(t.adam_betas.size() == 2, "train.adam_betas must hold two numbers");
  for (double beta : t.adam_betas) check(beta >= 0 && beta < 1, "train.adam_betas must be in [0, 1)");
  check(t.adam_eps > 0, "train.adam_eps must be > 0");
  check(!t.optimizer_in_backward || t.grad_accum == 1,
        "train.optimizer_in_backward needs train.grad_accum 1 (each backward is a whole optimizer step), got " +
            std::to_string(t.grad_accum));
  check(!t.optimizer_in_backward || t.max_grad_norm <= 0,
        "train.optimizer_in_backward needs train.max_grad_norm 0: clipping by the global norm needs every "
        "gradient before the first update");
  check(t.threads >= 0, "train.threads must be >= 0");
  check(c.eval.every_steps >= 0, "eval.every_steps must be >= 0");
  check(c.eval.batch_size >= 1, "eval.batch_size must be >= 1");
  check(c.eval.max_new_tokens >= 1, "eval.max_new_tokens must be >= 1");
  check(c.eval.generate_batch_size >= 1, "eval.generate_batch_size must be >= 1");
  check(c.checkpoint.every_steps >= 0, "checkpoint.every_steps must be >= 0");
  check(c.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1");
  check(c.log.every_steps >= 1, "log.every_steps must be >= 1");
  check(!c.resume.empty(), "resume must be auto, never or a path");
  check(c.dist.timeout_s > 0, "dist.timeout_s must be > 0");
  check(c.dist.bucket_mb > 0, "dist.bucket_mb must be > 0");
}

// Emits each field into a nested YAML tree.
class FieldEmitter {
 public:
  template <class T>
  void operator()(const char* key, const T& field, const char*) {
    node_for(key) = to_node(field);
  }
  YAML::Node root{YAML::NodeType::Map};

 private:
  YAML::Node node_for(const std::string& dotted) {
    std::vector<std::string> parts;
    std::stringstream stream(dotted);
    for (std::string part; std::getline(stream, part, '.');) parts.push_back(part);
    // yaml-cpp nodes are handles: walking keeps references into `root`.
    YAML::Node node = root;
    for (size_t i = 0; i + 1 < parts.size(); ++i) node.reset(node[parts[i]]);
    return node[parts.back()];
  }
  static YAML::Node to_node(const std::string& v) { return YAML::Node(v); }
  template <class E, class = std::enable_if_t<std::is_enum_v<E>>>
  static YAML::Node to_node(E v) {
    return YAML::Node(std::string(enum_name(v)));
  }
  static YAML::Node to_node(const kernels::FusedOpsChoice& v) { return to_node(kernels::fused_ops_choice_names(v)); }
  static YAML::Node to_node(const std::optional<std::string>& v) { return v ? YAML::Node(*v) : YAML::Node(YAML::NodeType::Null); }
  static YAML::Node to_node(const std::optional<double>& v) { return v ? YAML::Node(*v) : YAML::Node(YAML::NodeType::Null); }
  static YAML::Node to_node(int64_t v) { return YAML::Node(v); }
  static YAML::Node to_node(double v) { return YAML::Node(v); }
  static YAML::Node to_node(bool v) { return YAML::Node(v); }
  template <class T>
  static YAML::Node to_node(const std::vector<T>& v) {
    YAML::Node list(YAML::NodeType::Sequence);
    for (const T& item : v) list.push_back(item);
    list.SetStyle(YAML::EmitterStyle::Flow);
    return list;
  }
  static YAML::Node to_node(const LayerSelection& v) {
    if (v.count) return YAML::Node(*v.count);
    return to_node(v.indices);
  }
};

// Writes "key  default VALUE\n      meaning" lines for `sft help config`.
class FieldDescriber {
 public:
  template <class T>
  void operator()(const char* key, const T& field, const char* help) {
    FieldEmitter one;
    one("value", field, help);
    YAML::Emitter value;
    value << YAML::Flow << one.root["value"];
    const std::string name = key;
    out << "  " << name << std::string(name.size() < 36 ? 36 - name.size() : 1, ' ') << "default " << value.c_str()
        << "\n      " << allowed(field) << help << "\n";
  }

 private:
  // A choice's allowed names, from its one list (common/enum_names.h).
  template <class T>
  static std::string allowed(const T&) {
    if constexpr (std::is_enum_v<T>) return enum_names_joined<T>() + ": ";
    return "";
  }
  static std::string allowed(const kernels::FusedOpsChoice&) {
    return "auto | none | a list of " + enum_names_joined<kernels::FusedOp>(", ") + ": ";
  }

 public:
  std::ostringstream out;
};

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& label, const std::vector<std::string>& overrides,
                    const std::string& default_name) {
  Config config;
  KeyCollector collector;
  visit_fields(config, collector);

  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw InputError(label + ": invalid YAML at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  std::map<std::string, YAML::Node> values;
  std::vector<std::string> problems;
  if (root.IsMap()) {
    flatten(root, "", collector.keys, values);
  } else if (!root.IsNull()) {
    throw InputError(label + ": the config must be a YAML mapping of keys");
  }
  for (const std::string& item : overrides) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      problems.push_back("override '" + item + "' must look like key.sub=value");
      continue;
    }
    const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
    try {
      YAML::Node value = YAML::Load(text);
      values[key] = value.IsNull() && !text.empty() && text != "null" && text != "~" ? YAML::Node(text) : value;
    } catch (const YAML::Exception& e) {
      problems.push_back("override '" + item + "': invalid value: " + e.msg);
    }
  }

  FieldParser parser(std::move(values), label);
  visit_fields(config, parser);
  parser.report_unknown(collector.keys);
  for (std::string& p : parser.problems()) problems.push_back(std::move(p));
  validate(config, problems, label);
  if (config.output_dir.empty()) config.output_dir = "runs/" + default_name;
  if (!problems.empty()) {
    std::string message = "invalid configuration (" + std::to_string(problems.size()) + " problem" +
                          (problems.size() == 1 ? "" : "s") + "):";
    for (const std::string& p : problems) message += "\n  - " + p;
    throw InputError(message);
  }
  return config;
}

Config load_config(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw InputError(path.string() + ": cannot open config file");
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path.string(), overrides, path.stem().string());
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;
  FieldEmitter emitter;
  visit_fields(copy, emitter);
  YAML::Emitter out;
  out << emitter.root;
  return std::string("# resolved sft config: every key, defaults filled in\n") + out.c_str() + "\n";
}

std::string config_reference() {
  Config defaults;
  FieldDescriber describer;
  visit_fields(defaults, describer);
  return describer.out.str();
}

}  // namespace sft
