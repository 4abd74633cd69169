#!/usr/bin/env python3
"""Golden values for training parity (issue 4), made with transformers + peft + torch.optim.AdamW.

Data: 16 pre-tokenized, masked examples (uneven lengths) in the `tokenized` JSONL format
({"input_ids": [...], "labels": [...]}, labels -100 where unsupervised), so the tokenizer plays no part.
With micro_batch_size 8 and grad_accum 2 every optimizer step sees all 16 examples, so the reference
loss does not depend on shuffle order. The loss of a step is the sum of target-token cross-entropies
over the whole step divided by the step's target count (no per-micro-batch averaging).

Runs (10 optimizer steps each, cosine schedule with 2 warmup steps, clip 1.0, weight decay 0.01):
  lora           PEFT LoRA r=4 alpha=8 on q,k,v,o,gate,up,down, dropout 0 (init saved as adapter_init/)
  rslora         the same with use_rslora=True: scale alpha/sqrt(r) (init saved as adapter_init_rslora/)
  full           every parameter trains
  full_in_backward  full, but the whole step as one micro-batch of 16, no clipping, and torch's
                 optimizer-in-backward recipe (register_post_accumulate_grad_hook, one AdamW and LambdaLR per
                 parameter, step and set_to_none zero_grad in the hook): train.optimizer_in_backward's reference
  freeze         LLaMA-Factory freeze: trainable_layers 1, modules all, extra_modules [norm]
  freeze_narrow  LLaMA-Factory freeze: trainable_layers -1, modules [mlp], extra [embed_tokens, lm_head]
Adapter methods (issue 14; new files only, the runs above are unchanged):
  dora           PEFT use_dora=True, otherwise as lora (init saved as adapter_init_dora/); DoRA magnitudes
                 decay like matrices (HF Trainer and PEFT's LoRA+ groups decay every non-norm, non-bias tensor);
                 plus adapter_dora_random/ (B and magnitudes perturbed) and dora_random_logits.safetensors:
                 PEFT's logits for a fixed id sequence with it
  loraplus       lora with PEFT's create_loraplus_optimizer, loraplus_lr_ratio 4 and loraplus_weight_decay =
                 weight decay (init saved as adapter_init_loraplus/); loraplus_groups.json: each parameter's lr
                 and weight decay in that optimizer, for a LoRA and a DoRA model
  pissa_init / olora_init.safetensors: init_lora_weights="pissa" / "olora" on the base (r=4, alpha=8, every
                 projection): lora_A/lora_B as PEFT saves them and each adapted module's modified base weight
Freeze runs set requires_grad with LLaMA-Factory's own rules (_setup_freeze_tuning: ".{layer}.{module}"
and extra-module substrings of the parameter name), reimplemented in llamafactory_trainable().
Outputs in <out>/train/: data.jsonl, base model dir, per run: <run>_losses.json, <run>_final.safetensors,
plus lora_grads.safetensors: LoRA gradients after the first backward (B set non-zero first so A has a
gradient; the adapter used is adapter_grad/), and freeze_sets.json: the trainable parameter names
LLaMA-Factory's rules give for a set of freeze settings (our explicit layer lists as layer ids).
"""
import argparse
import hashlib
import json
import math
import random
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

STEPS = 10
LR = 1e-3
WARMUP = 2
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
BETAS = (0.9, 0.999)
EPS = 1e-8


def make_data(vocab: int):
    rng = random.Random(1234)
    examples = []
    for _ in range(16):
        length = rng.randint(6, 40)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        labels = [-100] * prompt + ids[prompt:]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def lr_lambda(step):
    if step < WARMUP:
        return step / max(1, WARMUP)
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def step_loss(model, examples):
    """Sum of target cross-entropies over all examples (one forward per example), and target count."""
    total, count = 0.0, 0
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        labels = torch.tensor(ex["labels"])
        logits = model(input_ids=ids).logits[0, :-1].float()
        targets = labels[1:]
        mask = targets != -100
        total = total + torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
        count += int(mask.sum())
    return total, count


def decays(name, p):
    """Our weight-decay rule: matrices, and DoRA magnitudes (1-D, but neither a norm nor a bias)."""
    return p.dim() >= 2 or "lora_magnitude_vector" in name


