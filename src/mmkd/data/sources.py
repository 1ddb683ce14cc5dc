"""Where `--data` points: the shard files of a webdataset spec (a file, a folder searched recursively, a
glob or a brace range), and the refusal of anything that is not a local path."""

from __future__ import annotations

import glob
import os

from mmkd.errors import UsageError


def refuse_urls(spec: str) -> None:
    """`pipe:` specs would run a shell command and URLs fetch remote bytes: only local files are read."""
    if spec.startswith("pipe:") or "://" in spec:
        raise UsageError(f"--data: {spec!r} is a URL or pipe; mmkd reads local shards only (download them first)")


def expand_shards(spec: str) -> list[str]:
    """A .tar file, a folder of .tar (searched recursively, as BIOMEDICA's commercial/, noncommercial/
    and other/ subsets are laid out; hidden folders are skipped), a glob, or a brace
    range `shard-{000..009}.tar`. No `pipe:` URLs."""
    refuse_urls(spec)
    if os.path.isdir(spec):
        shards = []
        for folder, dirs, files in os.walk(spec):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            shards.extend(os.path.join(folder, f) for f in sorted(files) if f.endswith(".tar"))
    else:
        import braceexpand

        shards = []
        for part in braceexpand.braceexpand(spec):
            shards.extend(sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part])
    missing = [s for s in shards if not os.path.isfile(s)]
    if not shards or missing:
        raise UsageError(f"--data: no shard files found for {spec!r}" + (f" (missing: {missing[:3]})" if missing else ""))
    return shards
