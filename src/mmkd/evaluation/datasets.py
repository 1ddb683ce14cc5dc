"""Reading evaluation datasets of the catalog formats into labelled or captioned splits.

Formats (see catalogs/README.md for layouts):
- `imagefolder`: `PATH/<class>/*.jpg`, or `PATH/<split>/<class>/*.jpg` with split folders
  train / val (valid, validation) / test.
- `txt`: the MMKD-CLIP authors' evaluation layout — `PATH/{train,val,test}.txt` (or one .txt
  file), lines `image label` separated by a tab or spaces, no header; the image path is relative
  to the list's folder, or to `<list folder>/<split>/` as the authors' loader reads it.
- `csv`, `jsonl`: rows `image,label` (classification) or `image,caption` (retrieval; several rows
  per image, or a list of captions in one JSONL row). Image paths are relative to the file. Splits
  come from a `split` column, or from the catalog's `split: {train: a.csv, test: b.csv}` mapping.
- `medmnist`: a MedMNIST `.npz` with its official train/val/test splits (ChestMNIST's 14 labels
  make a multi-label dataset).

Multi-label data (ChestMNIST, or a csv/jsonl entry with `label_columns: [...]`, e.g. CheXpert's
observation columns) has labels [N, L] with 1 = present, 0 = absent, -1 = unknown (CheXpert's
uncertain -1 is kept unknown unless the entry says `uncertain: positive` or `negative`).

Text in tables must be UTF-8; a caption or question that is not is a DataError naming its rows,
unless the entry gives the file's `encoding` (e.g. `encoding: cp1252`).

A split with no split structure is called "all".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.errors import DataError, UsageError
from mmkd.data.pairs import IMAGE_EXTS

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test", "all": "all"}
CLASSNAMES_FILE = Path(__file__).parent / "catalogs" / "classnames" / "medmnist.yaml"
MAX_PIXELS = 200_000_000


def canonical_split(name: str) -> str:
    return SPLIT_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())


# ---------------------------------------------------------------------------------------------
# Image lists: random access to PIL images with a content fingerprint for the feature cache


class FileImages:
    """Images stored as files; `load(i)` opens path i as RGB."""

    def __init__(self, paths: list[str]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int):
        from mmkd.data.pairs import decode_image

        try:
            return decode_image(self.paths[i], MAX_PIXELS)
        except Exception as e:  # noqa: BLE001 - any decode failure is a data problem here
            raise DataError(f"cannot read image {self.paths[i]!r} ({type(e).__name__}: {e}); fix or remove it") from None

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.paths:
            st = os.stat(p)
            h.update(f"{p}\x00{st.st_size}\x00{st.st_mtime_ns}\x00".encode())
        return h.hexdigest()[:16]


class ArrayImages:
    """Images held in a uint8 array [N, H, W] (grey) or [N, H, W, 3]; `load(i)` returns RGB PIL."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def load(self, i: int):
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.array[i])).convert("RGB")

    def fingerprint(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.array).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass
class LabeledSplit:
    images: Any  # FileImages | ArrayImages
    labels: np.ndarray  # [N] int64 class indices, or [N, L] int64 in {1, 0, -1} for multi-label data

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ClassificationData:
    classnames: list[str]
    splits: dict[str, LabeledSplit]
    named: bool = True  # False when class names are placeholders ("0", "1", ...)
    multilabel: bool = False
    keys: list[str] | None = None  # the raw label (folder name, label string) of each class, when known


@dataclass
class CaptionSplit:
    """Unique images and their captions; caption j describes image `caption_image[j]`."""

    images: Any
    captions: list[str]
    caption_image: np.ndarray  # [M] int64


def pick_split(available: list[str], requested: str | None, dataset: str) -> str:
    """The evaluation split: the catalog's `split`, else test, else the only split there is."""
    if not available:
        raise DataError(f"dataset {dataset}: the data has no rows")
    if requested:
        want = canonical_split(requested)
        if want not in available:
            raise UsageError(f"datasets.{dataset}.split: {requested!r} not found; the data has {', '.join(available)}")
        return want
    for name in ("test", "all", "val"):
        if name in available:
            return name
    return available[-1]


# ---------------------------------------------------------------------------------------------
# Tables (CSV / JSONL)


