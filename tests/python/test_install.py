"""`cmake --install build --prefix DIR` installs a `sft` that runs from any directory with no
environment set up (LibTorch through the RUNPATH into the torch wheel), and `sft --version` reports our
version, LibTorch's, the CUDA build and architectures, the visible GPUs and the loaded NCCL, each equal
to what the build and the torch wheel say."""
import os
import re
import subprocess
from pathlib import Path

import torch

from conftest import ROOT


def cmake_cache(build_dir):
    cache = {}
    for line in (build_dir / "CMakeCache.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z_0-9]+):[A-Z]+=(.*)$", line)
        if match:
            cache[match.group(1)] = match.group(2)
    return cache


def project_version():
    return re.search(r"project\(sft VERSION ([0-9.]+)", (ROOT / "CMakeLists.txt").read_text()).group(1)


def test_installed_sft_runs_from_any_directory(sft_binary, tmp_path):
    build_dir = Path(sft_binary).resolve().parent
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(build_dir), "--prefix", str(prefix)], check=True,
                   capture_output=True, text=True)
    installed = prefix / "bin" / "sft"
    assert installed.is_file() and os.access(installed, os.X_OK)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "SFT_CUDA_PLUGIN")}
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run([str(installed), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"sft {project_version()}"
    assert lines[1] == f"LibTorch {torch.__version__.split('+')[0]}"

    cache = cmake_cache(build_dir)
    torch_cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CUDA library not loaded"
    driver = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()
    gpus = torch.cuda.device_count()
    nccl = "NCCL: " + ".".join(map(str, torch.cuda.nccl.version())) if torch.version.cuda else "NCCL: not loaded"
    if list(build_dir.glob("CMakeFiles/*/CMakeCUDACompiler.cmake")):  # CMake enabled CUDA: nvcc was found
        archs = ", ".join(f"sm_{a}" for a in cache["SFT_CUDA_ARCHITECTURES"].split(";"))
        plugin = prefix / "lib" / "libsft_cuda.so"
        assert plugin.is_file(), "the CUDA plugin was not installed beside bin/"
        loaded = f"CUDA: plugin loaded from {plugin}, our kernels for {archs}; LibTorch {torch_cuda}"
        if driver:
            assert lines[2] == loaded
        else:  # no NVIDIA driver: a CPU process never maps LibTorch's CUDA library
            assert lines[2].startswith("CUDA: plugin not loaded: no NVIDIA driver"), lines[2]
            assert lines[2].endswith("; LibTorch CUDA library not loaded"), lines[2]
            assert lines[4] == "NCCL: not loaded"
        # Asked to, the installed binary finds and loads its plugin from DIR/lib, GPU or not.
        forced = subprocess.run([str(installed), "--version"], cwd=elsewhere, env={**env, "SFT_CUDA_PLUGIN": "load"},
                                capture_output=True, text=True)
        assert forced.returncode == 0, forced.stderr
        forced_lines = forced.stdout.splitlines()
        assert forced_lines[2] == loaded
        assert forced_lines[4] == nccl
        assert forced_lines[3] == "GPU: none visible" if gpus == 0 else forced_lines[3].startswith(f"GPU: {gpus} visible")
    else:
        assert lines[2] == ("CUDA: plugin not loaded: this sft was built without CUDA (nvcc was not found at "
                            "configure time); LibTorch CUDA library not loaded")
        assert lines[4] == "NCCL: not loaded"
    if gpus == 0 or not driver:
        assert lines[3] == "GPU: none visible"
    else:
        assert lines[3].startswith(f"GPU: {gpus} visible")
        assert lines[4] == nccl

    # LibTorch is found through the RUNPATH (absolute, into the wheel), not through the environment.
    dynamic = subprocess.run(["readelf", "-d", str(installed)], capture_output=True, text=True, check=True).stdout
    runpath = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", dynamic).group(1).split(":")
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    assert any(Path(p).resolve() == torch_lib for p in runpath), runpath
    # A real command from elsewhere: the full config reference, including this key.
    help_config = subprocess.run([str(installed), "help", "config"], cwd=elsewhere, env=env, capture_output=True,
                                 text=True)
    assert help_config.returncode == 0 and "log.tensorboard" in help_config.stdout
