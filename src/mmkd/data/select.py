"""Selecting samples by metadata, and selections saved as reusable `--data` folders.

A selection is a set of clauses `FIELD=V1,V2`: a sample is chosen when, for every clause, one
of its values of FIELD (a JSON key of a shard sample, or a CSV/JSONL column) is one of the
listed values. Clauses on different fields are ANDed; values of one field (repeated clauses of
the same field included) are ORed. A YAML file holds long lists: a mapping FIELD -> [values].
`license` adds a clause on the derived `license_group` field: `commercial` keeps samples whose
licence allows commercial use, `noncommercial` keeps those and the non-commercial ones (it
drops BIOMEDICA's `other` subset, whose licences are unknown).

A sample's modality is the first of its `modality_key` values that the selection accepts (the
first value when no clause names that field).

Saved selection (`mmkd data select --out SUBSET`)::

    SUBSET/selection.json   the source (data path, format, keys, index folder and generation),
                            the clauses, the modality vocabulary, counts, the digest of the ids
    SUBSET/rows.npy         [n] uint32/int64: index rows of the chosen samples, in index order
    SUBSET/modality.npy     [n] int16/int32: each one's modality code (-1: none)

Given as `--data SUBSET`, it is opened against the current index of its source. When that
index was rebuilt since (a shard changed), the clauses are evaluated again and the chosen ids
must be the same (same digest) or the selection is refused: rerun `mmkd data select`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmkd.data.index import IndexedRecords, SourceIndex
from mmkd.errors import UsageError

SELECTION_FILE = "selection.json"
SELECTION_FORMAT = "mmkd-selection"
LICENSES = ("", "commercial", "noncommercial")
_LICENSE_GROUPS = {"commercial": ["commercial"], "noncommercial": ["commercial", "noncommercial"]}


def is_selection(path: str) -> bool:
    return (Path(path) / SELECTION_FILE).is_file()


def parse_clauses(items: Sequence[str], license: str = "", what: str = "--data.select") -> dict[str, list[str]]:
    """FIELD -> accepted values, from `FIELD=V1,V2` strings and YAML files (FIELD: [values])."""
    import yaml

    if license not in LICENSES:
        raise UsageError(f"--data.license: {license!r} is not allowed; choose commercial or noncommercial "
                         f"(or leave it empty for every licence)")
    out: dict[str, list[str]] = {}

    def add(field: str, values: list[str]) -> None:
        field = field.strip()
        vals = [str(v).strip() for v in values if str(v).strip()]
        if not field or not vals:
            raise UsageError(f"{what}: {field or '?'}= names no value; write FIELD=V1,V2")
        current = out.setdefault(field, [])
        current.extend(v for v in vals if v not in current)

    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if "=" not in item:  # a YAML file, or a packaged recipe's name (mmkd_b16/select-26-modalities)
            from mmkd.recipe_files import resolve_recipe

            try:
                path = resolve_recipe(item, what)
            except UsageError as e:
                raise UsageError(f"{e}; a clause is FIELD=V1,V2 (e.g. image_primary_label=Microscopy)") from None
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise UsageError(f"{what}: {item} is not valid YAML ({e})") from None
            data = data.get("select", data) if isinstance(data, dict) else data
            if not isinstance(data, dict):
                raise UsageError(f"{what}: {item} must hold a mapping FIELD: [values]")
            for field, values in data.items():
                add(str(field), values if isinstance(values, list) else [values])
            continue
        field, sep, values = item.partition("=")
        if not sep:
            raise UsageError(f"{what}: {item!r} is not FIELD=V1,V2 (e.g. image_primary_label=Microscopy) or a "
                             f"YAML file of FIELD: [values]")
        add(field, values.split(","))
    if license:
        add("license_group", _LICENSE_GROUPS[license])
    return out


def _chunks(n: int, size: int = 1 << 20):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def _match(index: SourceIndex, field: str, wanted: np.ndarray, rows_first: bool = False):
    """[N] bool: the sample has a value in `wanted`; with rows_first also [N] int64, the first such
    value's code (-1 when none)."""
    codes, starts, _ = index.field_arrays(field)
    n = index.num_samples
    hit_any = np.zeros(n, dtype=bool)
    first = np.full(n, -1, dtype=np.int64) if rows_first else None
    for lo, hi in _chunks(n):
        s = np.asarray(starts[lo:hi + 1], dtype=np.int64)
        c = np.asarray(codes[s[0]:s[-1]])
        hit = np.isin(c, wanted)
        cum = np.zeros(len(c) + 1, dtype=np.int64)
        np.cumsum(hit, out=cum[1:])
        rel = s - s[0]
        hit_any[lo:hi] = cum[rel[1:]] > cum[rel[:-1]]
        if first is not None and hit.any():
            pos = np.where(hit, np.arange(len(c)), len(c))
            has = rel[1:] > rel[:-1]
            firsts = np.full(hi - lo, len(c), dtype=np.int64)
            firsts[has] = np.minimum.reduceat(pos, rel[:-1][has]) if has.any() else firsts[has]
            ok = hit_any[lo:hi]
            first[lo:hi][ok] = c[firsts[ok]]
    return hit_any, first


