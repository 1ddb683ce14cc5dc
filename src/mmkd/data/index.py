"""A persistent, memory-mapped index of a data source: where every sample lives, and its metadata.

Legend: N samples of the source, S shards, V values of a metadata field over all samples.

An index is a folder (by default under $MMKD_CACHE/index, ~/.cache/mmkd/index; `--data.index_dir`
chooses another, e.g. on storage every node shares)::

    index.json                 what was indexed: kind (webdataset | csv | jsonl), the source, the
                               settings that shape the index (keys, fields), one entry per shard/file
                               (relative path, size, mtime_ns, its rows [start, stop), damage, a
                               digest of its member listing), field vocabularies, the generation
    <generation>/keys.npy      [total key bytes] uint8: the sample keys, UTF-8, back to back
    <generation>/key_starts.npy [N + 1] int64
    <generation>/members.npy   webdataset: [N] packed records of image/caption/json member offsets
                               and sizes (41 bytes); csv/jsonl: record_starts.npy [N + 1] int64 byte
                               offsets of each record in the file, and flags.npy [N] uint8
    <generation>/field-<i>.codes.npy / .starts.npy   a metadata field: the codes of each sample's
                               values (CSR: sample n has codes[starts[n]:starts[n + 1]])

Every later launch and every process maps these arrays read-only: opening reads index.json and
one `stat` per shard, nothing else; a record is built when it is asked for. Writers never change
a generation in place: a rebuild writes a new generation folder and then replaces index.json
(atomic rename), so a process that still maps the old one keeps reading consistent files.

A generation lives as long as a process may still open it. Every process that opens one leaves a
lease, `leases/<generation>@<host>@<pid>` (a DataLoader worker started by spawn or forkserver
reopens the generation its parent had, and leases it too). A rebuild marks the generation it
replaces as retired (`<generation>/.retired`) and removes only retired generations that are past
a grace period (`index_build.RETIRED_GRACE_S`, 10 minutes: a process that read index.json just
before the replace takes its lease within it) and hold no live lease: one of a running process of
this host, or one of another host renewed within `index_build.FOREIGN_LEASE_MAX_AGE_S` (7 days).
Leases of ended processes are removed at the same time.

A shard's sample id is `<shard path relative to the root, without .tar>/<member key>`; a table
row's is its `id_key` column, or its row number (0-based) when the column is absent.
"""

from __future__ import annotations

import csv
import io
import json
import mmap
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

INDEX_FILE = "index.json"
LEASES = "leases"
RETIRED = ".retired"
FORMAT = "mmkd-index"
VERSION = 2  # 2: a key repeated within a shard keeps its first sample and is counted (duplicate_keys)
MAX_CAPTION_CHARS = 128 * 1024  # a longer CSV/JSONL caption is skipped as caption_too_long
FLAG_CAPTION_TOO_LONG = 1

# Packed member table of a webdataset sample (no padding: 41 bytes a sample).
MEMBER_DTYPE = np.dtype([("image_off", "<i8"), ("image_size", "<u4"), ("caption_off", "<i8"),
                         ("caption_size", "<u4"), ("json_off", "<i8"), ("json_size", "<u4"),
                         ("caption_kind", "u1")])
CAPTION_NONE, CAPTION_TXT, CAPTION_JSON = 0, 1, 2

# BIOMEDICA's per-sample JSON fields worth selecting on (see docs/SCALING.md), plus two fields
# mmkd derives: `subset` (the first folder of a nested shard: commercial, noncommercial, other)
# and `license_group` (commercial | noncommercial | other, from the subset or `article_license`).
DEFAULT_SHARD_FIELDS = ("image_primary_label", "image_secondary_label", "image_panel_type", "image_panel_subtype",
                        "image_label_id", "article_license")
DERIVED_FIELDS = ("subset", "license_group")


@dataclass
class TableLayout:
    """How a CSV/JSONL file is read: its columns (CSV), delimiter and the keys that matter."""

    header: list[str] = field(default_factory=list)
    delimiter: str = ","
    image_key: str = "image"
    caption_key: str = "caption"
    id_key: str = "sample_id"


