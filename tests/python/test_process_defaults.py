"""`sft` sets its runtime defaults at start (trainer/process_defaults.cpp): libgomp's wait policy passive
unless the user chose one (libgomp reads it when LibTorch loads it, so sft re-executes itself once), and
glibc malloc's mmap/trim thresholds unless SFT_MALLOC_TUNING=off. libgomp's own OMP_DISPLAY_ENV report
says what the OpenMP runtime really parsed; `sft --version` says what sft applied."""
import os
import re
import subprocess
from pathlib import Path

import pytest

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
OURS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SFT_OPENMP_DEFAULTED", "SFT_MALLOC_TUNING", "LD_PRELOAD")


def run_version(sft_binary, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    env.update(OMP_DISPLAY_ENV="verbose", **env_extra)
    result = subprocess.run([sft_binary, "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # libgomp prints its parsed settings at load, once per process image: two blocks = one re-exec.
    # Its spin count is what the policy means: 300000 unset (spin, then sleep), 0 passive.
    spins = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", result.stderr)
    return result.stdout, spins


def test_default_is_passive_via_one_reexec_and_tuned_glibc(sft_binary):
    out, spins = run_version(sft_binary)
    assert spins == ["300000", "0"], spins
    assert "OpenMP (libgomp) wait policy: passive (sft's default" in out
    assert re.search(r"^malloc: glibc [0-9.]+, mmap threshold 32 MiB, trim threshold 1024 MiB", out, re.M), out


def test_users_wait_policy_wins_without_reexec(sft_binary):
    out, spins = run_version(sft_binary, OMP_WAIT_POLICY="active")
    assert len(spins) == 1 and int(spins[0]) > 300000, spins  # one process image: no re-exec
    assert "wait policy: from the environment: OMP_WAIT_POLICY=active GOMP_SPINCOUNT=unset" in out
    out, spins = run_version(sft_binary, GOMP_SPINCOUNT="10000")
    assert spins == ["10000"], spins
    assert "OMP_WAIT_POLICY=unset GOMP_SPINCOUNT=10000" in out


def test_malloc_tuning_escape_hatch(sft_binary):
    out, _ = run_version(sft_binary, SFT_MALLOC_TUNING="off")
    assert re.search(r"^malloc: glibc [0-9.]+, glibc's own thresholds \(SFT_MALLOC_TUNING=off\)$", out, re.M), out


@pytest.mark.skipif(not JEMALLOC.exists(), reason="Debian libjemalloc2 not installed")
def test_report_names_a_preloaded_allocator(sft_binary):
    out, _ = run_version(sft_binary, LD_PRELOAD=str(JEMALLOC))
    assert re.search(r"^malloc: jemalloc 5\.[0-9]", out, re.M), out
    assert "mmap threshold" not in out  # mallopt is glibc's; not applied to jemalloc
