"""Crash-safe file writing: write to a temporary name in the same folder, fsync, rename.

A reader never sees a partially written file: either the old content or the new one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry (the rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask (reading it needs setting it; set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def apply_dir_umask(path: str | os.PathLike) -> None:
    """`tempfile.mkdtemp` makes 0700 folders; give one the mode a new folder gets under the umask."""
    os.chmod(path, 0o777 & ~current_umask())


# Test-only fault injection: with MMKD_TEST_ENOSPC_AT_WRITE="N" (or "N:any-tag", the tag makes a new
# setting restart the count) the Nth atomic write of the process fails with ENOSPC after its bytes
# went to the temporary file, as a full disk would. Reliability tests use it to check that every
# writer leaves the previous state intact; unset, it costs one dictionary lookup per write.
_TEST_FAULT_ENV = "MMKD_TEST_ENOSPC_AT_WRITE"
_test_fault: dict[str, Any] = {"setting": "", "writes": 0}


def _test_write_fault(path: Path) -> None:
    setting = os.environ.get(_TEST_FAULT_ENV, "")
    if setting != _test_fault["setting"]:
        _test_fault.update(setting=setting, writes=0)
    if not setting:
        return
    _test_fault["writes"] += 1
    if _test_fault["writes"] == int(setting.split(":")[0]):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _test_write_fault(path)
        # mkstemp makes 0600, and some writers (safetensors) recreate the file: give the final file the
        # permissions any new file gets under the umask, after it was written.
        os.chmod(tmp_path, 0o666 & ~current_umask())
        with open(tmp_path, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (JSON has no NaN; `json.dumps` would write a bare
    `NaN` that strict readers refuse)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return finite_json(obj.tolist())
    return obj


def _json_default(obj: Any):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Save a dict of torch tensors as safetensors, atomically. Tensors are made contiguous."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its I/O errors (disk full, ...) are not OSErrors: make them one
            code = re.search(r"os error (\d+)", str(e))
            number = int(code.group(1)) if code else errno.EIO
            raise OSError(number, os.strerror(number), str(path)) from e


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def json_object_line(text: str, where: str, holds: str) -> dict[str, Any]:
    """One line of a JSONL file as a JSON object, or a UsageError naming `where` (FILE:LINE) and what the
    object should hold (`holds`)."""
    from mmkd.errors import UsageError

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{where} is not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{where} holds a JSON {type(obj).__name__}, not {holds}")
    return obj

