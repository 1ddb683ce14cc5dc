"""Provenance of a loaded teacher: what decides its outputs, recorded in every feature store.

`weights` maps each weights file name to its sha256; `preprocess` is the teacher's own image
preprocessing (size, crop/resize mode, mean/std, interpolation); `tokenizer` names the class
and the context length; `versions` lists the libraries that ran it (informative only: they
are not part of the store's stale-cache fingerprint).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def hash_weights(files: Iterable[str | os.PathLike]) -> dict[str, str]:
    """{file name: sha256}. Symlinked files (the Hugging Face cache) are hashed by content."""
    from mmkd.utils.io import sha256_file

    return {Path(f).name: sha256_file(os.path.realpath(f)) for f in files}


def library_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", *names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def jsonable(obj: Any) -> Any:
    """Tuples to lists, numbers and strings kept, everything else as str: JSON-stable values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
