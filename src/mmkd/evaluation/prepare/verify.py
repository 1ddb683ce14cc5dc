"""Content checks of a prepared dataset, shared by `prepare` (before the result is put in place) and
`mmkd datasets check` (on what is on disk now).

Per format: every file the layout lists exists; images: each one's header is read (the format is
identified) and a sample of `SAMPLE` of them, spread over the list, is decoded; slides: no file is
empty, a sample of the features files loads (`.pt` with weights_only) and their feature sizes
agree; MedMNIST: the arrays load without pickle and each split has as many labels as images. The
counts per split and class are counted again from the files and compared with PREPARED.json's.
Each function returns the problems found (an empty list when the data is sound).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mmkd.errors import UsageError
from mmkd.evaluation.prepare.counts import Counts

SAMPLE = 32  # images decoded / features files loaded per dataset


def _spread(n: int, k: int = SAMPLE) -> set[int]:
    return {round(i * (n - 1) / (k - 1)) for i in range(k)} if n > k else set(range(n))


def _e_g(items: list, n: int = 3) -> str:
    return ", ".join(str(x) for x in items[:n]) + (" ..." if len(items) > n else "")


def _tally(total: int, what: str, *groups: tuple[str, list[str], int]) -> list[str]:
    """'N of the TOTAL WHAT are STATE: e.g. ...' for each (state, items, examples shown) with items."""
    return [f"{len(items)} of the {total} {what} are {state}: {_e_g(items, shown)}" for state, items, shown in groups
            if items]


def image_problem(path: Path, decode: bool) -> str | None:
    """Why `path` is not a usable image (None when it is): its header is read, and all of it when `decode`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if decode:
                image.load()
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def check_images(paths: list[Path], what: str) -> list[str]:
    """Problems of a list of images: missing ones, and ones whose content is not a readable image."""
    missing, bad = [], []
    decode = _spread(len(paths))
    for i, path in enumerate(paths):
        if not path.is_file():
            missing.append(str(path))
            continue
        problem = image_problem(path, i in decode)
        if problem:
            bad.append(f"{path} ({problem})")
    return _tally(len(paths), what, ("missing", missing, 3), ("not readable images", bad, 2))


def compare_counts(counted: Counts, prepared: Counts, splits: list[str] | None = None) -> list[str]:
    """Differences between counts of the files now and the counts `prepare` recorded (only `splits`)."""
    out = []
    for split in splits if splits is not None else sorted(set(counted) | set(prepared)):
        have, had = counted.get(split, {}), prepared.get(split, {})
        for cls in sorted(set(have) | set(had)):
            if have.get(cls, 0) != had.get(cls, 0):
                out.append(f"{split}/{cls}: {have.get(cls, 0)} now, {had.get(cls, 0)} prepared")
    return [f"the counts differ from PREPARED.json: {_e_g(out, 6)}"] if out else []


def _txt(folder: Path) -> tuple[Counts, list[str]]:
    from mmkd.errors import DataError
    from mmkd.evaluation.datasets import list_files, parse_list_line

    counts: Counts = {}
    problems: list[str] = []
    for split, lst in list_files(folder).items():
        names, labels = [], []
        try:
            for line in lst.read_text(encoding="utf-8").splitlines():
                item = parse_list_line(line)
                if item:
                    names.append(item[0])
                    labels.append(item[1])
        except (OSError, UnicodeDecodeError, ValueError, DataError) as e:
            problems.append(f"{lst}: unreadable ({e})")
            continue
        # as the list reader does: paths relative to `<list stem>/` or to the list's folder, whichever holds
        # more of them (the reader looks at the first one only, which may be the one deleted)
        bases = [lst.parent / lst.stem, lst.parent]
        base = max(bases, key=lambda b: sum((b / n).is_file() for n in names))
        images = [Path(n) if Path(n).is_absolute() else base / n for n in names]
        counts[split] = dict(sorted(Counter(labels).items()))
        problems += check_images(images, f"images listed in {lst.name}")
    if not counts and not problems:
        problems.append(f"{folder} holds no train.txt / val.txt / test.txt / all.txt")
    return counts, problems


