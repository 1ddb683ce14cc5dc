"""What every converter shares: the plan it returns, the context it runs in, and small writers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmkd.errors import UsageError
from mmkd.evaluation.prepare.counts import Counts

SLIDE_EXTS = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".bif", ".vms", ".vmu", ".svslide")
FEATURE_EXTS = (".pt", ".h5", ".npy", ".safetensors")


@dataclass
class Context:
    """Where and how a converter runs. `file_name`: the catalog path's last part (the file a
    file-kind converter writes, e.g. chestmnist.npz); `splits`: the splits asked for (None = all)."""

    name: str
    expected: str  # human description of the official download, for "not recognised" messages
    file_name: str
    scratch: Path
    splits: list[str] | None = None
    link: bool = True

    def want(self, split: str) -> bool:
        return self.splits is None or split in self.splits


@dataclass
class Plan:
    """What a converter found: counts to verify, and `write(folder)` that writes the catalog layout."""

    counts: Counts
    write: Callable[[Path], dict[str, Any]]
    kind: str = "folder"  # "folder": write() fills a new folder; "file": write() writes ctx.file_name in it
    notes: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    """A file name without whitespace (the authors' list lines are split on whitespace)."""
    return re.sub(r"\s+", "_", name.strip())


def write_lists(folder: Path, items: dict[str, list[tuple[str, str]]]) -> None:
    """`{split}.txt` files of `image label` lines (image relative to `<split>/`), the authors' layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in items.items():
        (folder / f"{split}.txt").write_text("".join(f"{image} {label}\n" for image, label in lines), encoding="utf-8")


def stem_of_slide(name: str) -> str:
    """A slide id without its file extension (`TCGA-..-DX1.<uuid>.svs` -> `TCGA-..-DX1.<uuid>`)."""
    lower = name.lower()
    for ext in SLIDE_EXTS + FEATURE_EXTS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def need(spec: dict, key: str, where: str) -> Any:
    if key not in spec:
        raise UsageError(f"{where}.prepare.{key}: missing in the catalog entry")
    return spec[key]
