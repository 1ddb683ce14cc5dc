"""`make bench` checks every ratio against the target its benchmark states, and fails when one is missed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from run_all import check_target  # noqa: E402


@pytest.mark.parametrize("text, met", [
    ("1.032x (target <= 1.05: our step time / open_clip's)", True),
    ("1.23x (target <= 1.10: stage-2 / stage-1 step time)", False),
    ("0.100 (target <= 0.10: worst share)", True),
    ("1500x (target >= 1000x)", True),
    ("950x (target >= 1000x)", False),
    ("0.97x (target > 1: full-context / pad-to-longest)", False),
    ("1.00x (target > 1)", False),
    ("2.5x", False),  # a ratio that states no target cannot pass
])
def test_each_ratio_is_checked_against_its_stated_target(text, met):
    ok, why = check_target(text)
    assert ok is met
    assert why.startswith("ok") if met else why.startswith("below target")


def _write(folder: Path, name: str, line: str) -> None:
    (folder / f"bench_{name}.py").write_text(f"print({line!r})\n")


def _make_bench(args: str) -> subprocess.CompletedProcess:
    """`make bench` with this interpreter; `-o` names the environment stamps exactly as the Makefile does, so make
    treats them as up to date and never (re)installs an environment from a test."""
    command = ["make", "-s", "--no-print-directory", "-o", ".venv/.installed", "-o", ".venv-clipbench/.installed",
               "bench", f"PY={sys.executable}", f"BENCH_ARGS={args}"]
    # run as a top-level make even when the suite itself runs under `make test`
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    planned = subprocess.run(["make", "-n", *command[2:]], cwd=REPO, capture_output=True, text=True, timeout=60,
                             env=env)
    assert planned.stdout.strip().splitlines() == [f"OMP_NUM_THREADS=2 {sys.executable} bench/run_all.py {args}"], \
        planned.stdout
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_make_bench_fails_and_says_below_target_when_a_target_is_missed(tmp_path):
    _write(tmp_path, "fast", "RATIO fast_path: 0.80x (target <= 1.10: ours / baseline)")
    _write(tmp_path, "slow", "RATIO slow_path: 1.40x (target <= 1.10: ours / baseline)")
    args = f"--bench-dir {tmp_path} --results {tmp_path / 'RESULTS.md'}"
    r = _make_bench(args)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "below target" in r.stdout and "slow_path" in r.stdout.split("below target:")[-1]
    results = (tmp_path / "RESULTS.md").read_text()
    assert "| bench_slow | slow_path | 1.40x" in results and "below target (1.4 is not <= 1.1)" in results
    assert "| bench_fast | fast_path | 0.80x" in results and "ok (0.8 <= 1.1)" in results
    # every target met: make bench succeeds
    (tmp_path / "bench_slow.py").unlink()
    r = _make_bench(args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "below target" not in r.stdout


def test_a_benchmark_that_cannot_run_fails_make_bench_with_its_reason(tmp_path):
    _write(tmp_path, "fast", "RATIO fast_path: 0.80x (target <= 1.10: ours / baseline)")
    (tmp_path / "bench_needs_env.py").write_text(
        "import sys\nprint('CANNOT RUN: no comparison environment at /nowhere; `make x` creates it')\nsys.exit(2)\n")
    args = f"--bench-dir {tmp_path} --results {tmp_path / 'RESULTS.md'}"
    r = _make_bench(args)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "failed: bench_needs_env (cannot run: no comparison environment at /nowhere" in r.stdout
    results = (tmp_path / "RESULTS.md").read_text()
    assert "| bench_needs_env | - | - |" in results and "FAILED (cannot run: no comparison environment" in results


def test_clip_benchmark_comparison_without_its_environment_cannot_run(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_clip_benchmark.py")], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "MMKD_CLIPBENCH_PYTHON": str(tmp_path / "python")})
    assert r.returncode == 2 and "RATIO" not in r.stdout
    assert f"CANNOT RUN: no CLIP_benchmark environment at {tmp_path / 'python'}" in r.stdout
    from bench_clip_benchmark import CLIP_BENCHMARK_VERSION

    assert f"clip_benchmark=={CLIP_BENCHMARK_VERSION}" in (REPO / "Makefile").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    planned = subprocess.run(["make", "-n", "-o", ".venv/.installed", "bench"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env=env).stdout
    assert f"clip_benchmark=={CLIP_BENCHMARK_VERSION}" in planned or (REPO / ".venv-clipbench" / ".installed").exists()