def evaluate(index: SourceIndex, clauses: dict[str, list[str]], modality_key: str = "modality",
             warn=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows [n] int64, modality codes [n] int64, modality vocabulary) of the samples the clauses
    choose, in index order. Values absent from the data are reported through `warn`."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    mask = np.ones(index.num_samples, dtype=bool)
    modality_first = None
    for field, values in clauses.items():
        if field not in index.fields:
            raise UsageError(f"--data.select: {field!r} is not an indexed field of {index.meta.get('source')}; "
                             f"indexed: {', '.join(sorted(index.fields))}")
        vocab = index.fields[field]
        lookup = {v: i for i, v in enumerate(vocab)}
        absent = [v for v in values if v not in lookup]
        if absent:
            import difflib

            hints = {v: difflib.get_close_matches(v, vocab, n=1) for v in absent}
            warn(f"--data.select {field}: no sample has the value(s) " + ", ".join(
                f"{v!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for v, h in hints.items()))
        wanted = np.array([lookup[v] for v in values if v in lookup], dtype=np.int64)
        hit, first = _match(index, field, wanted, rows_first=field == modality_key)
        mask &= hit
        if field == modality_key:
            modality_first = first
    rows = np.flatnonzero(mask)
    if modality_key in index.fields:
        if modality_first is None:
            modality_first = index.first_values(modality_key)
        modality = modality_first[rows]
        vocab = index.fields[modality_key]
    else:
        modality, vocab = np.full(len(rows), -1, dtype=np.int64), []
    return rows, modality, list(vocab)


def counts(index: SourceIndex, rows: np.ndarray, modality: np.ndarray, modality_values: list[str]) -> dict[str, Any]:
    """Chosen samples per modality and per licence group."""
    by_modality = Counter()
    for code, n in zip(*np.unique(modality, return_counts=True)):
        by_modality[modality_values[int(code)] if code >= 0 else "(none)"] += int(n)
    by_license: Counter = Counter()
    if "license_group" in index.fields and len(rows):
        groups = index.first_values("license_group")[rows]
        vocab = index.fields["license_group"]
        for code, n in zip(*np.unique(groups, return_counts=True)):
            by_license[vocab[int(code)] if code >= 0 else "(unknown)"] += int(n)
    elif len(rows):
        by_license["(unknown)"] = len(rows)
    return {"num_samples": int(len(rows)), "by_modality": dict(by_modality.most_common()),
            "by_license": dict(by_license.most_common())}


def format_counts(c: dict[str, Any], total: int) -> str:
    lines = [f"selected {c['num_samples']:,} of {total:,} samples"]
    for title, key in (("modality", "by_modality"), ("licence", "by_license")):
        table = c[key]
        if not table:
            continue
        width = max(len(title), *map(len, table))
        lines.append(f"{title:<{width}}  {'samples':>10}")
        lines += [f"{name:<{width}}  {n:>10,}" for name, n in table.items()]
    return "\n".join(lines)


def _ids_digest(index: SourceIndex, rows: np.ndarray) -> str:
    from mmkd.data.records import ids_digest as digest

    return digest(index.iter_sample_ids(rows))


def write_selection(out: str | Path, index: SourceIndex, source: dict[str, Any], clauses: dict[str, list[str]],
                    license: str, modality_key: str, rows: np.ndarray, modality: np.ndarray,
                    modality_values: list[str], overwrite: bool = False) -> dict[str, Any]:
    """Save a selection folder (see the module doc); returns its selection.json content.

    An existing selection is replaced only with `overwrite`, or when it holds the very same samples: runs
    may be training on it, and a resume would read other samples."""
    from mmkd.utils.io import atomic_path, atomic_write_text

    out = Path(out)
    if out.exists() and not (out / SELECTION_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out: {out} exists and is not a selection folder; choose a new or empty folder")
    digest = _ids_digest(index, rows)
    if (out / SELECTION_FILE).is_file() and not overwrite:
        try:
            old = json.loads((out / SELECTION_FILE).read_text())
        except (OSError, ValueError):
            old = {}
        if not isinstance(old, dict) or old.get("sample_ids_sha256") != digest:
            before = old.get("num_samples", "?") if isinstance(old, dict) else "?"
            raise UsageError(f"--out: {out} already holds a selection ({before} samples) and this one differs "
                             f"({len(rows)} samples); runs trained on it would resume on other samples. Choose a "
                             f"new --out folder, or pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    row_type = np.uint32 if index.num_samples < 2 ** 32 else np.int64
    code_type = np.int16 if len(modality_values) < 2 ** 15 else np.int32
    with atomic_path(out / "rows.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, rows.astype(row_type))
    with atomic_path(out / "modality.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, modality.astype(code_type))
    meta = {"format": SELECTION_FORMAT, "version": 1, "source": source,
            "index": {"dir": str(index.folder.resolve()), "generation": index.generation,
                      "num_samples": index.num_samples, "sample_ids_sha256": index.meta.get("sample_ids_sha256")},
            "select": clauses, "license": license, "modality_key": modality_key, "modalities": modality_values,
            "num_samples": int(len(rows)), "sample_ids_sha256": digest,
            "counts": counts(index, rows, modality, modality_values)}
    size = (out / "rows.npy").stat().st_size + (out / "modality.npy").stat().st_size
    meta["bytes_per_sample"] = round((size + len(json.dumps(meta))) / max(1, len(rows)), 2)
    atomic_write_text(out / SELECTION_FILE, json.dumps(meta, indent=1))
    return meta


def read_selection(path: str | Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(path) / SELECTION_FILE).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--data: {path} is not a readable selection ({e})") from None
    if meta.get("format") != SELECTION_FORMAT:
        raise UsageError(f"--data: {path}/{SELECTION_FILE} is not an mmkd selection")
    return meta


def selection_rows(path: str | Path, meta: dict[str, Any], index: SourceIndex
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The saved rows and modality codes, checked against the current index (see the module doc)."""
    path = Path(path)
    if index.generation == meta["index"]["generation"]:
        return (np.load(path / "rows.npy", mmap_mode="r"), np.load(path / "modality.npy", mmap_mode="r"),
                list(meta["modalities"]))
    rows, modality, vocab = evaluate(index, meta["select"], meta["modality_key"], warn=lambda msg: None)
    if len(rows) != meta["num_samples"] or _ids_digest(index, rows) != meta["sample_ids_sha256"]:
        raise UsageError(f"--data: the selection {path} no longer matches its data: the shards of "
                         f"{meta['source']['data']} changed since it was made ({len(rows):,} samples match its "
                         f"clauses now, {meta['num_samples']:,} then). Rerun `mmkd data select` to make it again")
    return rows, modality, vocab


def selected_records(index: SourceIndex, rows: np.ndarray | None, modality: np.ndarray | None,
                     modality_values: list[str], caption_key: str, modality_key: str,
                     extra: dict[str, list[str]] | None = None) -> IndexedRecords:
    """Records of `rows` (all when None); `extra` clauses narrow them further."""
    if extra:
        more_rows, more_mod, vocab = evaluate(index, extra, modality_key)
        if rows is None:
            rows, modality, modality_values = more_rows, more_mod, vocab
        else:
            keep = np.isin(np.asarray(rows, dtype=np.int64), more_rows)
            rows, modality = np.asarray(rows)[keep], np.asarray(modality)[keep]
    return IndexedRecords(index, rows, caption_key, modality_key, modality, modality_values)
