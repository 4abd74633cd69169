"""Multi-process `sft train` (issue 11) under the real torchrun from .venv, CPU + Gloo, on loopback.

The tiny Llama and the 16 pre-tokenized examples of scripts/make_train_golden.py; 1 thread per rank.
References are single-process `sft train` runs, whose parity with transformers + PEFT tests/test_train.cpp
checks. Every subprocess runs in its own session with a timeout and is killed (the whole session) on
failure or at the end, so no test leaves processes behind.

- 2 processes x grad_accum 1 == 1 process x grad_accum 2 (LoRA with dropout 0.1, freeze, full): every
  logged loss within 1e-6 relative, final trained tensors within 1e-5 * max|ref|.
- Resume 2 -> 1 and 1 -> 2 processes (grad_accum scaled) continues the uninterrupted run; a global-batch
  change is refused (exit 2, saying how to keep it) unless --allow-batch-change.
- SIGTERM to torchrun mid-run: one new complete checkpoint, resume exact.
- Faults without torchrun's agent (the ranks on their own must notice): a rank that throws, is SIGKILLed
  or SIGSTOPped makes the other exit non-zero within dist.timeout_s + 10 s; a config mismatch stops every
  rank with exit 2 naming the rank; bad RANK/WORLD_SIZE and nccl on CPU exit 2.
- Elastic: torchrun --max-restarts 1, SIGKILL rank 1 mid-run; the restarted group resumes and finishes
  with the uninterrupted run's losses.
- dist.force_process_group: a Gloo group of one (alone and under torchrun) trains exactly as one process.
- Held-out evaluation sharded over 2 ranks equals the single-process one (also with generation).
- `sft launch` gives the same metrics and tensors as torchrun, bit for bit.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = ROOT / ".venv" / "bin" / "torchrun"
TIMEOUT_S = 10  # dist.timeout_s of the fault tests


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env():
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE"):
        env.pop(key, None)
    env["OMP_NUM_THREADS"] = "1"
    return env


class Proc:
    """A subprocess in its own session, output to a file; kill() ends the whole session."""

    def __init__(self, args, log: Path, env=None):
        self.log = log
        self.handle = open(log, "w")
        self.popen = subprocess.Popen([str(a) for a in args], stdout=self.handle, stderr=subprocess.STDOUT,
                                      env=env or base_env(), start_new_session=True, cwd=ROOT)

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout=timeout)
        finally:
            self.handle.flush()

    def kill(self):
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=30)
        else:  # the leader is gone; children of its session may not be
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.handle.close()

    def output(self):
        self.handle.flush()
        return self.log.read_text()


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.kill()


def write_config(tmp: Path, golden: Path, name: str, extra: str) -> Path:
    train = golden / "train"
    text = (f"model: {{path: {train / 'base'}, attention: sdpa}}\n"
            f"data: {{train: {train / 'data.jsonl'}, format: tokenized, packing: false, max_seq_len: 64}}\n"
            "train: {epochs: 2, micro_batch_size: 2, grad_accum: 2, lr: 1.0e-3, warmup_steps: 2, scheduler: cosine,\n"
            "        weight_decay: 0.01, max_grad_norm: 1.0, seed: 3, threads: 1}\n"
            "log: {every_steps: 1, progress: false}\n"
            f"dist: {{timeout_s: {TIMEOUT_S}}}\n"
            f"output_dir: {tmp / name}\n" + extra)
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


LORA = "finetune: {method: lora, lora: {r: 4, alpha: 8, dropout: 0.1}}\n"
FREEZE = "finetune: {method: freeze, freeze: {trainable_layers: 1, extra_modules: [norm]}}\n"
FULL = "finetune: {method: full}\n"


def run_single(procs, sft_binary, config, *args, timeout=120, expect=0):
    log = Path(str(config) + f".single{len(procs)}.log")
    p = Proc([sft_binary, "train", config, *args], log)
    procs.append(p)
    rc = p.wait(timeout)
    assert rc == expect, p.output()
    return p.output()


def torchrun_args(nproc, port, extra=()):
    return [TORCHRUN, "--no-python", "--nnodes", "1", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
            "--master-port", str(port), *extra]


def start_torchrun(procs, sft_binary, config, *args, nproc=2, extra=()):
    log = Path(str(config) + f".torchrun{len(procs)}.log")
    # torchrun's agent makes a torchelastic_* log directory with tempfile and never removes it: TMPDIR puts
    # it in this test's own temporary directory, not in /tmp.
    env = base_env()
    env["TMPDIR"] = str(Path(config).parent)
    p = Proc([*torchrun_args(nproc, free_port(), extra), sft_binary, "train", config, *args], log, env=env)
    procs.append(p)
    return p


def run_torchrun(procs, sft_binary, config, *args, nproc=2, timeout=180, expect=0):
    p = start_torchrun(procs, sft_binary, config, *args, nproc=nproc)
    rc = p.wait(timeout)
    assert rc == expect, p.output()
    return p.output()


def metrics(out_dir: Path):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def expect_same_losses(ours, ref, rel=1e-6):
    assert [m["step"] for m in ours] == [m["step"] for m in ref]
    for a, b in zip(ours, ref):
        assert math.isclose(a["loss"], b["loss"], rel_tol=rel), (a, b)
        assert a["tokens"] == b["tokens"] and a["target_tokens"] == b["target_tokens"], (a, b)
        assert math.isclose(a["grad_norm"], b["grad_norm"], rel_tol=1e-5, abs_tol=1e-7), (a, b)


def trained_tensors(out_dir: Path):
    adapter = out_dir / "adapter" / "adapter_model.safetensors"
    return load_file(adapter if adapter.exists() else out_dir / "model" / "model.safetensors")


def expect_same_tensors(ours_dir: Path, ref_dir: Path):
    ours, ref = trained_tensors(ours_dir), trained_tensors(ref_dir)
    assert ours.keys() == ref.keys()
    for name, r in ref.items():
        tol = 1e-5 * max(r.abs().max().item(), 1e-12)
        assert (ours[name].float() - r.float()).abs().max().item() <= tol, name


def complete_checkpoints(out_dir: Path):
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.name.startswith("step-") and "." not in d.name
                  and (d / "manifest.json").exists())


# ---- exact data parallelism ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "freeze", "full"])
def test_two_processes_equal_one_process_with_double_grad_accum(tmp_path, golden_dir, sft_binary, procs, method):
    finetune = {"lora": LORA, "freeze": FREEZE, "full": FULL}[method]
    ref_cfg = write_config(tmp_path, golden_dir, "ref", finetune)
    run_single(procs, sft_binary, ref_cfg)
    dist_cfg = write_config(tmp_path, golden_dir, "dist", finetune)
    log = run_torchrun(procs, sft_binary, dist_cfg, "train.grad_accum=1")
    assert "2 processes (gloo), global batch 4 rows" in log
    ours, ref = metrics(tmp_path / "dist"), metrics(tmp_path / "ref")
    assert len(ref) == 8
    expect_same_losses(ours, ref)
    expect_same_tensors(tmp_path / "dist", tmp_path / "ref")
    state = json.loads((complete_checkpoints(tmp_path / "dist")[-1] / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["grad_accum"] == 1
    assert (complete_checkpoints(tmp_path / "dist")[-1] / "ranks" / "rank-00001.json").exists()


def test_forced_process_group_of_one_trains_exactly_as_a_single_process(tmp_path, golden_dir, sft_binary, procs):
    # dist.force_process_group builds a real Gloo group of one (how the GPU proof reaches NCCL on one GPU):
    # with no launcher (its own loopback store on a free port) and under torchrun --nproc-per-node 1. The
    # collectives run (comm_wait_s is logged only when they do) and change nothing.
    ref_cfg = write_config(tmp_path, golden_dir, "ref", LORA)
    run_single(procs, sft_binary, ref_cfg)
    ref = metrics(tmp_path / "ref")
    assert "comm_wait_s" not in ref[0]
    alone_cfg = write_config(tmp_path, golden_dir, "alone", LORA)
    log = run_single(procs, sft_binary, alone_cfg, "dist.force_process_group=true")
    assert "1 processes (gloo), global batch 4 rows" in log
    torchrun_cfg = write_config(tmp_path, golden_dir, "torchrun1", LORA)
    log = run_torchrun(procs, sft_binary, torchrun_cfg, "dist.force_process_group=true", nproc=1)
    assert "1 processes (gloo), global batch 4 rows" in log
    for name in ("alone", "torchrun1"):
        ours = metrics(tmp_path / name)
        assert all("comm_wait_s" in m for m in ours), name
        expect_same_losses(ours, ref, rel=0.0)
        expect_same_tensors(tmp_path / name, tmp_path / "ref")


def test_two_processes_write_one_tensorboard_log_from_rank_0(tmp_path, golden_dir, sft_binary, procs):
    # log.tensorboard under torchrun: only rank 0 writes (one event file), and its scalars are the global
    # values metrics.jsonl holds (tests/python/test_tensorboard.py checks the reader side in depth).
    from test_tensorboard import raw_tag_steps, tensorboard_scalars
    cfg = write_config(tmp_path, golden_dir, "tb", LORA)
    run_torchrun(procs, sft_binary, cfg, "train.grad_accum=1", "log.tensorboard=true")
    pairs, files = raw_tag_steps(tmp_path / "tb")
    assert len(files) == 1, files
    assert len(pairs) == len(set(pairs))
    losses = [(m["step"], float(np.float32(m["loss"]))) for m in metrics(tmp_path / "tb")]
    assert len(losses) == 8 and tensorboard_scalars(tmp_path / "tb")["train/loss"] == losses


# ---- resume across world sizes --------------------------------------------------------------------------

def test_resume_two_to_one_and_one_to_two_processes_continue_the_run(tmp_path, golden_dir, sft_binary, procs):
    ref_cfg = write_config(tmp_path, golden_dir, "ref", LORA)
    run_single(procs, sft_binary, ref_cfg)
    ref = metrics(tmp_path / "ref")

    # 2 -> 1: stop after step 3 under torchrun (grad_accum 1), continue alone with grad_accum 2.
    a = write_config(tmp_path, golden_dir, "a", LORA)
    run_torchrun(procs, sft_binary, a, "train.grad_accum=1", "--stop-after-steps", "3")
    assert [c.name for c in complete_checkpoints(tmp_path / "a")] == ["step-00000003"]
    # The global batch would change (4 -> 2 rows): refused, with the way to keep it.
    p = Proc([sft_binary, "train", a, "train.grad_accum=1"], tmp_path / "refused.log")
    procs.append(p)
    assert p.wait(60) == 2, p.output()
    assert "train.grad_accum=2" in p.output() and "--allow-batch-change" in p.output(), p.output()
    run_single(procs, sft_binary, a)  # grad_accum 2 from the config
    expect_same_losses(metrics(tmp_path / "a"), ref)
    expect_same_tensors(tmp_path / "a", tmp_path / "ref")

    # 1 -> 2: stop after step 5 alone, continue under torchrun with grad_accum 1.
    b = write_config(tmp_path, golden_dir, "b", LORA)
    run_single(procs, sft_binary, b, "--stop-after-steps", "5")
    run_torchrun(procs, sft_binary, b, "train.grad_accum=1")
    expect_same_losses(metrics(tmp_path / "b"), ref)
    expect_same_tensors(tmp_path / "b", tmp_path / "ref")


def test_global_batch_change_is_allowed_with_the_flag(tmp_path, golden_dir, sft_binary, procs):
    c = write_config(tmp_path, golden_dir, "c", LORA)
    run_torchrun(procs, sft_binary, c, "train.grad_accum=1", "--stop-after-steps", "2")
    log = run_single(procs, sft_binary, c, "train.grad_accum=1", "--allow-batch-change")
    assert "resuming from" in log
    steps = [m["step"] for m in metrics(tmp_path / "c")]
    assert steps[:2] == [1, 2] and steps[-1] > 8  # 2 global steps of 4 rows, then steps of 2 rows


# ---- SIGTERM ---------------------------------------------------------------------------------------------

def wait_for_step(out_dir: Path, step: int, proc: Proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = out_dir / "metrics.jsonl"
        if path.exists():
            lines = path.read_text().splitlines()
            if lines:
                try:
                    if json.loads(lines[-1])["step"] >= step:
                        return
                except json.JSONDecodeError:
                    pass
        assert proc.popen.poll() is None, proc.output()
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached: {proc.output()}")


def test_sigterm_to_torchrun_saves_one_consistent_checkpoint_and_resume_is_exact(tmp_path, golden_dir, sft_binary, procs):
    long = "train.epochs=40"  # 160 steps
    ref_cfg = write_config(tmp_path, golden_dir, "ref", LORA + "checkpoint: {every_steps: 0}\n")
    run_single(procs, sft_binary, ref_cfg, long)
    cfg = write_config(tmp_path, golden_dir, "run", LORA + "checkpoint: {every_steps: 0}\n")
    p = start_torchrun(procs, sft_binary, cfg, long, "train.grad_accum=1")
    wait_for_step(tmp_path / "run", 5, p)
    p.popen.send_signal(signal.SIGTERM)
    p.wait(60)
    out = p.output()
    assert "stopped after step" in out, out
    saved = complete_checkpoints(tmp_path / "run")
    assert len(saved) == 1, saved
    step = int(saved[0].name.split("-")[1])
    assert 5 <= step < 160
    leftovers = [d.name for d in (tmp_path / "run" / "checkpoints").iterdir() if d not in saved]
    assert leftovers == [], leftovers
    run_torchrun(procs, sft_binary, cfg, long, "train.grad_accum=1")
    expect_same_losses(metrics(tmp_path / "run"), metrics(tmp_path / "ref"))
    expect_same_tensors(tmp_path / "run", tmp_path / "ref")


# ---- faults (ranks started by hand: no agent to clean up after them) -------------------------------------

def start_ranks(procs, sft_binary, config, tmp_path, per_rank_args=None, world=2, args=()):
    port = free_port()
    ranks = []
    for rank in range(world):
        env = base_env()
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        extra = (per_rank_args or {}).get(rank, [])
        p = Proc([sft_binary, "train", config, *args, *extra], tmp_path / f"rank{rank}-{len(procs)}.log", env=env)
        procs.append(p)
        ranks.append(p)
    return ranks


def expect_clean_checkpoints(out_dir: Path):
    for c in complete_checkpoints(out_dir):
        files = json.loads((c / "manifest.json").read_text())["files"]
        for name, entry in files.items():
            assert (c / name).stat().st_size == entry["size"], (c, name)


def test_a_rank_that_throws_fails_the_other_within_the_timeout(tmp_path, golden_dir, sft_binary, procs):
    cfg = write_config(tmp_path, golden_dir, "run", LORA + "checkpoint: {every_steps: 2}\n")
    start = time.time()
    r0, r1 = start_ranks(procs, sft_binary, cfg, tmp_path, args=("train.grad_accum=1", "--fail-at-step", "1:4"))
    assert r1.wait(60) == 1, r1.output()
    assert "failure injected before step 4" in r1.output()
    rc0 = r0.wait(TIMEOUT_S + 10 + 30)
    assert rc0 != 0, r0.output()
    assert time.time() - start < TIMEOUT_S + 10 + 30  # start-up (~a few s) + timeout + 10
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["step-00000002"]
    expect_clean_checkpoints(tmp_path / "run")


@pytest.mark.parametrize("sig", ["KILL", "STOP"])
def test_a_killed_or_hung_rank_fails_the_other_within_the_timeout(tmp_path, golden_dir, sft_binary, procs, sig):
    cfg = write_config(tmp_path, golden_dir, "run", LORA + "checkpoint: {every_steps: 2}\n")
    r0, r1 = start_ranks(procs, sft_binary, cfg, tmp_path, args=("train.grad_accum=1", "train.epochs=100"))
    wait_for_step(tmp_path / "run", 3, r0)
    os.kill(r1.popen.pid, getattr(signal, "SIG" + sig))
    killed_at = time.time()
    rc0 = r0.wait(TIMEOUT_S + 10 + 5)
    assert rc0 != 0, r0.output()
    assert time.time() - killed_at <= TIMEOUT_S + 10, r0.output()
    r1.kill()
    assert len(complete_checkpoints(tmp_path / "run")) >= 1
    expect_clean_checkpoints(tmp_path / "run")


def test_config_mismatch_between_ranks_stops_every_rank_with_exit_2(tmp_path, golden_dir, sft_binary, procs):
    cfg = write_config(tmp_path, golden_dir, "run", LORA)
    r0, r1 = start_ranks(procs, sft_binary, cfg, tmp_path, per_rank_args={1: ["train.lr=5.0e-4"]})
    assert r0.wait(60) == 2, r0.output()
    assert r1.wait(60) == 2, r1.output()
    for r in (r0, r1):
        assert "rank 1: the resolved config differs from rank 0's" in r.output(), r.output()
        assert "lr: 0.0005" in r.output(), r.output()


def test_initial_weights_mismatch_between_ranks_stops_every_rank_with_exit_2(tmp_path, golden_dir, sft_binary, procs):
    # Same config text, different LoRA init: rank 1 starts from a PEFT adapter (init_from) via its own
    # config file, so the config differs too; the weights line must still be named.
    cfg = write_config(tmp_path, golden_dir, "run", LORA)
    init = golden_dir / "train" / "adapter_init"
    r0, r1 = start_ranks(procs, sft_binary, cfg, tmp_path, per_rank_args={1: [f"finetune.lora.init_from={init}"]})
    assert r0.wait(60) == 2 and r1.wait(60) == 2, r0.output() + r1.output()
    assert "rank 1: the initial trainable weights differ from rank 0's" in r0.output(), r0.output()


@pytest.mark.parametrize("env,message", [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is outside [0, WORLD_SIZE=2)"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    ({"RANK": "1"}, "RANK is set but WORLD_SIZE is not"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
      "MASTER_PORT": "1"}, "LOCAL_RANK=3 is outside [0, LOCAL_WORLD_SIZE=2)"),
])
def test_bad_rank_environment_exits_2(tmp_path, golden_dir, sft_binary, env, message):
    cfg = write_config(tmp_path, golden_dir, "run", LORA)
    full = base_env()
    full.update(env)
    start = time.time()
    r = subprocess.run([str(sft_binary), "train", str(cfg)], env=full, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert time.time() - start < 30


def test_nccl_on_cpu_exits_2_before_connecting(tmp_path, golden_dir, sft_binary):
    cfg = write_config(tmp_path, golden_dir, "run", LORA)
    env = base_env()
    env.update(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    r = subprocess.run([str(sft_binary), "train", str(cfg), "dist.backend=nccl", "train.device=cpu"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "dist.backend: nccl needs CUDA devices" in r.stderr, r.stderr


# ---- elastic restart -------------------------------------------------------------------------------------

def worker_pids(torchrun_pid):
    """sft processes under torchrun, by their RANK."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != torchrun_pid:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def test_elastic_restart_resumes_from_the_newest_checkpoint(tmp_path, golden_dir, sft_binary, procs):
    long = "train.epochs=50"  # 200 steps: the kill lands mid-run even on a fast machine
    extra = LORA + "checkpoint: {every_steps: 5, keep_last: 2}\n"
    ref_cfg = write_config(tmp_path, golden_dir, "ref", extra)
    run_single(procs, sft_binary, ref_cfg, long)
    cfg = write_config(tmp_path, golden_dir, "run", extra)
    p = start_torchrun(procs, sft_binary, cfg, long, "train.grad_accum=1", extra=("--max-restarts", "1"))
    wait_for_step(tmp_path / "run", 12, p)
    pids = worker_pids(p.popen.pid)
    assert set(pids) == {0, 1}, pids
    os.kill(pids[1], signal.SIGKILL)
    assert p.wait(180) == 0, p.output()
    out = p.output()
    assert "resuming from" in out, out
    expect_same_losses(metrics(tmp_path / "run"), metrics(tmp_path / "ref"))
    expect_same_tensors(tmp_path / "run", tmp_path / "ref")


