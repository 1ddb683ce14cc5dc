"""Output paths that must not replace what they do not own.

Each command that writes into a user-named path checks it first: a folder option must not name a
file, and an existing file at a path the command writes is replaced only when it is recognisably
this command's own earlier output (or with --overwrite, where the command has one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from mmkd.errors import UsageError


def refuse_file_as_folder(path: str | Path, option: str = "--out") -> None:
    """A folder option naming an existing file is refused (writing would fail half-way or replace it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {str(path)!r} is an existing file, not a folder; give a folder path (it is "
                         f"created)")


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """A recogniser: the file is a JSON object holding all of `keys`."""

    def check(path: Path) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                obj: Any = json.load(f)
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and all(k in obj for k in keys)

    return check


def check_replaceable(paths: list[Path], ours: Callable[[Path], bool], option: str, what: str,
                      overwrite: bool | None = False) -> None:
    """Refuse when one of `paths` exists and is not `ours`, unless `overwrite` (None: the command has no
    --overwrite). A folder in the way is always refused."""
    for path in paths:
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir():
            raise UsageError(f"{option}: {str(path)!r} is a folder where {what} would be written; choose another "
                             f"{option}")
        if ours(path) or overwrite:
            continue
        fix = " or pass --overwrite to replace it" if overwrite is not None else ""
        raise UsageError(f"{option}: {str(path)!r} exists and is not {what} written by mmkd; refusing to replace "
                         f"it. Choose another {option}{fix}")