def _read_rows(path: Path, fmt: str, encoding: str | None = None) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL table. Without `encoding` the file is read as UTF-8 and bytes that are
    not UTF-8 survive as surrogate escapes (see `check_text_encoding`); with it, the file is decoded so."""
    if encoding is None:
        from mmkd.data.pairs import read_table

        return read_table(path, fmt, what="dataset file")
    import codecs
    import csv
    import json

    try:
        codecs.lookup(encoding)
    except LookupError:
        raise UsageError(f"encoding: {encoding!r} is not a text encoding Python knows; e.g. utf-8, cp1252, latin-1") from None
    if not path.is_file():
        raise UsageError(f"dataset file: file {str(path)!r} does not exist")
    with open(path, newline="", encoding=encoding, errors="strict") as f:
        try:
            if fmt == "csv":
                return list(csv.DictReader(f, dialect="excel-tab" if path.suffix.lower() == ".tsv" else "excel"))
            return [json.loads(line) for line in f if line.strip()]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not decodable as {encoding} ({e.reason} at byte {e.start})") from None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def check_text_encoding(values: list[tuple[int, Any]], path: Path, dataset: str, what: str) -> None:
    """DataError when any text (given as (data row number, value)) holds bytes that were not UTF-8."""
    bad = [(n, v) for n, v in values if isinstance(v, str) and _has_surrogates(v)]
    if not bad:
        return
    n, v = bad[0]
    shown = v.encode("utf-8", errors="surrogateescape")[:60]
    rows = ", ".join(str(b[0]) for b in bad[:10]) + (" ..." if len(bad) > 10 else "")
    raise DataError(f"dataset {dataset}: {path.name}: {len(bad)} {what}(s) are not valid UTF-8 (data row(s) {rows}; "
                    f"e.g. row {n}: {shown!r}). Re-save the file as UTF-8, or give its encoding in the catalog "
                    f"entry, e.g. `encoding: cp1252`")


def _table_rows(entry) -> list[tuple[str, dict[str, Any], Path]]:
    """(split, row, folder the row's paths are relative to) for every row of the entry's table(s)."""
    out = []
    encoding = entry.option("encoding")
    if entry.split_files:
        for split, path in entry.split_files.items():
            out += [(canonical_split(split), row, path.parent) for row in _read_rows(path, entry.format, encoding)]
        return out
    split_key = entry.option("split_key", "split")
    for row in _read_rows(entry.path, entry.format, encoding):
        split = row.get(split_key)
        out.append((canonical_split(split) if split not in (None, "") else "all", row, entry.path.parent))
    return out


def _resolve_image(value: Any, base: Path, dataset: str) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(f"dataset {dataset}: a row has no image path")
    path = Path(value) if os.path.isabs(value) else base / value
    return str(path)


def _check_files(paths: list[str], dataset: str) -> None:
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"dataset {dataset}: {len(missing)} image file(s) missing, e.g. {missing[0]!r}")


def _label_indices(raw_labels: list[Any], classnames, dataset: str) -> tuple[list[str], list[int], bool]:
    """Map raw labels (names or integers) to indices; returns (classnames, indices, named)."""
    as_text = [str(v).strip() for v in raw_labels]
    if isinstance(classnames, dict):
        keys = sorted(classnames) if not all(k.isdigit() for k in classnames) else sorted(classnames, key=int)
        index = {k: i for i, k in enumerate(keys)}
        bad = sorted({t for t in as_text if t not in index})
        if bad:
            raise DataError(f"dataset {dataset}: labels {bad[:5]} are not keys of `classnames`")
        return [classnames[k] for k in keys], [index[t] for t in as_text], True
    if classnames and all(t in classnames for t in as_text):
        index = {c: i for i, c in enumerate(classnames)}
        return list(classnames), [index[t] for t in as_text], True
    if all(t.lstrip("-").isdigit() for t in as_text):
        ints = [int(t) for t in as_text]
        num = max(ints) + 1 if ints else 0
        if classnames:
            if min(ints, default=0) < 0 or num > len(classnames):
                raise DataError(f"dataset {dataset}: integer labels go up to {num - 1} but `classnames` has "
                                f"{len(classnames)} names")
            return list(classnames), ints, True
        return [str(i) for i in range(num)], ints, False
    if classnames:
        bad = sorted({t for t in as_text if t not in classnames})
        raise DataError(f"dataset {dataset}: labels {bad[:5]} are not in `classnames`")
    names = sorted(set(as_text))
    index = {c: i for i, c in enumerate(names)}
    return names, [index[t] for t in as_text], True


UNCERTAIN = {"ignore": -1, "positive": 1, "negative": 0}


def _multilabel_value(raw: Any, uncertain: int) -> int | None:
    """1 / 0 / -1 (unknown) of one label cell: 1, 0, blank (= 0, not mentioned) or -1 (uncertain)."""
    text = "" if raw is None else str(raw).strip()
    if text == "":
        return 0
    try:
        value = float(text)
    except ValueError:
        return None
    return {1.0: 1, 0.0: 0, -1.0: uncertain}.get(value)


def _load_table_multilabel(entry, rows, columns: list[str]) -> ClassificationData:
    policy = str(entry.option("uncertain", "ignore"))
    if policy not in UNCERTAIN:
        raise UsageError(f"datasets.{entry.name}.uncertain: {policy!r} is not allowed; choose from {', '.join(UNCERTAIN)}")
    missing = [c for c in columns if rows and c not in rows[0][1]]
    if missing:
        raise UsageError(f"datasets.{entry.name}.label_columns: {missing} are not columns of the table (columns: "
                         f"{', '.join(rows[0][1])})")
    labels, problems = [], []
    for n, (_, row, _) in enumerate(rows, 1):
        values = [_multilabel_value(row.get(c), UNCERTAIN[policy]) for c in columns]
        if None in values:
            problems.append(f"row {n}: {columns[values.index(None)]}={row.get(columns[values.index(None)])!r}")
        labels.append([0 if v is None else v for v in values])
    if problems:
        raise DataError(f"dataset {entry.name}: label cells must be 1, 0, -1 or blank; {len(problems)} are not "
                        f"(e.g. {problems[0]})")
    names = entry.classnames
    if isinstance(names, dict):
        names = [names.get(c, c) for c in columns]
    names = list(names) if names else list(columns)
    if len(names) != len(columns):
        raise UsageError(f"datasets.{entry.name}.classnames: {len(names)} names for {len(columns)} label_columns")
    image_key = entry.option("image_key", "image")
    paths = [_resolve_image(r.get(image_key), base, entry.name) for _, r, base in rows]
    _check_files(paths, entry.name)
    labels_NL = np.asarray(labels, dtype=np.int64).reshape(len(rows), len(columns))
    splits = {}
    for split in dict.fromkeys(s for s, _, _ in rows):
        sel = [i for i, (s, _, _) in enumerate(rows) if s == split]
        splits[split] = LabeledSplit(FileImages([paths[i] for i in sel]), labels_NL[sel])
    return ClassificationData(names, splits, True, multilabel=True, keys=list(columns))


def _load_table_classification(entry) -> ClassificationData:
    image_key, label_key = entry.option("image_key", "image"), entry.option("label_key", "label")
    rows = _table_rows(entry)
    if entry.option("label_columns"):
        return _load_table_multilabel(entry, rows, [str(c) for c in entry.option("label_columns")])
    if rows and label_key not in rows[0][1]:
        raise UsageError(f"datasets.{entry.name}: rows have no {label_key!r} column (columns: "
                         f"{', '.join(rows[0][1])}); set `label_key` in the catalog")
    classnames, indices, named = _label_indices([r[label_key] for _, r, _ in rows], entry.classnames, entry.name)
    paths = [_resolve_image(r.get(image_key), base, entry.name) for _, r, base in rows]
    _check_files(paths, entry.name)
    splits: dict[str, LabeledSplit] = {}
    for split in dict.fromkeys(s for s, _, _ in rows):
        sel = [i for i, (s, _, _) in enumerate(rows) if s == split]
        splits[split] = LabeledSplit(FileImages([paths[i] for i in sel]), np.asarray([indices[i] for i in sel], np.int64))
    return ClassificationData(classnames, splits, named, keys=_keys_of(entry.classnames, classnames))


def _keys_of(catalog_names, classnames: list[str]) -> list[str] | None:
    """The raw label of each class when the catalog maps labels to display names."""
    if isinstance(catalog_names, dict):
        inverse = {v: k for k, v in catalog_names.items()}
        return [inverse.get(c, c) for c in classnames]
    return None


def load_captions(entry, split: str | None = None) -> tuple[str, CaptionSplit]:
    """(split name, CaptionSplit) of a csv/jsonl image-caption table; captions may repeat an image."""
    if entry.format not in ("csv", "jsonl"):
        raise UsageError(f"datasets.{entry.name}: retrieval needs format csv or jsonl with image,caption rows, "
                         f"not {entry.format!r}")
    image_key, caption_key = entry.option("image_key", "image"), entry.option("caption_key", "caption")
    rows = _table_rows(entry)
    texts = []
    for n, (_, row, _) in enumerate(rows, 1):
        caps = row.get(caption_key, row.get("captions"))
        texts += [(n, c) for c in (caps if isinstance(caps, list) else [caps])]
    check_text_encoding(texts, entry.path, entry.name, "caption")
    split = pick_split(list(dict.fromkeys(s for s, _, _ in rows)), split or entry.split, entry.name)
    image_index: dict[str, int] = {}
    captions, caption_image = [], []
    for s, row, base in rows:
        if s != split:
            continue
        caps = row.get(caption_key, row.get("captions"))
        caps = caps if isinstance(caps, list) else [caps]
        caps = [str(c).strip() for c in caps if c is not None and str(c).strip()]
        if not caps:
            raise DataError(f"dataset {entry.name}: a row for {row.get(image_key)!r} has no {caption_key!r}")
        path = _resolve_image(row.get(image_key), base, entry.name)
        idx = image_index.setdefault(path, len(image_index))
        captions += caps
        caption_image += [idx] * len(caps)
    paths = list(image_index)
    _check_files(paths, entry.name)
    return split, CaptionSplit(FileImages(paths), captions, np.asarray(caption_image, np.int64))


# ---------------------------------------------------------------------------------------------
# ImageFolder and MedMNIST


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS)


def _load_imagefolder(entry) -> ClassificationData:
    root = entry.path
    if not root.is_dir():
        raise UsageError(f"datasets.{entry.name}.path: {str(root)!r} is not a folder (format imagefolder)")
    subdirs = _class_folders(root)
    split_dirs = {canonical_split(p.name): p for p in subdirs if p.name.lower() in SPLIT_ALIASES}
    if not split_dirs:
        split_dirs = {"all": root}
    folder_names = sorted({c.name for d in split_dirs.values() for c in _class_folders(d)})
    if not folder_names:
        raise DataError(f"dataset {entry.name}: no class folders under {root}")
    cn = entry.classnames
    if isinstance(cn, dict):
        order, names = folder_names, [cn.get(f, f) for f in folder_names]
    elif cn and set(cn) == set(folder_names):
        order, names = list(cn), list(cn)
    elif cn:
        if len(cn) != len(folder_names):
            raise UsageError(f"datasets.{entry.name}.classnames: {len(cn)} names for {len(folder_names)} class "
                             f"folders ({', '.join(folder_names)}); give one name per folder, in sorted order, or a "
                             f"mapping folder -> name")
        order, names = folder_names, list(cn)
    else:
        order, names = folder_names, [f.replace("_", " ") for f in folder_names]
    splits = {}
    for split, folder in split_dirs.items():
        paths, labels = [], []
        for i, cls in enumerate(order):
            files = _images_in(folder / cls) if (folder / cls).is_dir() else []
            paths += files
            labels += [i] * len(files)
        splits[split] = LabeledSplit(FileImages(paths), np.asarray(labels, np.int64))
    return ClassificationData(names, splits, True, keys=list(order))


# ---------------------------------------------------------------------------------------------
# The authors' list layout: {split}.txt of `image label` lines


def parse_list_line(line: str) -> tuple[str, str] | None:
    """(image, label) of one list line; None for a blank line. Tab-separated lines split at the last
    tab (the image path may hold spaces); others at the last run of spaces."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    parts = text.rsplit("\t", 1) if "\t" in text else text.strip().rsplit(None, 1)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise ValueError("expected `image label` (tab or space separated)")
    return parts[0].strip(), parts[1].strip()


def list_files(path: Path) -> dict[str, Path]:
    """{split: list file} of a `txt` dataset path: a folder of {train,val,test}.txt, or one .txt file."""
    if path.is_file():
        stem = path.stem.lower()
        return {canonical_split(stem) if stem in SPLIT_ALIASES else "all": path}
    if not path.is_dir():
        return {}
    return {canonical_split(p.stem): p for p in sorted(path.glob("*.txt")) if p.stem.lower() in SPLIT_ALIASES}


def read_list(path: Path, dataset: str) -> tuple[list[str], list[str]]:
    """(image paths, raw labels) of one list file; images resolved against the list's folder, or,
    as the authors' loader does, `<folder>/<list stem>/` (decided once per file, from its first line)."""
    images, labels = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"dataset {dataset}: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        try:
            item = parse_list_line(line)
        except ValueError as e:
            raise DataError(f"dataset {dataset}: {path}:{line_no}: {e}, got {line.strip()[:80]!r}") from None
        if item is not None:
            images.append(item[0])
            labels.append(item[1])
    if not images:
        return [], []
    bases = [path.parent, path.parent / path.stem]
    first = images[0]
    base = next((b for b in bases if (Path(first) if os.path.isabs(first) else b / first).is_file()), None)
    if base is None:
        raise DataError(f"dataset {dataset}: {path}: the first image {first!r} is in neither {bases[0]} nor "
                        f"{bases[1]}; list paths relative to the list file (or to its <split>/ folder)")
    return [_resolve_image(i, base, dataset) for i in images], labels


def _load_txt(entry) -> ClassificationData:
    lists = list_files(entry.path)
    if not lists:
        raise UsageError(f"datasets.{entry.name}.path: {str(entry.path)!r} holds no train.txt / val.txt / test.txt "
                         f"(format txt: lists of `image label` lines)")
    read = {split: read_list(path, entry.name) for split, path in lists.items()}
    all_labels = [lab for _, labels in read.values() for lab in labels]
    classnames, indices, named = _label_indices(all_labels, entry.classnames, entry.name)
    splits, pos = {}, 0
    for split, (paths, labels) in read.items():
        _check_files(paths, entry.name)
        splits[split] = LabeledSplit(FileImages(paths), np.asarray(indices[pos:pos + len(labels)], np.int64))
        pos += len(labels)
    return ClassificationData(classnames, splits, named, keys=_keys_of(entry.classnames, classnames))


def medmnist_classnames(stem: str) -> list[str] | None:
    import yaml

    table = yaml.safe_load(CLASSNAMES_FILE.read_text(encoding="utf-8"))
    names = table.get(stem.lower().split("_")[0])
    return list(names) if names else None


def _load_medmnist(entry) -> ClassificationData:
    if not entry.path.is_file():
        raise UsageError(f"datasets.{entry.name}.path: {str(entry.path)!r} is not a MedMNIST .npz file")
    with np.load(entry.path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    splits = {}
    multilabel = any(arrays[k].ndim == 2 and arrays[k].shape[1] > 1 for k in arrays if k.endswith("_labels"))
    for split in ("train", "val", "test"):
        if f"{split}_images" in arrays:
            labels = arrays[f"{split}_labels"].astype(np.int64)
            splits[split] = LabeledSplit(ArrayImages(arrays[f"{split}_images"]),
                                         labels if multilabel else labels.reshape(-1))
    if not splits:
        raise DataError(f"dataset {entry.name}: {entry.path} has no train_images/val_images/test_images arrays")
    num = (next(iter(splits.values())).labels.shape[1] if multilabel
           else int(max(s.labels.max() for s in splits.values())) + 1)
    cn = entry.classnames
    if isinstance(cn, dict):
        cn = [cn.get(str(i), str(i)) for i in range(num)]
    names = list(cn) if cn else medmnist_classnames(entry.path.stem)
    if names is None:
        raise UsageError(f"datasets.{entry.name}.classnames: required for {entry.path.name} (no built-in names "
                         f"for it); list one name per label 0..{num - 1}")
    if len(names) < num:
        raise UsageError(f"datasets.{entry.name}.classnames: {len(names)} names but labels go up to {num - 1}")
    return ClassificationData(names, splits, True, multilabel=multilabel)


def load_classification(entry) -> ClassificationData:
    """All splits of a classification dataset, with class names in label order."""
    if entry.format == "imagefolder":
        return _load_imagefolder(entry)
    if entry.format == "txt":
        return _load_txt(entry)
    if entry.format in ("csv", "jsonl"):
        return _load_table_classification(entry)
    if entry.format == "medmnist":
        return _load_medmnist(entry)
    raise UsageError(f"datasets.{entry.name}.format: {entry.format!r} holds no image classification data; use "
                     f"imagefolder, txt, csv, jsonl or medmnist")