# ---- sharded evaluation ----------------------------------------------------------------------------------

def test_sharded_evaluation_equals_single_process(tmp_path, golden_dir, sft_binary, procs):
    data = golden_dir / "train" / "data.jsonl"
    extra = LORA + f"eval: {{batch_size: 3, every_steps: 4}}\n"
    ref_cfg = write_config(tmp_path, golden_dir, "ref", extra)
    cfg = write_config(tmp_path, golden_dir, "run", extra)
    for path in (ref_cfg, cfg):
        path.write_text(path.read_text().replace("format: tokenized,", f"format: tokenized, eval: {data},"))
    # lr 0: both runs evaluate bit-identical weights, so the summaries must agree to double rounding.
    run_single(procs, sft_binary, ref_cfg, "train.lr=0")
    run_torchrun(procs, sft_binary, cfg, "train.grad_accum=1", "train.lr=0")
    ref = [json.loads(l) for l in (tmp_path / "ref" / "eval.jsonl").read_text().splitlines()]
    ours = [json.loads(l) for l in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ours] == [e["step"] for e in ref] == [4, 8]
    for a, b in zip(ours, ref):
        assert a["examples"] == b["examples"] == 16 and a["target_tokens"] == b["target_tokens"]
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-9), (a, b)
        assert math.isclose(a["token_accuracy"], b["token_accuracy"], abs_tol=1e-12), (a, b)