def train(model, params, examples, optimizer=None):
    """The reference loop: grad over the whole step / total targets, clip, AdamW, LambdaLR."""
    if optimizer is None:
        decay = [p for n, p in params if decays(n, p)]
        no_decay = [p for n, p in params if not decays(n, p)]
        groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    losses, lrs, norms = [], [], []
    model.train()
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        # Two micro-batches of 8, as our run does; the normaliser is the whole step's target count.
        total_targets = count_targets(examples)
        loss_value = 0.0
        for micro in (examples[:8], examples[8:]):
            loss_sum, _ = step_loss(model, micro)
            (loss_sum / total_targets).backward()
            loss_value += loss_sum.item()
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], MAX_GRAD_NORM, foreach=False)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        losses.append(loss_value / total_targets)
        norms.append(norm.item())
    return losses, lrs, norms


def train_in_backward(model, params, examples):
    """PyTorch's "fuse the optimizer step into backward" recipe: each parameter's AdamW steps in its
    post-accumulate-grad hook and frees the gradient. One backward per step (no accumulation), no clipping;
    the grad norm (for the log only) is clip_grad_norm_'s formula over the norms the hooks saw."""
    optimizers, schedulers, norms_seen = {}, [], {}
    for n, p in params:
        opt = torch.optim.AdamW([{"params": [p], "weight_decay": WEIGHT_DECAY if decays(n, p) else 0.0}], lr=LR,
                                betas=BETAS, eps=EPS, foreach=False)
        optimizers[p] = opt
        schedulers.append(torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda))

        def hook(param, name=n):
            norms_seen[name] = torch.linalg.vector_norm(param.grad, 2)
            optimizers[param].step()
            optimizers[param].zero_grad(set_to_none=True)
        p.register_post_accumulate_grad_hook(hook)
    losses, lrs, norms = [], [], []
    model.train()
    for _ in range(STEPS):
        total_targets = count_targets(examples)
        norms_seen.clear()
        lrs.append(next(iter(optimizers.values())).param_groups[0]["lr"])
        loss_sum, _ = step_loss(model, examples)
        (loss_sum / total_targets).backward()
        assert all(p.grad is None for _, p in params), "a gradient outlived its hook"
        norms.append(torch.linalg.vector_norm(torch.stack([norms_seen[n] for n, _ in params if n in norms_seen]), 2).item())
        for scheduler in schedulers:
            scheduler.step()
        losses.append(loss_sum.item() / total_targets)
    return losses, lrs, norms


def count_targets(examples):
    return sum(1 for ex in examples for t in ex["labels"][1:] if t != -100)


# Freeze settings (trainable_layers, trainable_modules, extra_modules) as in our config.
FREEZE_RUNS = {
    "freeze": dict(trainable_layers=1, trainable_modules=["all"], extra_modules=["norm"]),
    "freeze_narrow": dict(trainable_layers=-1, trainable_modules=["mlp"], extra_modules=["embed_tokens", "lm_head"]),
}
FREEZE_SETS = list(FREEZE_RUNS.values()) + [
    dict(trainable_layers=1, trainable_modules=["all"], extra_modules=[]),
    dict(trainable_layers=-1, trainable_modules=["all"], extra_modules=[]),
    dict(trainable_layers=5, trainable_modules=["all"], extra_modules=[]),
    dict(trainable_layers=[0], trainable_modules=["all"], extra_modules=[]),
    dict(trainable_layers=[0, 1], trainable_modules=["self_attn"], extra_modules=[]),
    dict(trainable_layers=1, trainable_modules=["mlp", "input_layernorm"], extra_modules=["embed_tokens"]),
    dict(trainable_layers=-2, trainable_modules=["self_attn"], extra_modules=["norm", "lm_head"]),
]


def llamafactory_trainable(model, trainable_layers, trainable_modules, extra_modules):
    """Parameter names LLaMA-Factory's _setup_freeze_tuning (model/adapter.py) leaves trainable: the layer
    ids (last N for N > 0, first |N| for N < 0; our explicit lists as given), then the substrings
    ".{id}.{module}" ("all": ".{id}.") and each extra module name, matched anywhere in the name."""
    n_layers = model.config.num_hidden_layers
    if isinstance(trainable_layers, list):
        layer_ids = trainable_layers
    elif trainable_layers > 0:
        layer_ids = range(max(0, n_layers - trainable_layers), n_layers)
    else:
        layer_ids = range(min(-trainable_layers, n_layers))
    patterns = [".{:d}.{}".format(i, m if m != "all" else "") for m in trainable_modules for i in layer_ids]
    patterns += extra_modules
    return [n for n, _ in model.named_parameters() if any(p in n for p in patterns)]


