"""A writer lock is not kept alive by the holder's forked children (data-loader workers): once the
holder is killed, the folder can be claimed again while its children still run."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from mmkd.utils.locks import LockedError, writer_lock, writer_of


def _holder(folder: str, ready, child_pid) -> None:
    with writer_lock(folder):
        pid = os.fork()
        if pid == 0:  # a worker that outlives its parent
            time.sleep(60)
            os._exit(0)
        child_pid.value = pid
        ready.set()
        time.sleep(60)


def test_a_killed_holders_forked_child_does_not_keep_the_lock(tmp_path):
    ctx = mp.get_context("fork")
    ready, child_pid = ctx.Event(), ctx.Value("i", 0)
    proc = ctx.Process(target=_holder, args=(str(tmp_path), ready, child_pid))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockedError):  # the holder is alive: refused
            with writer_lock(tmp_path):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10  # not join(): the child holds the sentinel pipe open
        while proc.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.exitcode == -signal.SIGKILL
        os.kill(child_pid.value, 0)  # the child still runs
        assert writer_of(tmp_path) is None
        with writer_lock(tmp_path):  # claimed at once
            pass
    finally:
        for pid in (proc.pid, child_pid.value):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
