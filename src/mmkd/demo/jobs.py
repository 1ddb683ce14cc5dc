"""A tiny step scheduler for `mmkd demo`: dependencies, done-markers, logs, two steps at a time.

A `Step` is a call `fn(**kwargs)` (fn given as "module:function", so a forked child can find
it) with the steps it depends on. When a step succeeds its result is written to
`DIR/steps/<name>.json` together with a signature: a hash of fn, kwargs and the code version
(`code_version()`: the package version and a hash of its sources), with every path inside DIR
written relative to DIR. A rerun skips every step whose marker is present with the same
signature, so an interrupted demo resumes, a finished one only prints its table, a copied or
moved folder reuses everything, and a rerun after a code change recomputes. A step whose
signature changed runs again, after its `clean` paths are removed.

Steps run in forked child processes (the parent has already imported torch and the rest, so
a child starts in milliseconds), at most `jobs` at a time, each with `threads` torch threads
and its output in `DIR/logs/<name>.log`. Two single-threaded processes use a 2-core machine
better than one process with two threads, and they do not stall each other when the machine
is shared. With `jobs=1` (or where fork is unavailable) steps run in this process, in order.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmkd.errors import UsageError
from mmkd.utils.io import atomic_write_json


@dataclass
class Step:
    name: str
    fn: str  # "package.module:function"
    kwargs: dict[str, Any]
    deps: tuple[str, ...] = ()
    clean: tuple[str, ...] = ()  # paths removed before the step (re)runs
    weight: float = 1.0  # rough cost, for the progress bar
    salt: str = ""  # what else the step's output depends on (e.g. a hash of its input data)
    result: dict[str, Any] | None = field(default=None, repr=False)

    def signature(self, root: Path | None = None, code: str | None = None) -> str:
        """Hash of what the step computes; paths under `root` count relative to it (see the module doc)."""
        blob = json.dumps({"fn": self.fn, "kwargs": self.kwargs, "salt": self.salt,
                           "code": code_version() if code is None else code}, sort_keys=True, default=str)
        if root is not None:
            blob = blob.replace(json.dumps(str(Path(root).resolve()))[1:-1], "$DEMO")
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Modules that only format and print results: editing them never changes what a step computes.
PRESENTATION_MODULES = ("demo/cli.py", "demo/table.py", "demo/compare.py")
_CODE_VERSION: dict[str, str] = {}


def code_version(package_root: Path | None = None) -> str:
    """`<version>+<hash>`: mmkd's version and a hash of its source and data files (.py, .txt, .yaml, .json),
    apart from PRESENTATION_MODULES. Part of every step signature, so a code change recomputes."""
    import mmkd

    root = Path(package_root or Path(mmkd.__file__).parent)
    if str(root) not in _CODE_VERSION:
        h = hashlib.sha256()
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if (path.suffix in (".py", ".txt", ".yaml", ".json") and path.is_file() and "__pycache__" not in rel
                    and rel not in PRESENTATION_MODULES):
                h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
        _CODE_VERSION[str(root)] = f"{mmkd.__version__}+{h.hexdigest()[:12]}"
    return _CODE_VERSION[str(root)]


def _call(fn_path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    module, _, attr = fn_path.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn(**kwargs) or {}


def _child(step: Step, marker: Path, signature: str, log_path: Path, threads: int) -> None:
    """Body of a forked child: run the step with its output in the log, write the marker, exit."""
    log = open(log_path, "a", buffering=1, encoding="utf-8")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    code = 0
    try:
        import torch

        torch.set_num_threads(threads)
        _run_and_mark(step, marker, signature)
    except BaseException:  # noqa: BLE001 - everything goes to the log; the parent reports it
        traceback.print_exc()
        code = 1
    finally:
        log.flush()
        os._exit(code)


def _run_and_mark(step: Step, marker: Path, signature: str) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = _call(step.fn, step.kwargs)
    record = {"step": step.name, "signature": signature, "code_version": code_version(), "result": result,
              "seconds": round(time.perf_counter() - wall, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}
    atomic_write_json(marker, record)
    return record


class Runner:
    """Runs steps in dependency order; see the module docstring."""

    def __init__(self, root: Path, jobs: int = 2, threads: int = 1, echo: Callable[[str], None] = print):
        self.root = Path(root)
        self.jobs = max(1, jobs)
        self.threads = max(1, threads)
        self.echo = echo
        self.steps: dict[str, Step] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.reused = 0  # steps reused by the last run()
        (self.root / "steps").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)

    def add(self, step: Step) -> Step:
        unknown = [d for d in step.deps if d not in self.steps]
        assert not unknown, f"step {step.name} depends on unknown steps {unknown}"
        self.steps[step.name] = step
        return step

    def signature(self, step: Step) -> str:
        return step.signature(self.root)

    def marker(self, name: str) -> Path:
        return self.root / "steps" / f"{name}.json"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def _done(self, step: Step) -> dict[str, Any] | None:
        path = self.marker(step.name)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if record.get("signature") == self.signature(step) else None

    def _prepare(self, step: Step) -> None:
        self.marker(step.name).unlink(missing_ok=True)
        for p in step.clean:
            path = Path(p)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.log(step.name).write_text("")

    def run(self) -> dict[str, dict[str, Any]]:
        """Run every step not yet done; returns name -> marker record. Raises RuntimeError on a failure."""
        from tqdm.auto import tqdm

        pending = dict(self.steps)
        total = sum(s.weight for s in pending.values())
        # One overall bar (weighted by each step's rough cost) on a terminal; plain lines otherwise.
        interactive = sys.stderr.isatty()
        bar = tqdm(total=total, desc="mmkd demo", dynamic_ncols=True, disable=not interactive,
                   bar_format="{l_bar}{bar}| {elapsed} elapsed{postfix}")
        for name, step in list(pending.items()):  # already finished: reuse
            record = self._done(step)
            if record is not None and all(d in self.records or self._done(self.steps[d]) for d in step.deps):
                self.records[name] = record
                step.result = record.get("result")
                del pending[name]
                bar.update(step.weight)
        self.reused = len(self.records)
        if self.records:
            self.echo(f"reusing {len(self.records)} finished step(s) from {self.root}")
        # A reused step whose dependency must rerun has to rerun too (its inputs change).
        changed = True
        while changed:
            changed = False
            for name in list(self.records):
                if any(d in pending for d in self.steps[name].deps):
                    pending[name] = self.steps[name]
                    del self.records[name]
                    bar.update(-self.steps[name].weight)
                    self.reused -= 1
                    changed = True
        use_fork = self.jobs > 1 and hasattr(os, "fork")
        running: dict[str, tuple[Any, float]] = {}
        import signal

        def _terminated(signum, frame):  # SIGTERM: stop the children too, as Ctrl-C does
            raise KeyboardInterrupt

        old_handler = signal.signal(signal.SIGTERM, _terminated) if use_fork else None
        try:
            while pending or running:
                ready = [s for s in pending.values() if all(d in self.records for d in s.deps)]
                launched = False
                while ready and len(running) < (self.jobs if use_fork else 1):
                    step = ready.pop(0)
                    launched = True
                    del pending[step.name]
                    self._prepare(step)
                    bar.set_postfix_str(f"running: {', '.join([*running, step.name])}")
                    if not interactive:
                        self.echo(f"  start: {step.name}")
                    if use_fork:
                        import multiprocessing

                        proc = multiprocessing.get_context("fork").Process(
                            target=_child, args=(step, self.marker(step.name), self.signature(step),
                                                 self.log(step.name), self.threads),
                            name=f"mmkd-demo-{step.name}")
                        proc.start()
                        running[step.name] = (proc, time.perf_counter())
                    else:
                        started = time.perf_counter()
                        try:
                            record = _run_and_mark(step, self.marker(step.name), self.signature(step))
                        except Exception as e:
                            raise RuntimeError(f"step {step.name} failed: {type(e).__name__}: {e}") from e
                        self._finish(step, record, started, bar)
                if not running:
                    if pending and not launched:
                        raise RuntimeError(f"steps {sorted(pending)} wait on steps that never finish")
                    continue
                time.sleep(0.1)
                for name, (proc, started) in list(running.items()):
                    if proc.is_alive():
                        continue
                    proc.join()
                    del running[name]
                    record = self._done(self.steps[name]) if proc.exitcode == 0 else None
                    if record is None:
                        tail = self.log(name).read_text(errors="replace").strip().splitlines()[-25:]
                        raise RuntimeError(f"step {name} failed (exit code {proc.exitcode}); last lines of "
                                           f"{self.log(name)}:\n" + "\n".join(tail))
                    self._finish(self.steps[name], record, started, bar)
                    bar.set_postfix_str(f"running: {', '.join(running) or '-'}")
        except BaseException:
            for proc, _ in running.values():
                proc.terminate()
            for proc, _ in running.values():
                proc.join(timeout=10)
            raise
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)
        return self.records

    def _finish(self, step: Step, record: dict[str, Any], started: float, bar) -> None:
        self.records[step.name] = record
        step.result = record.get("result")
        bar.update(step.weight)
        line = (f"  done:  {step.name:<28} {time.perf_counter() - started:6.1f} s"
                f"  (cpu {record.get('cpu_seconds', 0):.0f} s, log {self.log(step.name)})")
        if bar.disable:
            self.echo(line)
        else:
            bar.write(line)


def check_out_dir(root: Path) -> None:
    """The demo folder is new, empty, or a previous demo's (it holds recipe.json)."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"--out: {root} is a file; give a folder for the demo's outputs")
    if root.is_dir() and any(root.iterdir()) and not (root / "recipe.json").is_file():
        raise UsageError(f"--out: {root} is not empty and holds no earlier demo (no recipe.json); choose a new or "
                         f"empty folder")
