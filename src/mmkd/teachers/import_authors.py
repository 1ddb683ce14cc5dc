"""Convert the MMKD-CLIP authors' per-sample feature folders into a feature store.

Authors' layout (see tests/data/mmkd-reference/README.md)::

    ROOT/meta.jsonl                     one JSON per sample: id, imgpath, txt, available_clips
    ROOT/<dir of imgpath>/clips_output.pt           {"<Teacher>_img": [d], "<Teacher>_txt": [d]}
    ROOT/<dir of imgpath>/clips_project_output.pt   same keys, projected to 512 dims

The `.pt` files are pickles: they are opened with `torch.load(weights_only=True)` only, so a
forged file cannot run code; such a sample keeps its row, unavailable for every teacher.
Raw features become each teacher's `image`/`text`; projected ones its `projected_image`/
`projected_text` (precomputed alignment targets); `available_clips` the availability. The
import streams meta.jsonl chunk by chunk and resumes like `mmkd extract`.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmkd.data.feature_store import FeatureStore, FeatureStoreWriter, TeacherEntry
from mmkd.errors import UsageError
from mmkd.utils.io import json_object_line

# The authors' teacher keys and raw dims in their released demo data; an import discovers its own
# teachers from the files (`discover_teachers`), this table only documents what to expect.
AUTHOR_TEACHERS: dict[str, int] = {"BMCA": 768, "BiomedCLIP": 512, "UniMedCLIP": 512, "PMCCLIP": 768,
                                   "QuiltNet": 512, "GenMedClip": 512, "PLIP": 512, "PUBMEDCLIP": 512}
PROJECTED_DIM = 512
DISCOVERY_ROWS = 10_000  # feature files read at most to find every listed teacher's dimension
RAW_FILE = "clips_output.pt"
PROJECTED_FILE = "clips_project_output.pt"


def _meta_lines(meta: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(meta, encoding="utf-8", errors="surrogateescape") as f:
        row = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield row, json_object_line(line, f"ROOT: {meta}:{line_no}",
                                        "a sample record (id, imgpath, txt, available_clips)")
            row += 1


def _load_pt(path: Path) -> dict[str, Any] | str:
    """The tensor dict of a `.pt` file, or the reason it cannot be used."""
    import torch

    if not path.is_file():
        return "missing_features"
    try:
        with warnings.catch_warnings():  # pickle-protocol notices: the file is refused or read, either way
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # forged/corrupt pickle: never retried without weights_only
        return "unsafe_or_unreadable_features"
    if not isinstance(obj, dict):
        return "unsafe_or_unreadable_features"
    return obj


def discover_teachers(root: str | os.PathLike, max_rows: int = DISCOVERY_ROWS) -> dict[str, Any]:
    """The teachers of an authors'-layout folder and their dims, read from the files themselves.

    Teacher names are the `available_clips` entries of meta.jsonl plus every `<Name>_img`/`<Name>_txt`
    pair found in the feature files; each one's raw dim (and the projected dim) comes from the first
    feature file holding it. Feature files are read in row order until every listed teacher has a dim
    (at most `max_rows`). Returns {"teachers": {name: dim} in order of first appearance,
    "projected_dim": int | None, "listed_without_features": [names], "rows_read": int}.
    """
    root = Path(root)
    meta = root / "meta.jsonl"
    if not meta.is_file():
        raise UsageError(f"ROOT: {str(root)!r} has no meta.jsonl; pass the folder that holds meta.jsonl and features/")
    listed: dict[str, None] = {}
    for _, record in _meta_lines(meta):
        for name in record.get("available_clips") or []:
            listed.setdefault(str(name), None)
    dims: dict[str, int] = {}
    projected_dim = None
    rows_read = 0
    for _, record in _meta_lines(meta):
        if rows_read >= max_rows or (rows_read and projected_dim and listed.keys() <= dims.keys()):
            break
        folder = root / Path(record.get("imgpath", "")).parent
        raw = _load_pt(folder / RAW_FILE)
        rows_read += 1
        if isinstance(raw, str):
            continue
        for key, value in raw.items():
            name = key[:-4] if key.endswith("_img") else ""
            if name and f"{name}_txt" in raw and hasattr(value, "numel"):
                dims.setdefault(name, int(value.numel()))
        projected = _load_pt(folder / PROJECTED_FILE)
        if projected_dim is None and isinstance(projected, dict):
            first = next((v for k, v in projected.items() if k.endswith("_img") and hasattr(v, "numel")), None)
            projected_dim = int(first.numel()) if first is not None else None
    order = list(dict.fromkeys([*listed, *dims]))
    return {"teachers": {n: dims[n] for n in order if n in dims}, "projected_dim": projected_dim,
            "listed_without_features": [n for n in listed if n not in dims], "rows_read": rows_read}


def import_author_features(root: str | os.PathLike, out: str | os.PathLike, chunk_rows: int = 1024,
                           teachers: dict[str, int] | None = None, projected_dim: int | None = None,
                           progress: bool = True) -> dict[str, Any]:
    """Write (or resume) a store from the authors' layout. Returns the summary.

    `teachers` (name -> raw dim) and `projected_dim` default to what `discover_teachers` finds.
    """
    root = Path(root)
    meta = root / "meta.jsonl"
    if not meta.is_file():
        raise UsageError(f"ROOT: {str(root)!r} has no meta.jsonl; pass the folder that holds meta.jsonl and features/")
    discovered: dict[str, Any] = {"listed_without_features": []}
    if teachers is None or projected_dim is None:
        discovered = discover_teachers(root)
    if teachers is None:
        teachers = discovered["teachers"]
        if not teachers:
            raise UsageError(f"ROOT: no teacher features found in the first {discovered['rows_read']} samples of "
                             f"{root} (files {RAW_FILE} with <Name>_img/<Name>_txt tensors); check the folder, or "
                             f"name the teachers with --teacher-dims NAME=DIM")
    teachers = dict(teachers)
    projected_dim = projected_dim or discovered.get("projected_dim") or PROJECTED_DIM
    from mmkd.utils.locks import writer_lock

    with writer_lock(out, "--out", "feature store", command="mmkd import-features"):
        return _import(root, meta, out, chunk_rows, teachers, projected_dim, progress,
                       discovered["listed_without_features"])


def _import(root: Path, meta: Path, out: str | os.PathLike, chunk_rows: int, teachers: dict[str, int],
            projected_dim: int, progress: bool, listed_without_features: list[str]) -> dict[str, Any]:
    sample_ids = [str(m.get("id", row)) for row, m in _meta_lines(meta)]
    provenance = {"weights": {"source": "MMKD-CLIP authors' released features"}, "preprocess": "authors' pipeline",
                  "tokenizer": "authors' pipeline", "imported_from": str(root.resolve())}
    entries = [TeacherEntry(name, dim, provenance, extra_dims={"projected_image": projected_dim,
                                                                "projected_text": projected_dim},
                            settings={"availability": "available_clips"}) for name, dim in teachers.items()]
    writer = FeatureStoreWriter.open(out, sample_ids, entries, chunk_rows=chunk_rows,
                                     extra_manifest={"source": {"authors_features": str(root)}})
    pending = writer.pending(list(teachers))
    problems: Counter = Counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sample_ids), desc="import", unit="rows", mininterval=1.0)
    chunk, buf = -1, None
    for row, record in _meta_lines(meta):
        c = row // writer.chunk_rows
        if bar is not None:
            bar.update(1)
        if c not in pending:
            continue
        if c != chunk:
            chunk, buf = c, _Chunk(writer, c, teachers, projected_dim)
        assert buf is not None  # the first row of a pending chunk starts its buffer
        buf.add(row, record, root, problems)
        if row == buf.stop - 1:
            for name in pending[c]:
                writer.write_chunk(c, name, buf.arrays[name], record_extra={"problems": dict(buf.problems)})
    if bar is not None:
        bar.close()
    store_problems: Counter = Counter()
    for rec in writer.records(next(iter(teachers))):
        store_problems.update(rec.get("problems", {}))
    store = FeatureStore(writer.path, allow_partial=True)
    from mmkd.teachers.extract import teacher_table

    summary = {"teachers": teacher_table(store), "problems": dict(store_problems),
               "listed_without_features": listed_without_features}
    writer.finalize(summary)
    return summary


class _Chunk:
    def __init__(self, writer: FeatureStoreWriter, chunk: int, teachers: dict[str, int], projected_dim: int):
        self.start, self.stop = writer.chunk_bounds(chunk)
        n = self.stop - self.start
        self.teachers = teachers
        self.problems: Counter = Counter()
        self.arrays = {t: {"image": np.zeros((n, d), np.float16), "text": np.zeros((n, d), np.float16),
                           "projected_image": np.zeros((n, projected_dim), np.float16),
                           "projected_text": np.zeros((n, projected_dim), np.float16),
                           "available": np.zeros(n, bool), "score": np.full(n, np.nan, np.float32)}
                       for t, d in teachers.items()}

    def add(self, row: int, record: dict[str, Any], root: Path, problems: Counter) -> None:
        i = row - self.start
        imgpath, listed_clips = record.get("imgpath", ""), record.get("available_clips") or []
        if not isinstance(imgpath, str) or not isinstance(listed_clips, list) or \
                not all(isinstance(c, str) for c in listed_clips):
            self.problems["bad_meta_record"] += 1  # the row stays, unavailable for every teacher
            problems["bad_meta_record"] += 1
            return
        folder = root / Path(imgpath).parent
        raw = _load_pt(folder / RAW_FILE)
        projected = _load_pt(folder / PROJECTED_FILE)
        if isinstance(raw, str) or isinstance(projected, str):  # a problem name instead of the tensors
            got = raw if isinstance(raw, str) else projected
            self.problems[got] += 1
            problems[got] += 1
            return
        listed = set(listed_clips)
        for name, dim in self.teachers.items():
            keys = [f"{name}_img", f"{name}_txt"]
            if not all(k in raw for k in keys):
                if name in listed:
                    self.problems["listed_but_missing"] += 1
                continue
            img, txt = (raw[k].detach().float().reshape(-1).numpy() for k in keys)
            if img.shape[0] != dim or txt.shape[0] != dim:
                raise UsageError(f"ROOT: sample {record.get('id')!r}: teacher {name} has {img.shape[0]}-dim features, "
                                 f"expected {dim}; pass --teacher-dims {name}={img.shape[0]} if that is right")
            arrays = self.arrays[name]
            arrays["image"][i], arrays["text"][i] = img, txt
            if all(k in projected for k in keys):
                arrays["projected_image"][i] = projected[keys[0]].float().reshape(-1).numpy()
                arrays["projected_text"][i] = projected[keys[1]].float().reshape(-1).numpy()
            arrays["available"][i] = name in listed
