"""Shared pytest fixtures for the Python reference checks: paths to the sft binary, golden data and
the real model. Every check runs our binary and compares with transformers/peft/tokenizers."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sft_binary() -> Path:
    path = Path(os.environ.get("SFT_BINARY", ROOT / "build" / "sft"))
    assert path.exists(), f"sft binary missing at {path}: build first (scripts/test.sh)"
    return path


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = Path(os.environ.get("SFT_GOLDEN_DIR", ROOT / ".cache" / "golden"))
    assert path.is_dir(), f"golden data missing at {path}: run scripts/make_golden.py"
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    path = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
    assert (path / ".complete").exists(), f"real model missing at {path}: run scripts/get_model.sh"
    return path


def run_sft(binary, *args, check=True, **kwargs):
    result = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"sft {' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result
