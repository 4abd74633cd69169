"""`sft` sets its runtime defaults at start (trainer/process_defaults.cpp): unless the user chose an OpenMP
wait policy, libgomp's own spin-then-sleep on an idle machine and passive on a busy one (other processes
keeping half a core or more busy during a 100 ms look at /proc/stat; libgomp reads the policy when LibTorch
loads it, so sft then re-executes itself once), and glibc malloc's mmap/trim thresholds unless
SFT_MALLOC_TUNING=off. libgomp's own OMP_DISPLAY_ENV report
says what the OpenMP runtime really parsed; `sft --version` says what sft applied."""
import os
import re
import subprocess
import sys
import time
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


def test_default_follows_the_measured_load_and_says_so(sft_binary):
    # ctest runs other tests beside this one, so the machine may be idle or busy: whichever sft measured,
    # what it reports must be what libgomp parsed.
    out, spins = run_version(sft_binary)
    busy = re.search(r"wait policy: passive \(sft's default on a busy machine: ([0-9.]+) of (\d+) cores busy", out)
    idle = re.search(r"wait policy: libgomp's default, spin then sleep \(sft's default on an idle machine: "
                     r"([0-9.]+) of (\d+) cores busy", out)
    assert busy or idle, out
    if busy:
        assert float(busy.group(1)) >= 0.5 and spins == ["300000", "0"], (out, spins)  # one re-exec
    else:
        assert float(idle.group(1)) < 0.5 and spins == ["300000"], (out, spins)  # no re-exec
    assert re.search(r"^malloc: glibc [0-9.]+, mmap threshold 32 MiB, trim threshold 1024 MiB", out, re.M), out


def test_busy_machine_gets_passive_via_one_reexec(sft_binary):
    # One spinning process per core keeps every core busy while sft looks: it must choose passive.
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
               for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)  # the burners are past their interpreter start and spinning
        out, spins = run_version(sft_binary)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert spins == ["300000", "0"], (out, spins)
    assert re.search(r"wait policy: passive \(sft's default on a busy machine: [0-9.]+ of \d+ cores busy at start", out), out


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