def test_sharded_evaluation_with_generation_equals_single_process(tmp_path, smollm2_dir, sft_binary, procs):
    """Exact match from greedy decoding, sharded over 2 ranks (SmolLM2 and its tokenizer; 6 quiz questions).
    The references of examples 0, 2 and 4 are set to what the base model answers (from `sft eval`), so
    exact match is at least 0.5 and a lost or doubled shard would change it."""
    quiz = ROOT / ".cache" / "data" / "quiz"
    train = tmp_path / "train.jsonl"
    train.write_text("".join((quiz / "train.jsonl").read_text().splitlines(keepends=True)[:8]))
    questions = [json.loads(l) for l in (quiz / "eval.jsonl").read_text().splitlines()[:6]]
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(json.dumps(q) + "\n" for q in questions))

    def config(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"model: {{path: {smollm2_dir}, attention: sdpa}}\n"
                        f"data: {{train: {train}, eval: {eval_file}, max_seq_len: 128}}\n"
                        "finetune: {method: lora, lora: {r: 2, dropout: 0.0}}\n"
                        "train: {max_steps: 1, micro_batch_size: 2, grad_accum: 2, lr: 0.0, threads: 1}\n"
                        "eval: {batch_size: 2, generate: true, max_new_tokens: 6}\n"
                        f"log: {{progress: false}}\ndist: {{timeout_s: 120}}\noutput_dir: {tmp_path / name}\n")
        return path

    base = config("base")
    p = Proc([sft_binary, "eval", base, "--out", tmp_path / "base-eval"], tmp_path / "eval.log")
    procs.append(p)
    assert p.wait(300) == 0, p.output()
    outputs = [json.loads(l)["output"] for l in (tmp_path / "base-eval" / "examples.jsonl").read_text().splitlines()]
    assert len(outputs) == 6
    for i in (0, 2, 4):
        questions[i]["response"] = outputs[i]
    eval_file.write_text("".join(json.dumps(q) + "\n" for q in questions))

    run_single(procs, sft_binary, config("ref"), timeout=300)
    run_torchrun(procs, sft_binary, config("run"), "train.grad_accum=1", timeout=300)
    ref = json.loads((tmp_path / "ref" / "eval.jsonl").read_text().splitlines()[-1])
    ours = json.loads((tmp_path / "run" / "eval.jsonl").read_text().splitlines()[-1])
    assert ours["examples"] == ref["examples"] == 6
    assert ref["exact_match"] >= 0.5, ref
    for key in ("exact_match", "exact_match_normalized", "token_accuracy", "target_tokens"):
        assert ours[key] == ref[key], (key, ours, ref)
    assert math.isclose(ours["loss"], ref["loss"], rel_tol=1e-9), (ours, ref)