def save_run(out, name, history, final):
    """<name>_losses.json (loss, lr, grad_norm per step) and <name>_final.safetensors."""
    losses, lrs, norms = history
    save_file({n: p.detach().clone().contiguous() for n, p in final.items()}, str(out / f"{name}_final.safetensors"))
    (out / f"{name}_losses.json").write_text(json.dumps({"loss": losses, "lr": lrs, "grad_norm": norms}, indent=1))
    print(f"[golden] {name} losses {losses[0]:.5f} -> {losses[-1]:.5f}")


def peft_name(name):
    """A PEFT parameter name as PEFT saves it: no adapter name; DoRA magnitudes without ".weight"."""
    return name.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")


def train_peft_run(out, base_dir, examples, name, cfg, init_dir, make_optimizer=None):
    """Seed 7, a PEFT model from cfg (its init saved as init_dir/), 10 steps; <name>_* files as save_run."""
    from peft import get_peft_model
    torch.manual_seed(7)
    peft_model = get_peft_model(load_base(base_dir), cfg)
    peft_model.save_pretrained(out / init_dir)
    params = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    final = {peft_name(n): p for n, p in params}
    optimizer = make_optimizer(peft_model) if make_optimizer else None
    save_run(out, name, train(peft_model, params, examples, optimizer), final)


def load_base(base_dir):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa")


def build(out: Path, models_dir: Path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_dir = out / "base"
    if base_dir.exists():
        shutil.rmtree(base_dir)
    shutil.copytree(models_dir / "llama_gqa", base_dir)
    (base_dir / "reference.safetensors").unlink()
    vocab = json.loads((base_dir / "config.json").read_text())["vocab_size"]
    examples = make_data(vocab)
    with open(out / "data.jsonl", "w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # ---- LoRA, and LoRA with rank-stabilised scaling ----
    lora_cfg = LoraConfig(**LORA_KWARGS)
    rslora_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM",
                            use_rslora=True)
    for name, cfg, init_dir in (("lora", lora_cfg, "adapter_init"), ("rslora", rslora_cfg, "adapter_init_rslora")):
        train_peft_run(out, base_dir, examples, name, cfg, init_dir)

    # ---- LoRA gradients after one backward, from an adapter with non-zero B ----
    grad_model = perturbed_adapter_model(base_dir, lora_cfg)
    grad_model.save_pretrained(out / "adapter_grad")
    grad_model.train()
    loss_sum, count = step_loss(grad_model, examples)
    (loss_sum / count).backward()
    grads = {n.replace(".default", ""): p.grad.detach().clone().contiguous()
             for n, p in grad_model.named_parameters() if p.requires_grad}
    save_file(grads, str(out / "lora_grads.safetensors"))

    # ---- full ----
    torch.manual_seed(9)
    model = load_base(base_dir)
    params = [(n, p) for n, p in model.named_parameters()]
    save_run(out, "full", train(model, params, examples), dict(params))
    torch.manual_seed(9)
    model = load_base(base_dir)
    params = [(n, p) for n, p in model.named_parameters()]
    save_run(out, "full_in_backward", train_in_backward(model, params, examples), dict(params))

    # ---- freeze, with LLaMA-Factory's requires_grad rules ----
    for name, settings in FREEZE_RUNS.items():
        model = load_base(base_dir)
        trainable = set(llamafactory_trainable(model, **settings))
        for n, p in model.named_parameters():
            p.requires_grad = n in trainable
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        save_run(out, name, train(model, params, examples), dict(model.named_parameters()))

    model = load_base(base_dir)
    sets = [dict(settings, trainable=llamafactory_trainable(model, **settings)) for settings in FREEZE_SETS]
    (out / "freeze_sets.json").write_text(json.dumps(sets, indent=1))

    build_adapter_methods(out, base_dir, examples, lora_cfg)


LORA_KWARGS = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                  "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
LORAPLUS_RATIO = 4.0
DORA_IDS = [1, 17, 33, 101, 7, 250, 64, 9, 3, 200, 5, 42]


def loraplus_optimizer(peft_model):
    from peft.optimizers import create_loraplus_optimizer
    return create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=LORAPLUS_RATIO,
                                     loraplus_weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS, foreach=False)