def _vqa(table: Path) -> tuple[Counts, list[str]]:
    from mmkd.evaluation.vqa import _answer_type, normalize_answer

    counts: dict[str, Counter] = defaultdict(Counter)
    images, problems = [], []
    try:
        rows = [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [f"{table}: unreadable ({e})"]
    for row in rows:
        image = Path(str(row.get("image", "")))
        images.append(image if image.is_absolute() else table.parent / image)
        answer = normalize_answer(row.get("answer", ""))
        counts[str(row.get("split", "all"))][_answer_type(row.get("answer_type"), answer)] += 1
    unique = list(dict.fromkeys(images))
    problems += check_images(unique, f"images the questions of {table.name} use")
    return {s: dict(sorted(c.items())) for s, c in counts.items()}, problems


def _csv(table: Path) -> tuple[Counts, list[str]]:
    import csv

    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        return {}, [f"{table}: unreadable ({e})"]
    if rows and not {"image", "label"} <= set(rows[0]):
        return {}, []  # a hand-made table with other columns: the catalog's keys say how to read it
    images = [Path(r["image"]) if Path(r["image"]).is_absolute() else table.parent / r["image"] for r in rows]
    return ({"all": dict(sorted(Counter(r["label"] for r in rows).items()))},
            check_images(images, f"images listed in {table.name}"))


def _imagefolder(root: Path) -> tuple[Counts, list[str]]:
    """An `imagefolder` root: class folders of images, or split folders of class folders."""
    from mmkd.evaluation.datasets import _class_folders, _images_in

    if not root.is_dir():
        return {}, [f"{root} is not a folder"]
    counts: Counts = {}
    problems: list[str] = []
    for folder in _class_folders(root):
        images = _images_in(folder)
        counts.setdefault("all", {})[folder.name] = len(images)
        problems += check_images([Path(i) for i in images], f"images under {folder.name}/")
    return counts, problems


def _slides(folder: Path) -> tuple[Counts, list[str]]:
    import csv

    from mmkd.errors import DataError
    from mmkd.evaluation.slides import is_features_file, read_features

    table = folder / "slides.csv" if folder.is_dir() else folder
    try:
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        return {}, [f"{table}: unreadable ({e})"]
    missing, empty, unreadable, dims = [], [], [], Counter()
    features = []
    for row in rows:
        path = Path(str(row.get("path", "")))
        path = path if path.is_absolute() else table.parent / path
        if not path.exists():
            missing.append(str(path))
        elif path.is_file() and path.stat().st_size == 0:
            empty.append(str(path))
        elif is_features_file(path):
            features.append(path)
    for i in sorted(_spread(len(features))):
        try:
            dims[int(read_features(features[i]).shape[-1])] += 1
        except (DataError, UsageError) as e:
            unreadable.append(f"{features[i]} ({e})")
    problems = _tally(len(rows), "slides or features files", ("missing", missing, 3), ("empty (0 bytes)", empty, 3))
    problems += _tally(len(_spread(len(features))), "features files loaded", ("unreadable", unreadable, 2))
    if len(dims) > 1:
        problems.append(f"the features files loaded have different feature sizes: {dict(dims)}")
    if any(str(r.get("time", "")).strip() for r in rows):  # survival: cases by event
        cases = {str(r.get("patient_id") or r.get("slide_id")): int(float(r["event"])) for r in rows
                 if str(r.get("event", "")).strip()}
        counts = {"all": {"event": sum(cases.values()), "censored": len(cases) - sum(cases.values())}}
    else:
        counts = {"all": dict(sorted(Counter(str(r.get("label", "")) for r in rows).items()))}
    return counts, problems


def _medmnist(path: Path) -> tuple[Counts, list[str]]:
    import numpy as np

    counts: Counts = {}
    problems = []
    try:
        with np.load(path, allow_pickle=False) as arrays:
            for split in ("train", "val", "test"):
                if f"{split}_labels" not in arrays.files:
                    continue
                y, n_images = arrays[f"{split}_labels"], int(arrays[f"{split}_images"].shape[0])
                if y.shape[0] != n_images:
                    problems.append(f"{path.name}: {split} has {n_images} images but {y.shape[0]} labels")
                if y.ndim == 2 and y.shape[1] > 1:
                    counts[split] = {"images": int(y.shape[0])}
                else:
                    counts[split] = {str(c): int(n) for c, n in enumerate(np.bincount(y.reshape(-1).astype(np.int64)))
                                     if n}
    except (OSError, ValueError, KeyError, EOFError) as e:
        return {}, [f"{path}: not a readable .npz ({type(e).__name__}: {e})"]
    return counts, problems


READERS = {"txt": _txt, "imagefolder": _imagefolder, "csv": _csv, "vqa": _vqa, "slides": _slides, "medmnist": _medmnist}


def verify_prepared(path: Path, fmt: str, manifest: dict[str, Any] | None) -> list[str]:
    """Problems of the prepared data at `path` (the catalog path) in format `fmt`; counts are compared
    with `manifest` (PREPARED.json) when there is one."""
    if fmt not in READERS:
        return []
    if path.is_file():
        from mmkd.evaluation.prepare.download import placeholder_problem

        with open(path, "rb") as f:
            problem = placeholder_problem(str(path), f.read(512))
        if problem:
            return [problem]
    counted, problems = READERS[fmt](path)
    if manifest and isinstance(manifest.get("counts"), dict):
        written = (manifest.get("written") or {}).get("splits")
        splits = [s for s in manifest["counts"] if written is None or s in written]
        problems += compare_counts(counted, manifest["counts"], splits)
    return problems
