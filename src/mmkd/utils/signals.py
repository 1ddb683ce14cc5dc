"""Stopping on a signal: the main process decides, the data loader's workers carry on until told.

A cluster stops a job by signalling it: SLURM's `scancel` and preemption send SIGTERM to every
process of the step (the whole process group, workers included), `--signal=B:USR1@120` sends
SIGUSR1 to the batch script (which forwards it) two minutes before the time limit, and Ctrl-C
sends SIGINT to the foreground group. mmkd answers all three the same way: finish the current
step (or chunk), write a checkpoint that resumes exactly, and exit with the shell's code for a
terminated process, so that `pretrain && distill` stops and a requeued job resumes:

  SIGTERM, SIGUSR1  ->  exit 143 (128 + SIGTERM): stopped, resumable (USR1 asks for requeue, not a bug)
  SIGINT            ->  exit 130 (128 + SIGINT)

DataLoader workers ignore all three (`ignore_stop_signals`, their `worker_init_fn`): a worker
killed by a group-wide SIGTERM would make the main process's next batch raise before it could
write its checkpoint. The main process ends them when it closes the loader. Loaders start their
workers with an explicit context (`loader_context`): fork where the platform has it (workers
inherit the main process's signal handlers between fork and `worker_init_fn`, and its open
memory maps), spawn elsewhere; Python 3.14 would otherwise switch Linux to forkserver.
"""

from __future__ import annotations

import signal
import sys

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))


class StopFlag:
    """While entered, a stop signal sets `requested` (and `signum`) instead of ending the process."""

    def __init__(self):
        self.requested = False
        self.signum = 0
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGTERM"


def ignore_stop_signals(worker_id: int = 0) -> None:
    """`worker_init_fn` of every DataLoader: the worker ignores SIGTERM, SIGINT and SIGUSR1, then unblocks them
    (it was started with them blocked: `loader_kwargs`), which drops one that arrived meanwhile."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _start_with_stop_signals_blocked(start) -> None:
    """Start a worker process with the stop signals blocked: a loader's worker installs torch's own SIGTERM
    handler (which ends it) before its `worker_init_fn` can ignore the signal, so a group signal landing in
    between killed it ("DataLoader worker exited unexpectedly", seen under load at an epoch's start). Blocked,
    the signal waits in the worker until `ignore_stop_signals` drops it, and reaches this process on return."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


if sys.platform != "win32":
    import multiprocessing.context as _mp

    class _ForkProcessStopBlocked(_mp.ForkProcess):
        def start(self) -> None:
            _start_with_stop_signals_blocked(super().start)

    class _SpawnProcessStopBlocked(_mp.SpawnProcess):
        def start(self) -> None:
            _start_with_stop_signals_blocked(super().start)

    class _ForkContextStopBlocked(_mp.ForkContext):
        Process = _ForkProcessStopBlocked

    class _SpawnContextStopBlocked(_mp.SpawnContext):
        Process = _SpawnProcessStopBlocked


def loader_context(num_workers: int) -> str | None:
    """The DataLoader's `multiprocessing_context`: fork on Linux, spawn elsewhere (None without workers)."""
    if num_workers == 0:
        return None
    return "fork" if sys.platform.startswith("linux") else "spawn"


def loader_kwargs(num_workers: int) -> dict:
    """The DataLoader arguments every mmkd loader with workers takes (see the module docstring): workers start
    with the stop signals blocked and their `worker_init_fn` ignores, then unblocks them."""
    if num_workers == 0:
        return {"num_workers": 0}
    context: object = loader_context(num_workers)
    if sys.platform != "win32":
        context = _ForkContextStopBlocked() if context == "fork" else _SpawnContextStopBlocked()
    return {"num_workers": num_workers, "worker_init_fn": ignore_stop_signals, "multiprocessing_context": context}


def exit_code(signal_name: str | None) -> int:
    """The exit code of a run stopped by `signal_name`: 130 for SIGINT, 143 otherwise (see above)."""
    return 128 + (signal.SIGINT if signal_name == "SIGINT" else signal.SIGTERM)
