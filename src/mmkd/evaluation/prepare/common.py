"""What every converter shares: the plan it returns, the context it runs in, and small writers."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mmkd.errors import DataError, UsageError
from mmkd.evaluation.prepare.counts import Counts
from mmkd.evaluation.prepare.download import Member, member_name, refuse_placeholder, sniff

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
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records left out (in PREPARED.json)


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


def table_bytes(member: Member) -> bytes:
    """A table's bytes, unpacked when the file is a zip by content (whatever its name: MCAT ships plain
    CSVs named `.csv.zip` inside zips whose one member is `../dataset_csv/x.csv.zip`)."""
    data = member.read_bytes()
    for _ in range(3):  # a zip inside a zip, at most this deep
        if sniff(data[:512]) != "zip":
            break
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = [n for n in z.namelist() if member_name(n) and not n.endswith("/")
                         and not any(p.startswith(".") or p == "__MACOSX" for p in member_name(n).split("/"))]
                if len(names) != 1:
                    raise DataError(f"{member.path}: expected one table inside the zip, found {names or 'none'}")
                data = z.read(names[0])
        except (zipfile.BadZipFile, EOFError, ValueError) as e:
            raise DataError(f"{member.path}: a damaged zip ({e}); download it again") from None
    refuse_placeholder(member.path, data[:512])
    return data


def read_table(member: Member, header: bool = True) -> list:
    """Rows of a CSV/TSV file (dicts by column, or lists without `header`); an unnamed first column
    (the index pandas writes: `,case_id,...`, or `Unnamed: 0`) is dropped."""
    text = table_bytes(member).decode("utf-8-sig", errors="replace")
    first = text.split("\n", 1)[0]
    dialect = "excel-tab" if first.count("\t") > first.count(",") else "excel"
    if not header:
        return list(csv.reader(io.StringIO(text), dialect=dialect))
    rows = list(csv.DictReader(io.StringIO(text), dialect=dialect))
    unnamed = [c for c in (rows[0] if rows else {}) if c is not None and (c.strip() == "" or c.startswith("Unnamed: "))]
    for row in rows:
        for c in unnamed:
            row.pop(c, None)
    return rows


def lacking(columns: list[str], row: dict, what: str) -> str | None:
    """'<what> lacks the column(s) X (it has A, B)' naming only the columns actually missing, else None."""
    missing = [c for c in columns if c not in row]
    if not missing:
        return None
    return (f"{what} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            f"(it has {', '.join(repr(c) for c in row) or 'no columns'})")