# ---- sft launch ------------------------------------------------------------------------------------------

def test_torchrun_and_sft_launch_give_identical_metrics(tmp_path, golden_dir, sft_binary, procs):
    a = write_config(tmp_path, golden_dir, "torchrun", LORA)
    b = write_config(tmp_path, golden_dir, "launch", LORA)
    run_torchrun(procs, sft_binary, a, "train.grad_accum=1")
    p = Proc([sft_binary, "launch", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
              free_port(), "--", "train", b, "train.grad_accum=1"], tmp_path / "launch.log")
    procs.append(p)
    assert p.wait(180) == 0, p.output()
    timing = ("tokens_per_s", "elapsed_s", "comm_wait_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    ours, ref = metrics(tmp_path / "launch"), metrics(tmp_path / "torchrun")
    assert len(ref) == 8
    assert strip(ours) == strip(ref)
    expect_same_tensors(tmp_path / "launch", tmp_path / "torchrun")


def test_a_failed_save_leaves_the_previous_checkpoint_current(tmp_path, golden_dir, sft_binary, procs):
    """Rank 0's save of step 4 fails mid-write (the test-only --test-fail-checkpoint-write-after-bytes flag,
    trainer/checkpoint.h's CheckpointWriteOptions, as a full disk): both ranks exit non-zero, step 2 stays the newest complete
    checkpoint, no temp dir is left, and resuming from it finishes like the uninterrupted run."""
    extra = LORA + "checkpoint: {every_steps: 2}\n"
    ref_cfg = write_config(tmp_path, golden_dir, "ref", extra)
    run_single(procs, sft_binary, ref_cfg)
    cfg = write_config(tmp_path, golden_dir, "run", extra)
    run_torchrun(procs, sft_binary, cfg, "train.grad_accum=1", "--stop-after-steps", "2")
    port = free_port()
    ranks = []
    for rank in range(2):
        env = base_env()
        env.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        hook = ["--test-fail-checkpoint-write-after-bytes", "1000"] if rank == 0 else []
        p = Proc([sft_binary, "train", cfg, "train.grad_accum=1", *hook], tmp_path / f"fail{rank}.log", env=env)
        procs.append(p)
        ranks.append(p)
    assert ranks[0].wait(60) == 1, ranks[0].output()
    assert "was not saved" in ranks[0].output() and "earlier checkpoints are intact" in ranks[0].output()
    assert ranks[1].wait(TIMEOUT_S + 10 + 10) != 0, ranks[1].output()
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["step-00000002"]
    assert [d.name for d in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000002"]
    run_torchrun(procs, sft_binary, cfg, "train.grad_accum=1")
    expect_same_losses(metrics(tmp_path / "run"), metrics(tmp_path / "ref"))
    expect_same_tensors(tmp_path / "run", tmp_path / "ref")
