"""Loader workers and stop signals (mmkd.utils.signals.loader_kwargs): a worker starts with SIGTERM, SIGINT and
SIGUSR1 blocked and its `worker_init_fn` ignores, then unblocks them. torch's worker loop installs its own SIGTERM
handler, which ends the worker, before `worker_init_fn` runs; a group signal landing in between (a preemption at
an epoch's start, seen under load) killed the worker and with it the run ("DataLoader worker exited unexpectedly",
exit 1 instead of a checkpoint and 143). Real processes and real signals."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import torch

from mmkd.utils.signals import STOP_SIGNALS, loader_kwargs

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class _Dispositions(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return torch.tensor([int(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN),
                             int(signal.SIGTERM in blocked), os.getpid()])


def test_a_loader_worker_ignores_stop_signals_and_does_not_keep_them_blocked():
    loader = torch.utils.data.DataLoader(_Dispositions(), batch_size=1, **loader_kwargs(2))
    rows = torch.cat(list(loader))
    assert rows[:, 0].tolist() == [1] * 4 and rows[:, 1].tolist() == [0] * 4
    assert len(set(rows[:, 2].tolist())) == 2 and os.getpid() not in rows[:, 2].tolist()  # two workers did it
    assert not set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process: unblocked again


def _slow_start():
    """A worker between its start and its `worker_init_fn`: torch's SIGTERM handler (here the default one) is in
    place for a while, then the stop signals are ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(1.0)
    from mmkd.utils.signals import ignore_stop_signals

    ignore_stop_signals()
    time.sleep(0.2)


@pytest.mark.parametrize("blocked", [True, False], ids=["loader context", "plain fork"])
def test_a_sigterm_before_worker_init_is_held_until_it_is_ignored(blocked):
    import multiprocessing

    context = loader_kwargs(2)["multiprocessing_context"] if blocked else multiprocessing.get_context("fork")
    if isinstance(context, str):
        context = multiprocessing.get_context(context)
    proc = context.Process(target=_slow_start)
    proc.start()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(10)
    # with the loader's context the worker lives on; without it the same signal ends it (the check bites)
    assert proc.exitcode == (0 if blocked else -signal.SIGTERM)
