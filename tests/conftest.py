import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session", autouse=True)
def _index_cache(tmp_path_factory):
    """Data indexes of the tests (and of the commands they start) go to a temporary folder, not ~/.cache."""
    os.environ.setdefault("MMKD_CACHE", str(tmp_path_factory.mktemp("mmkd-cache")))
    yield


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


def run_cli(*args: str, env: dict | None = None, timeout: float = 600):
    """Run `python -m mmkd ARGS` in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "mmkd", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
