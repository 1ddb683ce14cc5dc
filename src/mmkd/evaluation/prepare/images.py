"""Converters for labelled image sets, written in the authors' list layout (`{split}.txt` + `{split}/`).

Layout families (catalog `prepare.layout`):
- `class_folders`: one folder per class (LC25000, NCT-CRC-HE, BACH, OCT2017, chest X-ray, BUSI), or
  the class in the file name (FIVES `<n>_<L>.png`). `files`: a pattern with `{label}` (and
  `{split}`, mapped by `split_names`), or a mapping split -> pattern; `labels`: the class values
  that must all be present; `exclude`: name patterns to skip (BUSI's masks).
- `table_images`: a metadata table (CSV or TSV) naming image ids and labels, images anywhere in
  the download (HAM10000). `table`, `image_column`, `label_column`, `images` (pattern with `{id}`).
- `h5_patches`: HDF5 arrays `x` (N×H×W×3 uint8) and `y` (labels) per split, optionally gzipped
  (PatchCamelyon); written as PNGs. Needs h5py (`pip install mmkd[prepare]`).
- `table_paths`: a list table naming each image by its path inside the image archive and its class by
  one-hot columns (CheXpert 5x200: `imgpath` = `CheXpert-v1.0-small/train/...jpg`, one of the five
  finding columns 1.0). `table`, `image_column`, `label_columns`; the path is looked up with its
  leading folders dropped one by one, so the images can be given as the archive, the unpacked folder
  or the folder above it. Written as `<file>.csv` (image,label) with `images/<path>` (format `csv`).
- `npz`: a MedMNIST .npz kept as it is, its label arrays counted (format `medmnist` reads it).
"""

from __future__ import annotations

import gzip
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mmkd.errors import DataError, UsageError
from mmkd.evaluation.prepare.common import Context, Plan, lacking, need, read_table, safe_name, write_lists
from mmkd.evaluation.prepare.download import (Download, Member, UnrecognisedDownload, compile_pattern,
                                              refuse_placeholder)


def _split_patterns(spec: dict, where: str) -> dict[str | None, str]:
    files = need(spec, "files", where)
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {None: str(files)}


def _unique_dest(used: set[str], rel: str) -> str:
    if rel not in used:
        used.add(rel)
        return rel
    stem, dot, ext = rel.rpartition(".")
    n = 1
    while f"{stem}_{n}.{ext}" in used:
        n += 1
    used.add(f"{stem}_{n}.{ext}")
    return f"{stem}_{n}.{ext}"