class SourceIndex:
    """An opened index: memmapped arrays plus the shard/file table. Picklable (reopens by path)."""

    def __init__(self, folder: str | os.PathLike, meta: dict[str, Any] | None = None):
        self._setup(folder, meta)

    def _setup(self, folder: str | os.PathLike, meta: dict[str, Any] | None) -> None:
        self.folder = Path(folder)
        self.meta = meta if meta is not None else json.loads((self.folder / INDEX_FILE).read_text())
        self.kind: str = self.meta["kind"]
        self.num_samples: int = int(self.meta["num_samples"])
        self.root = Path(self.meta["root"])
        self.shards: list[dict[str, Any]] = self.meta["shards"]
        self.shard_paths = [str(self.root / s["path"]) for s in self.shards]
        # sample id prefix of each shard: its relative path without the .tar suffix
        self.shard_prefixes = [s["path"][:-4] if s["path"].endswith(".tar") else s["path"] for s in self.shards]
        self.shard_starts = np.array([s["start"] for s in self.shards] + [self.num_samples], dtype=np.int64)
        self.fields: dict[str, list[str]] = {k: v["values"] for k, v in self.meta["fields"].items()}
        lease_generation(self.folder, self.meta["generation"])
        self._open_arrays()
        self._fd: tuple[int, int] | None = None  # (pid, fd) of the table file, opened per process

    def _open_arrays(self) -> None:
        gen = self.folder / self.meta["generation"]

        def load(name: str) -> np.ndarray:
            arr = np.load(gen / name, mmap_mode="r")
            # Records are read in random order: without this the kernel reads ahead around every page a
            # record touches, and the process maps far more of the index than it reads.
            raw = getattr(arr, "_mmap", None)
            if raw is not None and hasattr(mmap, "MADV_RANDOM"):
                raw.madvise(mmap.MADV_RANDOM)
            return arr

        self.keys = load("keys.npy")
        self.key_starts = load("key_starts.npy")
        if self.kind == "webdataset":
            self.members = load("members.npy")
        else:
            self.record_starts = load("record_starts.npy")
            self.flags = load("flags.npy")
            self.layout = TableLayout(**self.meta["table"])
        self._field_arrays = {name: (load(f"field-{i}.codes.npy"), load(f"field-{i}.starts.npy"))
                              for i, name in enumerate(self.meta["fields"])}

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "meta": self.meta}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._setup(state["folder"], state["meta"])

    def __len__(self) -> int:
        return self.num_samples

    @property
    def generation(self) -> str:
        return self.meta["generation"]

    def nbytes(self) -> int:
        """Bytes of the index on disk (index.json and the arrays of this generation)."""
        gen = self.folder / self.generation
        return (self.folder / INDEX_FILE).stat().st_size + sum(p.stat().st_size for p in gen.iterdir())

    # ---- sample ids ---------------------------------------------------------------------
    def shard_of(self, row: int) -> int:
        return int(np.searchsorted(self.shard_starts, row, side="right")) - 1

    def key(self, row: int) -> str:
        a, b = self.key_starts[row], self.key_starts[row + 1]
        return bytes(self.keys[a:b]).decode("utf-8", "surrogateescape")

    def sample_id(self, row: int) -> str:
        if self.kind == "webdataset":
            return f"{self.shard_prefixes[self.shard_of(row)]}/{self.key(row)}"
        return self.key(row)

    def iter_sample_ids(self, rows: np.ndarray | None = None) -> Iterator[str]:
        """Sample ids of `rows` (all rows when None) in order, decoded a block at a time."""
        if rows is None:
            for s, prefix in enumerate(self.shard_prefixes if self.kind == "webdataset" else [None]):
                a, b = (int(self.shard_starts[s]), int(self.shard_starts[s + 1])) if prefix is not None \
                    else (0, self.num_samples)
                for lo in range(a, b, 65536):
                    hi = min(b, lo + 65536)
                    starts = np.asarray(self.key_starts[lo:hi + 1])
                    blob = bytes(self.keys[starts[0]:starts[-1]])
                    rel = starts - starts[0]
                    for i in range(hi - lo):
                        key = blob[rel[i]:rel[i + 1]].decode("utf-8", "surrogateescape")
                        yield key if prefix is None else f"{prefix}/{key}"
            return
        for lo in range(0, len(rows), 65536):
            for row in np.asarray(rows[lo:lo + 65536]).tolist():
                yield self.sample_id(row)

    # ---- metadata fields ----------------------------------------------------------------
    def field_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(codes [V], starts [N + 1], vocabulary) of an indexed field."""
        codes, starts = self._field_arrays[name]
        return codes, starts, self.fields[name]

    def first_values(self, name: str) -> np.ndarray:
        """[N] int64 code of each sample's first value of `name` (-1 when it has none)."""
        codes, starts, _ = self.field_arrays(name)
        out = np.full(self.num_samples, -1, dtype=np.int64)
        for lo in range(0, self.num_samples, 1 << 20):
            hi = min(self.num_samples, lo + (1 << 20))
            s = np.asarray(starts[lo:hi + 1], dtype=np.int64)
            has = s[1:] > s[:-1]
            out[lo:hi][has] = np.asarray(codes)[s[:-1][has]]
        return out

    def values_of(self, name: str, row: int) -> list[str]:
        codes, starts, vocab = self.field_arrays(name)
        return [vocab[c] for c in codes[int(starts[row]):int(starts[row + 1])]]

    # ---- records ------------------------------------------------------------------------
    def _table_fd(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._fd[0] != pid:  # a forked worker opens its own descriptor
            self._fd = (pid, os.open(self.root / self.shards[0]["path"], os.O_RDONLY))
        return self._fd[1]

    def table_row(self, row: int) -> dict[str, Any]:
        """The CSV/JSONL record `row` as a dict, read from the file by offset."""
        a, b = int(self.record_starts[row]), int(self.record_starts[row + 1])
        text = os.pread(self._table_fd(), b - a, a).decode("utf-8", "surrogateescape")
        if self.kind == "jsonl":
            obj = json.loads(text)
            return obj if isinstance(obj, dict) else {}
        limit = csv.field_size_limit()
        if len(text) > limit:  # a flagged over-long caption: parse it whole to reach the other columns
            csv.field_size_limit(len(text) + 1)
        try:
            values = next(csv.reader(io.StringIO(text, newline=""), delimiter=self.layout.delimiter), [])
        finally:
            csv.field_size_limit(limit)
        return dict(zip(self.layout.header, values))

    def record(self, row: int, modality: str | None = None, caption_key: str = "caption",
               modality_key: str = "modality"):
        """The `PairRecord` of `row`. `modality` overrides the one read from `modality_key`."""
        from mmkd.data.records import CAPTION_TOO_LONG, PairRecord

        if self.kind == "webdataset":
            shard = self.shard_of(row)
            path = self.shard_paths[shard]
            m = self.members[row]
            image = (path, int(m["image_off"]), int(m["image_size"])) if m["image_off"] >= 0 else None
            kind = int(m["caption_kind"])
            caption = (path, int(m["caption_off"]), int(m["caption_size"])) if kind != CAPTION_NONE else None
            if kind == CAPTION_TXT and caption_key != "caption" and m["json_off"] >= 0:
                # A key the user named is a field of the .json: it wins over the .txt member.
                kind, caption = CAPTION_JSON, (path, int(m["json_off"]), int(m["json_size"]))
            if modality is None:
                modality = self._first_value(modality_key, row)
            return PairRecord(sample_id=f"{self.shard_prefixes[shard]}/{self.key(row)}", image=image, caption=caption,
                              modality=modality, caption_json_key=caption_key if kind == CAPTION_JSON else "")
        data = self.table_row(row)
        layout = self.layout
        image_path = data.get(layout.image_key)
        too_long = bool(self.flags[row] & FLAG_CAPTION_TOO_LONG)
        text = "" if too_long else data.get(layout.caption_key) or ""
        if modality is None:
            modality = str(data.get(modality_key) or "")
        return PairRecord(sample_id=self.key(row), image=str(self.root / str(image_path)) if image_path else None,
                          caption=text if isinstance(text, str) else str(text), modality=modality,
                          problem=CAPTION_TOO_LONG if too_long else "")

    def _first_value(self, name: str, row: int) -> str:
        if name not in self._field_arrays:
            return ""
        codes, starts = self._field_arrays[name]
        a, b = int(starts[row]), int(starts[row + 1])
        return self.fields[name][int(codes[a])] if b > a else ""


def lease_generation(folder: Path, generation: str) -> None:
    """Record that this process may open `generation` of the index in `folder` (see the module doc).
    The lease's mtime is renewed at every open."""
    lease = folder / LEASES / f"{generation}@{socket.gethostname()}@{os.getpid()}"
    try:
        lease.parent.mkdir(exist_ok=True)
        lease.touch()
    except OSError:
        pass  # a read-only index folder: no launch can rebuild it in place either


class SampleIds(Sequence):
    """The sample ids of some rows of an index, decoded on demand (nothing held per sample)."""

    def __init__(self, index: SourceIndex, rows: np.ndarray | None):
        self.data_index, self.rows = index, rows

    def __len__(self) -> int:
        return self.data_index.num_samples if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.data_index.sample_id(int(i if self.rows is None else self.rows[i]))

    def __iter__(self) -> Iterator[str]:
        return self.data_index.iter_sample_ids(self.rows)


class IndexedRecords(Sequence):
    """The records of an index, or of the `rows` a selection chose, as a read-only sequence of
    `PairRecord`s built on demand. `modality_codes` [n] with `modality_values` give each row's
    modality (a selection's); otherwise it is read from the `modality_key` field or column."""

    def __init__(self, index: SourceIndex, rows: np.ndarray | None = None, caption_key: str = "caption",
                 modality_key: str = "modality", modality_codes: np.ndarray | None = None,
                 modality_values: list[str] | None = None, description: str = ""):
        self.data_index = index
        self.rows = rows
        self.caption_key = caption_key
        self.modality_key = modality_key
        self.modality_codes = modality_codes
        self.modality_values = modality_values or []
        self.description = description or str(index.meta.get("source", ""))

    def __len__(self) -> int:
        return self.data_index.num_samples if self.rows is None else len(self.rows)

    def row(self, i: int) -> int:
        """The index row of record `i`."""
        return int(i if self.rows is None else self.rows[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        modality = None
        if self.modality_codes is not None:
            code = int(self.modality_codes[i])
            modality = self.modality_values[code] if code >= 0 else ""
        return self.data_index.record(self.row(i), modality, self.caption_key, self.modality_key)

    @property
    def sample_ids(self) -> SampleIds:
        return SampleIds(self.data_index, self.rows)


def sample_ids_of(records: Sequence) -> Sequence[str]:
    """The sample ids of any record sequence: lazily for an index, as a list otherwise."""
    ids = getattr(records, "sample_ids", None)
    return ids if ids is not None else [r.sample_id for r in records]
