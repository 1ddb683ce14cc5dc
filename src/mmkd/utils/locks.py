"""Advisory writer locks on run folders and feature stores (`fcntl.flock`).

One writer at a time: `mmkd pretrain`/`distill` hold RUN/.mmkd.lock while they run, `mmkd
extract`, `import-features`, `align` and `extract --reapply-availability` hold STORE/.mmkd.lock.
A second writer is refused at once with a message naming the holder (pid, host, command).
`mmkd eval` holds OUT/<name>/.mmkd.lock of each results folder it fills, so two evaluations never
file two models under one name. Readers (eval, export, distill reading a store, `FeatureStore`)
never take the lock, so they are never blocked; `writer_of` lets a reader say that a folder is
still being written (eval of a run still training).

The lock belongs to the open file, so it ends with the process, also on SIGKILL: a stale lock
file never blocks anyone (its recorded pid is only a hint for the message). A process forked
from the holder (a data-loader worker) drops its copy of the lock at once (`os.register_at_fork`):
otherwise workers outliving a killed holder by a few seconds would keep the folder locked and
refuse the `--resume` that follows.

Shared filesystems: on Linux NFS (v4, or v3 with lockd running) `flock` is carried out as a POSIX
byte-range lock by the server, so two machines writing to one folder exclude each other. Some
filesystems ignore locks (NFS mounted with `nolock`/`local_lock=all`, many FUSE and SMB mounts):
there each machine only sees its own locks, and the rule "one writer per folder" is the user's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from mmkd.errors import UsageError

LOCK_FILE = ".mmkd.lock"
_HELD: set[int] = set()  # descriptors of the writer locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child: point each inherited lock descriptor at /dev/null. The parent keeps its lock;
    the descriptor number stays valid, so nothing the child runs later closes a file it did not open."""
    for fd in _HELD:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, fd)
        os.close(null)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class LockedError(UsageError):
    """Another process is writing the folder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "a process whose pid could not be read"
    where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    return f"pid {info['pid']}{where}, `{info.get('command', '?')}`, since {info.get('since', '?')}"


@contextlib.contextmanager
def writer_lock(folder: str | os.PathLike, option: str = "--out", what: str = "folder",
                command: str = "", tidy: bool = False) -> Iterator[Path]:
    """Hold the writer lock of `folder` (created if missing) for the `with` block.

    Raises LockedError (exit 2) naming the holder when another process holds it; never waits.
    `tidy`: folders this call created are removed again when the block wrote nothing into them
    (a command refused after claiming its output leaves no empty folder behind)."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise LockedError(f"{option}: the {what} {str(folder)!r} is being written by another mmkd process "
                          f"({_holder(path)}); wait for it to finish, or write to another {option}") from None
    _HELD.add(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(["mmkd", *sys.argv[1:3]]),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        if tidy and created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            path.unlink(missing_ok=True)
            for p in created:  # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()
        _HELD.discard(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def writer_of(folder: str | os.PathLike) -> str | None:
    """Who holds the writer lock of `folder` (pid, host, command), or None when no process writes it.

    Probes with a shared lock taken and dropped at once; a writer starting in that instant is refused
    as by any other holder and may simply be rerun."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _holder(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