def class_folders(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    labels = [str(v) for v in need(spec, "labels", where)]
    split_names = {str(k): str(v) for k, v in (spec.get("split_names") or {}).items()}
    excludes = [compile_pattern(p) for p in ([spec["exclude"]] if isinstance(spec.get("exclude"), str)
                                             else spec.get("exclude") or [])]
    found: dict[str, list[tuple[Member, str]]] = defaultdict(list)
    ignored = Counter()
    for split_key, pattern in _split_patterns(spec, where).items():
        for member, fields in download.match(pattern):
            name = member.path.rsplit("/", 1)[-1]
            if any(x.fullmatch(name) for x in excludes):
                continue
            label = fields.get("label")
            if label not in labels:
                ignored[label] += 1
                continue
            raw_split = fields.get("split")
            if split_key is not None:
                split = split_key
            elif raw_split is not None:
                if split_names and raw_split not in split_names:
                    ignored[f"split folder {raw_split}"] += 1
                    continue
                split = split_names.get(raw_split, raw_split)
            else:
                split = "all"
            found[split].append((member, label))
    if not found:
        raise UnrecognisedDownload(download, "no image of the expected classes", ctx.expected)
    present = {lab for items in found.values() for _, lab in items}
    absent = [lab for lab in labels if lab not in present]
    if absent:
        raise UnrecognisedDownload(download, f"no image of class(es) {', '.join(absent)}", ctx.expected)
    counts = {split: dict(sorted(Counter(lab for _, lab in items).items())) for split, items in found.items()}
    notes = [f"skipped {n} file(s) of {k!r}, which is not a class of this dataset" for k, n in ignored.items() if k]

    def write(folder: Path) -> dict:
        jobs, lists = [], {}
        for split, items in found.items():
            if not ctx.want(split):
                continue
            used: set[str] = set()
            lines = []
            for member, label in items:
                rel = _unique_dest(used, f"{safe_name(label)}/{safe_name(member.path.rsplit('/', 1)[-1])}")
                jobs.append((member, folder / split / rel))
                lines.append((rel, label))
            lists[split] = lines
        download.copy_many(jobs, progress=f"{ctx.name}: copy images", link=ctx.link)
        write_lists(folder, lists)
        return {"format": "txt", "splits": sorted(lists)}

    return Plan(counts, write, notes=notes)


def table_images(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    table = download.one(need(spec, "table", where), "metadata table", ctx.expected)
    rows = read_table(table)
    image_col, label_col = need(spec, "image_column", where), need(spec, "label_column", where)
    problem = lacking([image_col, label_col], rows[0], table.path) if rows else None
    if problem:
        raise UnrecognisedDownload(download, problem, ctx.expected)
    images = {fields["id"]: member for member, fields in download.match(need(spec, "images", where))}
    labels = [str(v) for v in spec.get("labels") or []]
    items, missing = [], []
    for row in rows:
        image_id, label = row[image_col].strip(), row[label_col].strip()
        if labels and label not in labels:
            raise DataError(f"dataset {ctx.name}: {table.path}: label {label!r} is not one of {', '.join(labels)}")
        member = images.get(image_id)
        if member is None:
            missing.append(image_id)
        else:
            items.append((member, label))
    if missing:
        raise UnrecognisedDownload(download, f"{len(missing)} of the {len(rows)} images the table lists are missing "
                                             f"(e.g. {missing[0]})", ctx.expected)
    counts = {"all": dict(sorted(Counter(lab for _, lab in items).items()))}

    def write(folder: Path) -> dict:
        jobs, lines = [], []
        for member, label in items:
            rel = f"{safe_name(label)}/{safe_name(member.path.rsplit('/', 1)[-1])}"
            jobs.append((member, folder / "all" / rel))
            lines.append((rel, label))
        download.copy_many(jobs, progress=f"{ctx.name}: copy images", link=ctx.link)
        write_lists(folder, {"all": lines})
        return {"format": "txt", "splits": ["all"]}

    return Plan(counts, write)


def table_paths(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    table = download.one(need(spec, "table", where), "image list table", ctx.expected)
    rows = read_table(table)
    image_col, label_cols = str(need(spec, "image_column", where)), [str(c) for c in need(spec, "label_columns", where)]
    problem = lacking([image_col, *label_cols], rows[0], table.path) if rows else None
    if problem:
        raise UnrecognisedDownload(download, problem, ctx.expected)
    items, missing, unlabelled = [], [], []
    for n, row in enumerate(rows, 2):
        hot = [c for c in label_cols if str(row.get(c, "")).strip() not in ("", "0", "0.0", "-1", "-1.0")]
        if len(hot) != 1:
            unlabelled.append(f"line {n}: {hot or 'no class'}")
            continue
        parts = [p for p in str(row[image_col]).strip().split("/") if p]
        member = next((download.members[m] for m in ("/".join(parts[i:]) for i in range(len(parts)))
                       if m in download.members), None)
        if member is None:
            missing.append(str(row[image_col]))
        else:
            items.append((member, "/".join(parts), hot[0]))
    if unlabelled:
        raise DataError(f"dataset {ctx.name}: {table.path}: {len(unlabelled)} row(s) have not exactly one of "
                        f"{', '.join(label_cols)} set (e.g. {unlabelled[0]})")
    if missing:
        raise UnrecognisedDownload(download, f"{len(missing)} of the {len(rows)} images the table lists are missing "
                                             f"(e.g. {missing[0]})", ctx.expected)
    counts = {"all": dict(sorted(Counter(lab for _, _, lab in items).items()))}

    def write(folder: Path) -> dict:
        import csv

        jobs = [(member, folder / "images" / rel) for member, rel, _ in items]
        download.copy_many(jobs, progress=f"{ctx.name}: copy images", link=ctx.link)
        with open(folder / ctx.file_name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "label"])
            writer.writerows((f"images/{rel}", label) for _, rel, label in items)
        return {"format": "csv", "file": ctx.file_name}

    return Plan(counts, write)


def local_copy(member: Member, scratch: Path) -> Path:
    """A file on disk with the member's (decompressed, for .gz) content: the file itself, or a copy in `scratch`."""
    if member.local is not None and not member.path.lower().endswith(".gz"):
        return member.local
    scratch.mkdir(parents=True, exist_ok=True)
    name = member.path.rsplit("/", 1)[-1]
    dest = scratch / (name[:-3] if name.lower().endswith(".gz") else name)
    if not dest.exists():
        with member.opener() as raw:
            src = gzip.open(raw) if name.lower().endswith(".gz") else raw
            try:
                with open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (OSError, EOFError) as e:
                dest.unlink(missing_ok=True)
                raise DataError(f"{member.path}: cannot decompress ({e}); the download may be incomplete") from None
    return dest


def _h5py():
    try:
        import h5py
    except ImportError:
        raise UsageError("this dataset's download is HDF5; install h5py: pip install 'mmkd[prepare]'") from None
    return h5py


def h5_patches(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    h5py = _h5py()
    split_names = {str(k): str(v) for k, v in need(spec, "split_names", where).items()}
    x_key, y_key = spec.get("x_key", "x"), spec.get("y_key", "y")
    files: dict[str, dict[str, Member]] = defaultdict(dict)
    for member, fields in download.match(need(spec, "files", where)):
        if fields.get("split") in split_names:
            files[split_names[fields["split"]]][fields["array"]] = member
    incomplete = [s for s in split_names.values() if set(files.get(s, {})) != {x_key, y_key}]
    if not files or len(incomplete) == len(split_names):
        raise UnrecognisedDownload(download, "no split with both its image (x) and label (y) file", ctx.expected)
    if incomplete:
        raise UnrecognisedDownload(download, f"split(s) {', '.join(incomplete)} lack their x or y file", ctx.expected)
    labels: dict[str, np.ndarray] = {}
    for split, pair in files.items():
        with h5py.File(local_copy(pair[y_key], ctx.scratch), "r") as f:
            labels[split] = np.asarray(f[y_key]).reshape(-1).astype(np.int64)
    counts = {s: {str(c): int(n) for c, n in enumerate(np.bincount(y)) if n} for s, y in labels.items()}

    def write(folder: Path) -> dict:
        from PIL import Image
        from tqdm.auto import tqdm

        lists = {}
        for split, pair in files.items():
            if not ctx.want(split):
                continue
            (folder / split).mkdir(parents=True, exist_ok=True)
            x_path = local_copy(pair[x_key], ctx.scratch)
            lines = []
            with h5py.File(x_path, "r") as f:
                x = f[x_key]
                if x.shape[0] != len(labels[split]):
                    raise DataError(f"dataset {ctx.name}: {split}: {x.shape[0]} images but {len(labels[split])} labels")
                for start in tqdm(range(0, x.shape[0], 1024), desc=f"{ctx.name}: {split} images", unit="chunk",
                                  disable=None, leave=False):
                    block = np.asarray(x[start:start + 1024])
                    for i, arr in enumerate(block, start):
                        name = f"{i:06d}.png"
                        Image.fromarray(arr).save(folder / split / name)
                        lines.append((name, str(int(labels[split][i]))))
            if x_path.parent == ctx.scratch:
                x_path.unlink()
            lists[split] = lines
        write_lists(folder, lists)
        return {"format": "txt", "splits": sorted(lists)}

    return Plan(counts, write)


def npz(download: Download, spec: dict, ctx: Context) -> Plan:
    where = f"datasets.{ctx.name}"
    member = download.one(need(spec, "file", where), "MedMNIST .npz", ctx.expected)
    refuse_placeholder(member.path, member.head())
    path = local_copy(member, ctx.scratch)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            labels = {s: arrays[f"{s}_labels"] for s in ("train", "val", "test") if f"{s}_labels" in arrays.files}
            sizes = {s: int(arrays[f"{s}_images"].shape[0]) for s in labels if f"{s}_images" in arrays.files}
    except (ValueError, OSError, EOFError) as e:
        raise UnrecognisedDownload(download, f"{member.path} is not a readable .npz ({e})", ctx.expected) from None
    if not labels or set(sizes) != set(labels):
        raise UnrecognisedDownload(download, f"{member.path} lacks the {{train,val,test}}_{{images,labels}} arrays",
                                   ctx.expected)
    counts = {}
    for split, y in labels.items():
        if y.ndim == 2 and y.shape[1] > 1:  # multi-label (ChestMNIST): count images
            counts[split] = {"images": int(y.shape[0])}
        else:
            counts[split] = {str(c): int(n) for c, n in enumerate(np.bincount(y.reshape(-1).astype(np.int64))) if n}

    def write(folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (ctx.file_name + ".partial")
        tmp.unlink(missing_ok=True)
        try:
            if not ctx.link or path.parent == ctx.scratch:
                raise OSError
            import os

            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
        tmp.replace(folder / ctx.file_name)
        return {"format": "medmnist", "file": ctx.file_name}

    return Plan(counts, write, kind="file")
