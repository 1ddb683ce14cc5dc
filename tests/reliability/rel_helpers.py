"""Shared pieces of the reliability tests: forked workers to kill, tiny runs, broken files, figures.

Crash tests fork the test process (torch and open_clip are already imported, so a worker starts in
milliseconds instead of the 5-20 s of `python -m mmkd` here) and kill the child with a real
signal. Children run with one thread, as do the references computed in the parent, so the
final weights of a killed-and-resumed run can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import struct
import sys
import tarfile
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: helpers.py

from helpers import COLORS, SHAPES, make_pairs, write_store  # noqa: E402,F401

_FORK = multiprocessing.get_context("fork")


@contextmanager
def one_thread():
    """Run torch with one thread (as the forked children do): bitwise-comparable results."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _child(target: Callable, args: tuple, env: dict[str, str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(env)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # progress/JSON lines of the child would only clutter the test output
    target(*args)


def fork(target: Callable, *args, env: dict[str, str] | None = None, daemon: bool = True):
    """Start `target(*args)` in a forked child (one torch thread); returns the Process. A child that starts
    processes of its own (DataLoader workers) must not be a daemon."""
    proc = _FORK.Process(target=_child, args=(target, args, env or {}), daemon=daemon)
    proc.start()
    return proc


def wait_until(predicate: Callable[[], bool], proc=None, timeout: float = 120, poll: float = 0.002) -> bool:
    """Poll until `predicate()`; False if `proc` ended or the timeout passed first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and not proc.is_alive():
            return predicate()
        time.sleep(poll)
    return False


def kill_when(proc, predicate: Callable[[], bool], delay_s: float = 0.0) -> bool:
    """Wait for `predicate()`, sleep `delay_s`, then SIGKILL `proc`. False when it finished first."""
    wait_until(predicate, proc)
    time.sleep(delay_s)
    if not proc.is_alive():
        proc.join()
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    if proc.exitcode == 0:
        return False  # it finished between the check above and the kill (a zombie takes the signal unharmed)
    assert proc.exitcode == -signal.SIGKILL, proc.exitcode
    return True


def checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name.split("_")[1]) for p in root.iterdir()
                  if p.name.startswith("step_") and (p / "train_state.json").is_file())


def latest_step(run_dir: Path) -> int:
    steps = checkpoint_steps(run_dir)
    return steps[-1] if steps else 0


def stage1_args(data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny stage-1 run: 32 pairs, batch 8, 2 epochs = 8 steps, a checkpoint every step."""
    return ["--data", str(data), "--out", str(out), "--batch-size", "8", "--epochs", "2", "--lr", "1e-3",
            "--optim.warmup_steps", "2", "--train.save_every", "1", "--train.keep_checkpoints", "2",
            "--train.progress", "false", "--train.log_every", "1", "--seed", "11", *extra]


def run_stage1(args: list[str]) -> dict:
    from mmkd.config import build_config
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask

    return fit(build_config(None, args), ClipTask)


def stage2_args(data: Path, store: Path, out: Path, *extra: str) -> list[str]:
    """A tiny stage-2 run (adaptor heads: no alignment needed): 32 pairs, batch 8, 2 epochs."""
    return ["--data", str(data), "--store", str(store), "--out", str(out), "--batch-size", "8", "--epochs", "2",
            "--lr", "1e-3", "--optim.warmup_steps", "0", "--distill.target_space", "adaptor",
            "--train.save_every", "1", "--train.keep_checkpoints", "2", "--train.progress", "false",
            "--train.log_every", "1", "--seed", "5", *extra]


def run_stage2(args: list[str]) -> dict:
    from mmkd.config import build_config
    from mmkd.training.loop import fit
    from mmkd.training.stage2 import DistillTask

    return fit(build_config(None, args, stage="distill"), DistillTask)


def run_cli_in_own_group(argv: list[str]) -> None:
    """`mmkd ARGV` in a new process group (as a batch job's step is), exiting with the command's exit code:
    `os.killpg(pid, sig)` then reaches it and every DataLoader worker it starts."""
    from mmkd.cli import main

    os.setpgid(0, 0)
    sys.exit(main(argv))


def final_files(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of a run's latest checkpoint: weights, optimiser state and distillation extras."""
    from safetensors.torch import load_file

    ckpt = run_dir / "checkpoints" / f"step_{latest_step(run_dir):08d}"
    return {f.name: load_file(str(f)) for f in sorted(ckpt.glob("*.safetensors"))}


def assert_same_run(run_dir: Path, ref_dir: Path) -> None:
    """Final weights, optimiser state, step and counters equal the reference run's, bit for bit."""
    a, b = final_files(run_dir), final_files(ref_dir)
    assert a.keys() == b.keys() and a, (a.keys(), b.keys())
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}:{key} differs"
    sa = json.loads((run_dir / "summary.json").read_text())
    sb = json.loads((ref_dir / "summary.json").read_text())
    for key in ("num_steps", "num_optimizer_steps", "num_samples_seen", "num_skipped_samples", "num_bad_steps"):
        assert sa[key] == sb[key], (key, sa[key], sb[key])
    state_a = json.loads((run_dir / "checkpoints" / f"step_{latest_step(run_dir):08d}" / "train_state.json").read_text())
    state_b = json.loads((ref_dir / "checkpoints" / f"step_{latest_step(ref_dir):08d}" / "train_state.json").read_text())
    assert state_a["step"] == state_b["step"] and state_a["optimizer"] == state_b["optimizer"]
    assert state_a["rng"] == state_b["rng"]


# ---- commands ----------------------------------------------------------------------------

def cli(capsys, *args) -> tuple[int, str]:
    """Run `mmkd ARGS` in-process (one torch thread); (exit code, stderr + stdout)."""
    from mmkd.cli import main

    capsys.readouterr()
    with one_thread():
        code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def clean_refusal(code: int, err: str, *words: str) -> None:
    """A refusal as users get it: exit 2, no traceback, the message naming each of `words`."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (and every folder), to compare before and after; the writer
    lock's note of who last held it (mmkd.utils.locks) is left out."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(Path(folder).rglob("*")) if p.name != ".mmkd.lock"}


# ---- broken files ------------------------------------------------------------------------

def png_bytes(size=(32, 32), color=(200, 30, 30)) -> bytes:
    """A PNG of `color` with noise (so its compressed pixel data is most of the file)."""
    import io

    from PIL import Image

    noise = np.random.default_rng(sum(color)).integers(0, 40, (size[1], size[0], 3))
    pixels = np.clip(np.array(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-header PNG claiming width x height pixels (10 gigapixels by default) in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


HTML_PAGE = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>\n"


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def rss_mb() -> float:
    """Resident memory of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def report(capsys, title: str, **figures) -> None:
    """Print a campaign's figures to the terminal, past pytest's capture."""
    line = f"RELIABILITY {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    with capsys.disabled():
        print("\n" + line, flush=True)


__all__ = ["make_pairs", "write_store", "COLORS", "SHAPES"]


_WORLD: dict = {}


def training_world(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(root, pairs table, feature store) plus uninterrupted references root/ref1 (stage 1) and
    root/ref2 (stage 2), made once per test session and shared by the training test modules."""
    if "root" not in _WORLD:
        root = tmp_path_factory.mktemp("training-world")
        data = make_pairs(root / "data", n=32)
        store = write_store(data, root / "store")
        with one_thread():
            run_stage1(stage1_args(data, root / "ref1"))
            run_stage2(stage2_args(data, store, root / "ref2"))
        _WORLD.update(root=root, data=data, store=store)
    return _WORLD["root"], _WORLD["data"], _WORLD["store"]