def build_adapter_methods(out, base_dir, examples, lora_cfg):
    """DoRA, LoRA+ and PiSSA/OLoRA init references (issue 14), written under new names only."""
    import copy
    from peft import get_peft_model

    # ---- DoRA ----
    dora_cfg = copy.deepcopy(lora_cfg)
    dora_cfg.use_dora = True
    train_peft_run(out, base_dir, examples, "dora", dora_cfg, "adapter_init_dora")
    # A DoRA adapter far from its init (B and magnitudes perturbed) and PEFT's logits for DORA_IDS with it.
    dora_model = perturbed_adapter_model(base_dir, dora_cfg)
    dora_model.save_pretrained(out / "adapter_dora_random")
    dora_model.eval()
    with torch.no_grad():
        logits = dora_model(input_ids=torch.tensor([DORA_IDS])).logits[0].float().contiguous()
    save_file({"logits": logits, "ids": torch.tensor(DORA_IDS)}, str(out / "dora_random_logits.safetensors"))

    # ---- LoRA+: PEFT's optimizer groups, and a trajectory ----
    groups = {}
    for kind, cfg in (("lora", lora_cfg), ("dora", dora_cfg)):
        torch.manual_seed(7)
        model = get_peft_model(load_base(base_dir), cfg)
        optimizer = loraplus_optimizer(model)
        names = {id(p): peft_name(n) for n, p in model.named_parameters()}
        groups[kind] = {names[id(p)]: {"lr": g["lr"], "weight_decay": g["weight_decay"]}
                        for g in optimizer.param_groups for p in g["params"]}
    (out / "loraplus_groups.json").write_text(json.dumps({"lr": LR, "ratio": LORAPLUS_RATIO, "groups": groups},
                                                         indent=1))
    train_peft_run(out, base_dir, examples, "loraplus", lora_cfg, "adapter_init_loraplus", loraplus_optimizer)

    # ---- PiSSA / OLoRA initialisation: the adapter and the modified base weights ----
    for init in ("pissa", "olora"):
        cfg = copy.deepcopy(lora_cfg)
        cfg.init_lora_weights = init
        model = get_peft_model(load_base(base_dir), cfg)
        tensors = {}
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n or ("base_layer.weight" in n):
                tensors[n.replace(".default", "").replace(".base_layer", "")] = p.detach().clone().contiguous()
        save_file(tensors, str(out / f"{init}_init.safetensors"))
        print(f"[golden] {init} init: {len(tensors)} tensors")


def perturbed_adapter_model(base_dir, cfg):
    """The PEFT model of cfg on the base, moved far from its init (seed 8): every lora_B ~ N(0, 0.1), so A's
    path has a gradient, and (DoRA) every magnitude scaled by 1 + 0.2 U(0, 1), in named_parameters order."""
    from peft import get_peft_model

    torch.manual_seed(8)
    model = get_peft_model(load_base(base_dir), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
            elif "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.rand_like(p))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", default=str(root / ".cache" / "golden"))
    parser.add_argument("--adapters-only", action="store_true",
                        help="(re)make only the adapter-method references (issue 14) beside existing ones; "
                             "the other files and the stamp are left alone")
    args = parser.parse_args()
    out = Path(args.out) / "train"
    models_dir = Path(args.out) / "models"
    if not (models_dir / "llama_gqa" / "config.json").exists():
        sys.exit("make_train_golden: run scripts/make_golden.py first (needs models/llama_gqa)")
    if args.adapters_only:
        torch.set_num_threads(2)
        from peft import LoraConfig
        base_dir = out / "base"
        examples = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
        build_adapter_methods(out, base_dir, examples, LoraConfig(**LORA_KWARGS))
        return
    digest = hashlib.sha256(Path(__file__).read_bytes() + (models_dir / "STAMP").read_bytes()).hexdigest()
    stamp = out / "STAMP"
    if stamp.exists() and stamp.read_text() == digest:
        print(f"[golden] training references up to date in {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    build(out, models_dir)
    stamp.write_text(digest)


if __name__ == "__main__":
    main()
