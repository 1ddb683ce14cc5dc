"""The teacher-feature store: memmapped per-teacher arrays, a manifest, crash-safe chunked writes.

Legend: N samples (rows), T teachers, D a teacher's embedding dim, B rows asked for at once.

Layout of a store directory (format version 3)::

    manifest.json                 format_version, dtype, num_samples, chunk_rows, teachers (name,
                                  embed_dim, provenance, fingerprint, arrays), chunks (sha256 of
                                  every committed chunk of every array), complete, summary
    sample_ids.json               [N] sample ids; row i is dataset record i
    teachers/features-<h>.npy     [N, W] float16: the L2-normalised image and text embeddings of
                                  the teachers added together, side by side (W = sum of 2 D); each
                                  teacher's `image`/`text` array is a column block of it
    teachers/<name>/available.npy [N] bool: may this teacher teach this sample
    teachers/<name>/score.npy     [N] float32 availability score (NaN where none was computed)
    teachers/<name>/<extra>.npy   optional, e.g. projected_image/projected_text [N, P] float16
    teachers/<name>/chunks/CCCCCC.json   one commit record per written chunk

Keeping every teacher's features of a row next to each other makes a batch read one gather of
B rows instead of one per teacher and kind (2x faster). Teachers added to an existing store
get a new features file of their own, so a store is never rewritten. (Version 1 stores, with
`teachers/<name>/image.npy` and `text.npy` files, are read as they are.)

Every `.npy` is created at full size up front and written in place, page-aligned: its header is
padded to 4 KiB and its rows are padded (unused columns) to a width at which every chunk of
`chunk_rows` rows starts on a 4,096-byte boundary, so ranks on different nodes never write the same
page of a shared (NFS, Lustre) file. With 1,024-row chunks only `available` is padded (4 bytes
a row); features of dims that are multiples of 256 never are. A logical 1-D array then lives in
column 0 of a 2-D file (`columns` in its manifest entry). Version 2 stores (128-byte headers,
no padding) are read, resumed and extended as they are. A chunk of rows
[c * chunk_rows, (c + 1) * chunk_rows) becomes visible only when its commit record appears,
which is written (temporary name, fsync, rename) after the rows were flushed to disk. A
crash therefore leaves either a committed chunk or an invisible one that a rerun rewrites,
and the finished store has exactly the rows of an uninterrupted run. Ranks of a distributed
run write disjoint chunks of the same files. Reads are O(1) per row through `numpy.memmap`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import mmap
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, cast

import numpy as np

from mmkd.data.records import ids_digest
from mmkd.errors import UsageError
from mmkd.utils.io import atomic_write_json, read_json

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
WRITABLE_VERSIONS = (2, 3)  # resumed and extended in place; new teachers get the page-aligned layout
PAGE_BYTES = 4096
FEATURE_KINDS = ("image", "text")
MANIFEST = "manifest.json"
SAMPLE_IDS = "sample_ids.json"
FEATURE_DTYPE = "float16"
DEFAULT_CHUNK_ROWS = 1024
CORE_KINDS = ("image", "text", "available", "score")
# Test-only: seconds to sleep between flushing a chunk's rows and committing them, so that a
# crash test can kill the writer inside that window.
# Read at each commit (not at import), so a forked test process sees the value set for it.
_TEST_COMMIT_DELAY_ENV = "MMKD_TEST_COMMIT_DELAY_S"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass
class TeacherEntry:
    """What the store records about one teacher. `extra_dims` adds [N, dim] float16 arrays."""

    name: str
    embed_dim: int
    provenance: dict[str, Any] = field(default_factory=dict)
    extra_dims: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # e.g. the availability rule used

    @property
    def fingerprint(self) -> str:
        return provenance_fingerprint(self.provenance, self.embed_dim)

    def array_specs(self, num_samples: int, group_file: str | None = None, offset: int = 0,
                    chunk_rows: int | None = None) -> dict[str, dict[str, Any]]:
        """Where each array lives: image and text as column blocks [offset, offset + 2 D) of the
        shared `group_file` when given, everything else in the teacher's own folder; with
        `chunk_rows`, a file whose chunks would not start on a page is widened (`padded_width`)
        and the array is its first columns."""
        specs = {
            "image": {"shape": [num_samples, self.embed_dim], "dtype": FEATURE_DTYPE},
            "text": {"shape": [num_samples, self.embed_dim], "dtype": FEATURE_DTYPE},
            "available": {"shape": [num_samples], "dtype": "bool"},
            "score": {"shape": [num_samples], "dtype": "float32"},
        }
        for kind, dim in self.extra_dims.items():
            specs[kind] = {"shape": [num_samples, int(dim)], "dtype": FEATURE_DTYPE}
        for kind, spec in specs.items():
            spec["file"] = f"teachers/{self.name}/{kind}.npy"
            shape, dtype = cast(list, spec["shape"]), str(spec["dtype"])
            width = int(shape[1]) if len(shape) == 2 else 1
            if chunk_rows is not None and padded_width(width, np.dtype(dtype).itemsize, chunk_rows) != width:
                spec["columns"] = [0, width]
        if group_file is not None:
            for j, kind in enumerate(FEATURE_KINDS):
                start = offset + j * self.embed_dim
                specs[kind].update(file=group_file, columns=[start, start + self.embed_dim])
        return specs


def provenance_fingerprint(provenance: dict[str, Any], embed_dim: int) -> str:
    """Hash of what decides a teacher's outputs: weights checksums, preprocessing, tokenizer, dim.

    Library versions and paths are left out on purpose: moving the weights or upgrading
    numpy does not make stored features stale; different weights or preprocessing do.
    """
    keyed: dict[str, Any] = {"embed_dim": int(embed_dim)}
    for key in ("weights", "preprocess", "tokenizer"):
        keyed[key] = provenance.get(key)
    blob = json.dumps(keyed, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _write_id_list(path: Path, sample_ids: Iterable[str]) -> None:
    """sample_ids.json (one JSON list, as `json.dumps` writes it) written a block of ids at a time, so
    memory does not grow with the ids (they may be a lazy sequence over a data index)."""
    from itertools import islice

    from mmkd.utils.io import atomic_path

    ids = iter(sample_ids)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii") as f:
        f.write("[")
        first = True
        while block := list(islice(ids, 65536)):
            f.write(("" if first else ", ") + ", ".join(map(json.dumps, block)))
            first = False
        f.write("]\n")


def _open_npy(path: Path, mode: Literal["r", "r+"]):
    return np.load(path, mmap_mode=mode)


def _inside(root: Path, name: Any, what: str = "array") -> Path:
    """`root / name`, refused unless it stays inside the store: a manifest names files relative to the
    store, and one naming `../x` or `/x` must not make mmkd read or write elsewhere."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"feature store {str(root)!r}: its manifest names the {what} file {name!r}, which is not "
                         f"a relative path; the manifest is damaged. Re-extract into a new folder")
    path = root / name
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.isabs(name) or os.path.commonpath([real_root, real]) != real_root:
        raise UsageError(f"feature store {str(root)!r}: its manifest names the {what} file {name!r}, outside "
                         f"the store; refusing to read or write it. Re-extract into a new folder")
    return path


def _open_array(root: Path, spec: dict[str, Any], mode: Literal["r", "r+"], files: dict[str, np.memmap]) -> np.memmap:
    """One array of a store: a whole `.npy` file, or a column block of a shared features file.

    Read mappings are advised as random access: batches gather scattered rows, and the kernel's
    default read-ahead would read far more of the file from disk than the rows asked for."""
    path = _inside(root, spec.get("file") if isinstance(spec, dict) else None)
    name = str(spec["file"])
    if name not in files:
        try:
            files[name] = _open_npy(path, mode)  # never allow_pickle: an object array is refused
        except (OSError, ValueError, EOFError) as e:
            raise UsageError(f"feature store {str(root)!r}: the array file {name!r} is unreadable ({e}); rerun the "
                             f"command that wrote the store, or extract into a new folder") from None
        raw = getattr(files[name], "_mmap", None)
        if mode == "r" and raw is not None and hasattr(raw, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            raw.madvise(mmap.MADV_RANDOM)
    arr = files[name]
    if "columns" in spec:
        a, b = spec["columns"]
        if arr.ndim != 2 or not 0 <= a <= b <= arr.shape[1]:
            raise UsageError(f"feature store {str(root)!r}: {name!r} has shape {arr.shape}, which has no columns "
                             f"{a}:{b}; the manifest does not describe the files. Extract into a new folder")
        # a column view of a memmap is a memmap; a 1-D array is one column of a padded file
        arr = cast(np.memmap, arr[:, a] if len(spec.get("shape", (0, 0))) == 1 else arr[:, a:b])
    if "shape" in spec and list(arr.shape) != list(spec["shape"]) or \
            "dtype" in spec and arr.dtype != np.dtype(spec["dtype"]):
        raise UsageError(f"feature store {str(root)!r}: {name!r} holds {list(arr.shape)} {arr.dtype}, the manifest "
                         f"says {spec.get('shape')} {spec.get('dtype')}; extract into a new folder")
    return arr


_QUOTE_OR_ESCAPE = re.compile(rb'\\.|"', re.S)


def _last_closing_quote(buf: bytes) -> int:
    """Index of the quote that closes the last complete string in `buf` (which starts outside a
    string), or -1. Without backslashes every quote delimits a string; with them, escapes are
    tokenized so that an escaped quote is not counted."""
    if b"\\" not in buf:
        quotes = buf.count(b'"')
        end = len(buf)
        if quotes % 2:
            end = buf.rindex(b'"')
        return buf.rfind(b'"', 0, end)
    at = [m.start() for m in _QUOTE_OR_ESCAPE.finditer(buf) if m.group() == b'"']
    return at[len(at) // 2 * 2 - 1] if len(at) >= 2 else -1


def iter_json_strings(path: Path, chunk_bytes: int = 1 << 22) -> Iterable[str]:
    """The items of a file holding one JSON list of strings, parsed a chunk at a time: memory is
    bounded by the chunk, not by the list (a store's `sample_ids.json` holds millions)."""
    with open(path, "rb") as f:
        buf = f.read(chunk_bytes).lstrip()
        while len(buf) < 1:
            more = f.read(chunk_bytes)
            if not more:
                raise ValueError(f"{path}: not a JSON list")
            buf += more.lstrip()
        if not buf.startswith(b"["):
            raise ValueError(f"{path}: not a JSON list")
        buf = buf[1:]
        while True:
            more = f.read(chunk_bytes)
            if not more:
                yield from json.loads(b"[" + buf.lstrip(b" \t\r\n,"))
                return
            buf += more
            cut = _last_closing_quote(buf)
            if cut >= 0:  # every string up to it is complete
                yield from json.loads(b"[" + buf[:cut + 1].lstrip(b" \t\r\n,") + b"]")
                buf = buf[cut + 1:]


def padded_width(width: int, itemsize: int, chunk_rows: int) -> int:
    """The row width (in elements, at least `width`) at which every chunk of `chunk_rows` rows of a
    page-aligned file starts on a page: the smallest multiple of 4096 / gcd(4096, chunk_rows * itemsize)."""
    step = PAGE_BYTES // math.gcd(PAGE_BYTES, chunk_rows * itemsize)
    return -(-width // step) * step


def num_chunks(num_samples: int, chunk_rows: int) -> int:
    return math.ceil(num_samples / chunk_rows)


def chunk_bounds(chunk: int, num_samples: int, chunk_rows: int) -> tuple[int, int]:
    start = chunk * chunk_rows
    return start, min(start + chunk_rows, num_samples)


class FeatureStore:
    """Read a feature store. Arrays are memmapped: nothing is loaded until rows are indexed.

    `image_features(name)` / `text_features(name)`: [N, D] float16 memmaps, row i = sample i.
    `available`: [N, T] bool (T in `teachers` order). `rows(indices)` fetches a batch.
    """

    def __init__(self, path: str | os.PathLike, allow_partial: bool = False):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise UsageError(f"feature store {str(self.path)!r} has no {MANIFEST}; create it with `mmkd extract` "
                             f"or `mmkd import-features`")
        self.manifest: dict[str, Any] = _read_manifest(self.path)
        version = self.manifest.get("format_version")
        if version not in READABLE_VERSIONS:
            raise UsageError(f"feature store {str(self.path)!r} has format version {version}; this mmkd reads "
                             f"versions {READABLE_VERSIONS}. Re-extract or upgrade mmkd")
        if not self.manifest.get("complete") and not allow_partial:
            raise UsageError(f"feature store {str(self.path)!r} is incomplete (an extraction was interrupted); "
                             f"rerun the same `mmkd extract`/`import-features` command to finish it")
        _check_manifest(self.path, self.manifest)
        self.num_samples: int = int(self.manifest["num_samples"])
        self.teachers: list[str] = [t["name"] for t in self.manifest["teachers"]]
        self._entries = {t["name"]: t for t in self.manifest["teachers"]}
        self._arrays: dict[tuple[str, ...], np.ndarray] = {}
        self._files: dict[str, np.memmap] = {}  # each mapped file once (a features file holds many arrays)
        self._sample_ids: list[str] | None = None
        self._row_of: dict[str, int] | None = None
        self._available: np.ndarray | None = None
        self._plans: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[list[Any], list[np.ndarray]]] = {}

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, num_samples={self.num_samples}, teachers={self.teachers})"

    def __len__(self) -> int:
        return self.num_samples

    # ---- per-teacher arrays -------------------------------------------------------------
    def _entry(self, name: str) -> dict[str, Any]:
        if name not in self._entries:
            raise UsageError(f"teacher {name!r} is not in the feature store {str(self.path)!r}; "
                             f"it has: {', '.join(self.teachers)}")
        return self._entries[name]

    def array(self, name: str, kind: str) -> np.memmap:
        """Any per-teacher array (`image`, `text`, `available`, `score`, or an extra such as
        `projected_image`), memmapped read-only."""
        key = (name, kind)
        if key not in self._arrays:
            arrays = self._entry(name)["arrays"]
            if kind not in arrays:
                raise UsageError(f"teacher {name!r} has no {kind!r} array in {str(self.path)!r}; "
                                 f"it has: {', '.join(arrays)}")
            self._arrays[key] = _open_array(self.path, arrays[kind], "r", self._files)
        return cast(np.memmap, self._arrays[key])

    def has_array(self, name: str, kind: str) -> bool:
        return kind in self._entry(name)["arrays"]

    def image_features(self, name: str) -> np.memmap:
        return self.array(name, "image")

    def text_features(self, name: str) -> np.memmap:
        return self.array(name, "text")

    def scores(self, name: str) -> np.memmap:
        return self.array(name, "score")

    def embed_dim(self, name: str) -> int:
        return int(self._entry(name)["embed_dim"])

    def manifest_entry(self, name: str) -> dict[str, Any]:
        return self._entry(name)

    def provenance(self, name: str) -> dict[str, Any]:
        return self._entry(name).get("provenance", {})

    @property
    def available(self) -> np.ndarray:
        """[N, T] bool, columns in `teachers` order (built once from the per-teacher columns)."""
        if self._available is None:
            cols = [np.asarray(self.array(t, "available")) for t in self.teachers]
            self._available = np.stack(cols, axis=1) if cols else np.zeros((self.num_samples, 0), bool)
        return self._available

    # ---- sample ids ---------------------------------------------------------------------
    @property
    def sample_ids(self) -> list[str]:
        if self._sample_ids is None:
            try:
                ids = read_json(self.path / SAMPLE_IDS)
            except (OSError, ValueError) as e:
                raise UsageError(f"feature store {str(self.path)!r}: {SAMPLE_IDS} is unreadable ({e}); extract "
                                 f"into a new folder") from None
            if not isinstance(ids, list) or len(ids) != self.num_samples or not all(isinstance(i, str) for i in ids):
                raise UsageError(f"feature store {str(self.path)!r}: {SAMPLE_IDS} is not a list of "
                                 f"{self.num_samples} sample ids; extract into a new folder")
            self._sample_ids = ids
        return self._sample_ids

    def row_of(self, sample_id: str) -> int:
        """The row holding `sample_id` (KeyError if absent). Builds a lookup of every store id on
        first use (~130 bytes per store row); for many ids at once use `rows_of`."""
        if self._row_of is None:
            lookup: dict[str, int] = {}
            for row, sid in enumerate(self.sample_ids):
                lookup.setdefault(sid, row)
            self._row_of = lookup
        return self._row_of[sample_id]

    def rows_of(self, sample_ids: Sequence[str], chunk_bytes: int = 1 << 22) -> np.ndarray:
        """The row of each id, as an int64 array; `KeyError(missing ids)` when some are not here.

        Memory grows with the ids asked, not with the store: when they are the store's own ids in
        order (same count and digest as the manifest's) the rows are the identity; otherwise one
        pass streams the store's id list `chunk_bytes` at a time, keeping only the ids asked for.
        """
        ids = sample_ids if isinstance(sample_ids, Sequence) else list(sample_ids)  # a lazy index view stays lazy
        if len(ids) == self.num_samples and ids_digest(ids) == self.manifest.get("sample_ids_sha256"):
            return np.arange(len(ids), dtype=np.int64)
        if self._row_of is not None:
            found = self._row_of
        else:
            wanted = set(ids)
            found = {}
            for row, sid in enumerate(iter_json_strings(self.path / SAMPLE_IDS, chunk_bytes)):
                if sid in wanted and sid not in found:
                    found[sid] = row
        missing = [sid for sid in dict.fromkeys(ids) if sid not in found]
        if missing:
            raise KeyError(missing)
        return np.fromiter((found[sid] for sid in ids), dtype=np.int64, count=len(ids))

    # ---- batched reads ------------------------------------------------------------------
    def rows(self, indices: Sequence[int] | np.ndarray, kinds: Sequence[str] = ("image", "text"),
             teachers: Sequence[str] | None = None) -> dict[str, Any]:
        """Features of a batch of rows: `{kind: {teacher: [B, D] float16}, "available": [B, T] bool}`.

        One gather of whole rows per features file the batch needs most of, else one per array, straight
        into the order asked (`numpy.take` on the mapped file: no sorting and reordering copy, and no
        per-call `numpy.memmap` overhead); which is which is worked out once per `(kinds, teachers)`.
        """
        idx_B = np.asarray(indices, dtype=np.int64)
        if idx_B.size and (idx_B.min() < 0 or idx_B.max() >= self.num_samples):
            raise IndexError(f"row indices must lie in [0, {self.num_samples}); got {idx_B.min()}..{idx_B.max()}")
        names = tuple(teachers or self.teachers)
        gathers, available_cols = self._read_plan(tuple(kinds), names)
        out: dict[str, Any] = {kind: dict.fromkeys(names) for kind in kinds}  # teachers in the order asked
        for source, parts in gathers:
            gathered = np.take(source, idx_B, axis=0)
            for kind, t, cols in parts:
                out[kind][t] = gathered if cols is None else gathered[:, cols]
        # fancy indexing of a strided 1-D column is ~2x faster than `take(..., out=column)`
        out["available"] = np.stack([col[idx_B] for col in available_cols], axis=1) if available_cols \
            else np.zeros((idx_B.size, 0), bool)
        return out

    def _read_plan(self, kinds: tuple[str, ...], names: tuple[str, ...]) -> tuple[list[Any], list[np.ndarray]]:
        """What `rows` gathers for these kinds and teachers: `[(array, [(kind, teacher, columns or None)])]`
        (a shared features file is gathered once when the batch needs at least half of each row) and
        each teacher's `available` column."""
        key = (kinds, names)
        if key not in self._plans:
            gathers: list[tuple[np.ndarray, list[tuple[str, str, slice | None]]]] = []
            by_file: dict[str, list[tuple[str, str, list[int]]]] = {}
            for kind in kinds:
                for t in names:
                    spec = self._entry(t)["arrays"].get(kind, {})
                    if "columns" in spec and len(spec["shape"]) == 2:
                        by_file.setdefault(spec["file"], []).append((kind, t, spec["columns"]))
                    else:
                        gathers.append((self._plain(t, kind), [(kind, t, None)]))
            for file, parts in by_file.items():
                whole = self._whole(file)
                if 2 * sum(b - a for _, _, (a, b) in parts) < whole.shape[1]:  # a small part of each row: alone
                    gathers += [(self._plain(t, kind), [(kind, t, None)]) for kind, t, _ in parts]
                else:  # whole rows, once
                    gathers.append((whole, [(kind, t, slice(a, b)) for kind, t, (a, b) in parts]))
            self._plans[key] = (gathers, [self._plain(t, "available") for t in names])
        return self._plans[key]

    def _plain(self, name: str, kind: str) -> np.ndarray:
        """The mapped array as a plain ndarray view (indexing a `numpy.memmap` goes through Python)."""
        key = ("plain", name, kind)
        if key not in self._arrays:
            self._arrays[key] = np.asarray(self.array(name, kind))
        return self._arrays[key]

    def _whole(self, file: str) -> np.ndarray:
        """A whole features file (every teacher's columns), mapped once, as a plain ndarray view."""
        key = ("whole", file)
        if key not in self._arrays:
            self._arrays[key] = np.asarray(_open_array(self.path, {"file": file}, "r", self._files))
        return self._arrays[key]

    # ---- integrity ----------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Recompute every chunk checksum; returns the problems found (empty when intact)."""
        return [problem for _, problem in _checksum_problems(self.manifest.get("chunks", []), self.array)]


class StoreChecksumError(UsageError):
    """Rows on disk differ from the checksums committed with them (a damaged disk or file, or
    writers that overwrote each other's pages)."""

    exit_code = 1


def _checksum_problems(records: Iterable[dict[str, Any]], array: Any) -> list[tuple[dict[str, Any], str]]:
    """(record, problem) for every chunk whose rows no longer hash to the record's checksums; `array(teacher,
    kind)` maps an array."""
    problems = []
    for rec in records:
        start, stop = rec["start"], rec["stop"]
        for kind, digest in rec["sha256"].items():
            data = np.ascontiguousarray(array(rec["teacher"], kind)[start:stop])
            if hashlib.sha256(data.tobytes()).hexdigest() != digest:
                problems.append((rec, f"{rec['teacher']}/{kind} rows {start}:{stop}: checksum mismatch"))
    return problems


class FeatureStoreWriter:
    """Create, resume or extend a store, write chunks atomically, and finish it.

    `FeatureStoreWriter.open(path, sample_ids, teachers, chunk_rows)` validates everything
    before any row is written: the sample ids must be those of the existing store, and a
    teacher already in it must have the same dim and fingerprint (weights, preprocessing,
    tokenizer) and settings. New teachers are added. Only one process (rank 0) should call
    `open` with `create=True`; other ranks open after it with `create=False`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        _check_manifest(path, manifest)
        self.path = path
        self.manifest = manifest
        self.num_samples = int(manifest["num_samples"])
        self.chunk_rows = int(manifest["chunk_rows"])
        self._entries = {t["name"]: t for t in manifest["teachers"]}
        self._maps: dict[tuple[str, str], np.memmap] = {}
        self._files: dict[str, np.memmap] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, sample_ids: Sequence[str], teachers: Sequence[TeacherEntry],
             chunk_rows: int = DEFAULT_CHUNK_ROWS, create: bool = True, extra_manifest: dict | None = None,
             record_content: bool = False) -> FeatureStoreWriter:
        """`record_content`: a new store gets content.npy, each row's digest of its image and caption
        (mmkd.data.content), written with the row's first committed chunk."""
        path = Path(path)
        if not sample_ids:
            raise UsageError("the dataset holds no samples; nothing to write into a feature store")
        for entry in teachers:
            if not _NAME_RE.match(entry.name):
                raise UsageError(f"--teacher: name {entry.name!r} is not usable as a store name; use letters, "
                                 f"digits, '_', '-', '.' (up to 64 characters)")
        manifest_path = path / MANIFEST
        if manifest_path.is_file():
            manifest = _read_manifest(path)
            _check_manifest(path, manifest)
            _check_compatible(path, manifest, sample_ids, teachers)
            new = [t for t in teachers if t.name not in {e["name"] for e in manifest["teachers"]}]
            if new and not create:
                raise RuntimeError("teachers missing from the store; rank 0 must open it first")
            if new:  # the new teachers share a features file of their own: the existing ones stay as they are
                manifest["teachers"] += _make_teachers(path, new, manifest["num_samples"], int(manifest["chunk_rows"]))
                manifest["format_version"] = FORMAT_VERSION  # a version 2 store now holds page-aligned files too
                manifest["complete"] = False
                atomic_write_json(path / MANIFEST, manifest)
            return cls(path, manifest)
        if not create:
            raise RuntimeError(f"{path} has no manifest; rank 0 must create the store first")
        if path.exists() and not all(_creation_leftover(p) for p in path.iterdir()):
            raise UsageError(f"--out: {str(path)!r} exists and is not a feature store; choose an empty or new folder")
        path.mkdir(parents=True, exist_ok=True)
        _write_id_list(path / SAMPLE_IDS, sample_ids)
        manifest = {
            "format_version": FORMAT_VERSION,
            "dtype": FEATURE_DTYPE,
            "num_samples": len(sample_ids),
            "sample_ids_sha256": ids_digest(sample_ids),
            "chunk_rows": int(chunk_rows),
            "complete": False,
            "teachers": _make_teachers(path, teachers, len(sample_ids), int(chunk_rows)),
            "chunks": [],
            **(extra_manifest or {}),
        }
        if record_content:
            from mmkd.data.content import CONTENT_FILE, ROW_BYTES

            _create_array(path / CONTENT_FILE, "uint8", (len(sample_ids), padded_width(ROW_BYTES, 1, chunk_rows)))
            manifest["content"] = {"file": CONTENT_FILE, "digest": "blake2b-64(image file bytes) + "
                                   "blake2b-64(caption UTF-8); zeros where unreadable", "columns": [0, ROW_BYTES]}
        atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @property
    def num_chunks(self) -> int:
        return num_chunks(self.num_samples, self.chunk_rows)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        return chunk_bounds(chunk, self.num_samples, self.chunk_rows)

    def _record_path(self, teacher: str, chunk: int) -> Path:
        return self.path / "teachers" / teacher / "chunks" / f"{chunk:06d}.json"

    def committed(self, teacher: str) -> set[int]:
        folder = self.path / "teachers" / teacher / "chunks"
        if not folder.is_dir():
            return set()
        return {int(p.name[:6]) for p in folder.iterdir() if p.name.endswith(".json") and p.name[:6].isdigit()}

    def pending(self, teachers: Sequence[str]) -> dict[int, list[str]]:
        """chunk -> the teachers (of `teachers`) that still lack it."""
        done = {t: self.committed(t) for t in teachers}
        out: dict[int, list[str]] = {}
        for c in range(self.num_chunks):
            missing = [t for t in teachers if c not in done[t]]
            if missing:
                out[c] = missing
        return out

    def _map(self, teacher: str, kind: str) -> np.memmap:
        key = (teacher, kind)
        if key not in self._maps:
            self._maps[key] = _open_array(self.path, self._entries[teacher]["arrays"][kind], "r+", self._files)
        return self._maps[key]

    def write_chunk(self, chunk: int, teacher: str, arrays: dict[str, np.ndarray],
                    record_extra: dict[str, Any] | None = None, content: np.ndarray | None = None) -> None:
        """Write rows of `chunk` for `teacher` and commit them. `arrays` must hold every array
        kind of the teacher with exactly the chunk's row count; `content` ([rows, 16] uint8) the rows'
        digests, for a store that records them."""
        start, stop = self.chunk_bounds(chunk)
        if content is not None and "content" in self.manifest:
            target = self._content_map()
            target[start:stop] = content
            target.flush()
        kinds = self._entries[teacher]["arrays"]
        if set(arrays) != set(kinds):
            raise ValueError(f"{teacher}: chunk arrays {sorted(arrays)} != store arrays {sorted(kinds)}")
        digests = {}
        for kind, spec in kinds.items():
            data = np.ascontiguousarray(arrays[kind], dtype=spec["dtype"])
            if list(data.shape) != [stop - start, *spec["shape"][1:]]:
                raise ValueError(f"{teacher}/{kind}: chunk {chunk} has shape {data.shape}, "
                                 f"expected {[stop - start, *spec['shape'][1:]]}")
            target = self._map(teacher, kind)
            target[start:stop] = data
            target.flush()  # msync: the rows are on disk before the record that makes them visible
            digests[kind] = hashlib.sha256(data.tobytes()).hexdigest()
        delay = float(os.environ.get(_TEST_COMMIT_DELAY_ENV, "0") or 0)
        if delay:  # test hook: widen the window between rows on disk and their commit
            time.sleep(delay)
        record = {"teacher": teacher, "chunk": chunk, "start": start, "stop": stop, "sha256": digests,
                  **(record_extra or {})}
        atomic_write_json(self._record_path(teacher, chunk), record, indent=None)

    def _content_map(self) -> np.memmap:
        from mmkd.data.content import CONTENT_FILE, ROW_BYTES

        if "content" not in self._files:
            self._files["content"] = _open_npy(self.path / CONTENT_FILE, "r+")
        return cast(np.memmap, self._files["content"][:, :ROW_BYTES])  # the digests; the rest pads rows to a page

    def rewrite_kind(self, chunk: int, teacher: str, kind: str, data: np.ndarray) -> None:
        """Replace one array of a committed chunk (e.g. availability under a new rule) and its checksum."""
        start, stop = self.chunk_bounds(chunk)
        spec = self._entries[teacher]["arrays"][kind]
        data = np.ascontiguousarray(data, dtype=spec["dtype"])
        target = self._map(teacher, kind)
        target[start:stop] = data
        target.flush()
        path = self._record_path(teacher, chunk)
        record = read_json(path)
        record["sha256"][kind] = hashlib.sha256(data.tobytes()).hexdigest()
        atomic_write_json(path, record, indent=None)

    def mark_incomplete(self) -> None:
        self.manifest["complete"] = False
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def records(self, teacher: str) -> list[dict[str, Any]]:
        return [read_json(self._record_path(teacher, c)) for c in sorted(self.committed(teacher))]

    def finalize(self, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check every chunk of every teacher is committed and its rows still hash to the checksums
        committed with them, then mark the manifest complete. A chunk that fails loses its commit
        record (StoreChecksumError), so the same command rerun writes it again."""
        chunks, missing = [], []
        for name in self._entries:
            recs = self.records(name)
            got = {r["chunk"] for r in recs}
            missing += [f"{name}:{c}" for c in range(self.num_chunks) if c not in got]
            chunks += [{k: r[k] for k in ("teacher", "chunk", "start", "stop", "sha256")} for r in recs]
        if missing:
            raise RuntimeError(f"cannot finish the store: uncommitted chunks {missing[:10]}")
        damaged = _checksum_problems(chunks, self._map)
        if damaged:
            for rec, _ in damaged:
                self._record_path(rec["teacher"], rec["chunk"]).unlink(missing_ok=True)
            raise StoreChecksumError(
                f"feature store {str(self.path)!r}: {len(damaged)} chunk array(s) differ from the checksums committed "
                f"with them ({'; '.join(p for _, p in damaged[:3])}); the store stays incomplete and those chunks are "
                f"uncommitted again. Rerun the same command to write them again (on a shared filesystem, check "
                f"that no other job writes into this folder)")
        self.manifest["chunks"] = chunks
        self.manifest["complete"] = True
        if summary:
            self.manifest.setdefault("summary", {}).update(summary)
        atomic_write_json(self.path / MANIFEST, self.manifest)
        return self.manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = read_json(path / MANIFEST)
    except (OSError, ValueError) as e:
        raise UsageError(f"feature store {str(path)!r}: {MANIFEST} is unreadable ({e}); rerun the command that "
                         f"wrote the store, or extract into a new folder") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"feature store {str(path)!r}: {MANIFEST} holds {type(manifest).__name__}, not a manifest; "
                         f"extract into a new folder")
    return manifest


def _check_manifest(path: Path, manifest: Any) -> None:
    """Everything of a manifest that reading or writing relies on: types, teacher names usable as folder
    names, array files inside the store with shapes and dtypes that fit, chunk records within the rows.
    A damaged or forged manifest is a UsageError, before any file is opened."""
    problems: list[str] = []

    def is_int(v: Any, low: int = 0) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    if not isinstance(manifest, dict):
        problems.append("it is not a JSON object")
    else:
        n = manifest.get("num_samples")
        if not is_int(n):
            problems.append(f"num_samples is {n!r}")
        if not is_int(manifest.get("chunk_rows", 1), 1):
            problems.append(f"chunk_rows is {manifest.get('chunk_rows')!r}")
        teachers = manifest.get("teachers")
        arrays_of: dict[str, dict] = {}
        if not isinstance(teachers, list):
            problems.append("teachers is not a list")
            teachers = []
        for t in teachers:
            name = t.get("name") if isinstance(t, dict) else None
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in arrays_of:
                problems.append(f"teacher name {name!r} is not a usable (unique) name")
                continue
            dim, arrays = t.get("embed_dim"), t.get("arrays")
            if not is_int(dim, 1) or not isinstance(arrays, dict) or not set(CORE_KINDS) <= set(arrays):
                problems.append(f"teacher {name!r}: embed_dim {dim!r} or its arrays are missing")
                continue
            for key in ("settings", "provenance"):
                if not isinstance(t.get(key, {}), dict):
                    problems.append(f"teacher {name!r}: {key} is not a mapping")
            for kind, spec in arrays.items():
                problems += _spec_problems(path, name, kind, spec, n, dim)
            arrays_of[name] = arrays
        chunks = manifest.get("chunks", [])
        if not isinstance(chunks, list):
            problems.append("chunks is not a list")
            chunks = []
        for rec in chunks:
            ok = (isinstance(rec, dict) and isinstance(rec.get("teacher"), str) and rec["teacher"] in arrays_of
                  and is_int(rec.get("start"))
                  and is_int(rec.get("stop")) and is_int(n) and rec["start"] <= rec["stop"] <= n
                  and isinstance(rec.get("sha256"), dict)
                  and all(k in arrays_of[rec["teacher"]] and isinstance(v, str) for k, v in rec["sha256"].items()))
            if not ok:
                problems.append(f"chunk record {str(rec)[:80]} does not fit the store")
                break
    if problems:
        raise UsageError(f"feature store {str(path)!r}: its manifest is damaged ({'; '.join(problems[:3])}); rerun "
                         f"the command that wrote it, or extract into a new folder")


def _spec_problems(root: Path, teacher: str, kind: Any, spec: Any, n: Any, dim: int) -> list[str]:
    where = f"teacher {teacher!r} array {kind!r}"
    if not isinstance(kind, str) or not isinstance(spec, dict):
        return [f"{where} is not described by a mapping"]
    _inside(root, spec.get("file"), f"{teacher}/{kind}")  # raises: never read or write outside the store
    shape, dtype = spec.get("shape"), spec.get("dtype")
    try:
        if not isinstance(dtype, str):
            raise TypeError
        np.dtype(dtype)
    except (TypeError, ValueError):
        return [f"{where}: dtype {dtype!r}"]
    expected = {"image": [n, dim], "text": [n, dim], "available": [n], "score": [n]}.get(kind)
    if not isinstance(shape, list) or (expected is not None and shape != expected) or \
            not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape) or not shape or \
            shape[0] != n:
        return [f"{where}: shape {shape!r}"]
    cols = spec.get("columns")
    if "columns" in spec and not (isinstance(cols, list) and len(cols) == 2 and all(
            isinstance(c, int) and not isinstance(c, bool) for c in cols) and 0 <= cols[0] <= cols[1]
                                 and cols[1] - cols[0] == (shape[1] if len(shape) == 2 else 1) and len(shape) <= 2):
        return [f"{where}: columns {cols!r}"]
    return []


def _creation_leftover(p: Path) -> bool:
    """What an interrupted creation of a store (killed, or a full disk, before its manifest was
    written) leaves behind; a rerun may start over in such a folder."""
    return (p.name in (SAMPLE_IDS, "teachers", "content.npy", ".mmkd.lock")
            or (p.name.startswith(".") and p.name.endswith(".tmp")))


def _reserve_space(file: Path) -> None:
    """Allocate a new (sparse) array file's blocks now. Rows are written through a memmap, where a
    full disk would kill the process with SIGBUS; reserving the space turns that into an ENOSPC
    OSError here, before any row is written."""
    fd = os.open(file, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # filesystems without fallocate
            file.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)


def _make_teachers(path: Path, entries: Sequence[TeacherEntry], num_samples: int,
                   chunk_rows: int) -> list[dict[str, Any]]:
    """Create the page-aligned arrays of teachers added together (their features side by side in one
    file); returns their manifest entries. A file left by an interrupted creation is reused: its
    name encodes the teachers, dims and chunk rows, so its layout is the same."""
    layout = json.dumps([[e.name, int(e.embed_dim)] for e in entries] + [PAGE_BYTES, int(chunk_rows)]).encode()
    group = f"teachers/features-{hashlib.sha256(layout).hexdigest()[:12]}.npy"
    width = sum(2 * int(e.embed_dim) for e in entries)
    _create_array(path / group, FEATURE_DTYPE,
                  (num_samples, padded_width(width, np.dtype(FEATURE_DTYPE).itemsize, chunk_rows)))
    out, offset = [], 0
    for entry in entries:
        specs = entry.array_specs(num_samples, group, offset, chunk_rows)
        offset += 2 * int(entry.embed_dim)
        for kind, spec in specs.items():
            if spec["file"] != group:
                shape = tuple(spec["shape"])
                if "columns" in spec:
                    shape = (num_samples, padded_width(spec["columns"][1], np.dtype(spec["dtype"]).itemsize,
                                                       chunk_rows))
                _create_array(path / spec["file"], spec["dtype"], shape, nan=kind == "score")
        out.append({"name": entry.name, "embed_dim": int(entry.embed_dim), "fingerprint": entry.fingerprint,
                    "provenance": entry.provenance, "settings": entry.settings, "arrays": specs})
    return out


def npy_header(dtype: str | np.dtype, shape: Sequence[int]) -> bytes:
    """A `.npy` (version 1.0) header padded with spaces to 4 KiB, so the data starts on a page."""
    fields = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(x) for x in shape)}
    body = repr(fields).ljust(PAGE_BYTES - 10 - 1) + "\n"
    return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + struct.pack("<H", len(body)) + body.encode("latin1")


def _create_array(file: Path, dtype: str, shape: tuple[int, ...], nan: bool = False) -> None:
    """A zero-filled `.npy` of `shape` whose data starts at byte 4096 (see `npy_header`)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    if file.exists():
        return
    with open(file, "wb") as f:
        f.write(npy_header(dtype, shape))
        f.truncate(PAGE_BYTES + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    _reserve_space(file)
    if nan:
        arr = np.load(file, mmap_mode="r+")
        arr[:] = np.nan
        arr.flush()
        del arr


def _check_compatible(path: Path, manifest: dict[str, Any], sample_ids: Sequence[str],
                      teachers: Sequence[TeacherEntry]) -> None:
    if manifest.get("format_version") not in WRITABLE_VERSIONS:
        raise UsageError(f"--out: {str(path)!r} has store format {manifest.get('format_version')}, "
                         f"this mmkd writes {WRITABLE_VERSIONS}; write to a new folder")
    if manifest["num_samples"] != len(sample_ids) or manifest["sample_ids_sha256"] != ids_digest(sample_ids):
        raise UsageError(f"--out: the store {str(path)!r} was made from a different dataset "
                         f"({manifest['num_samples']} samples, other sample ids); write to a new folder")
    existing = {t["name"]: t for t in manifest["teachers"]}
    problems = []
    for entry in teachers:
        old = existing.get(entry.name)
        if old is None:
            continue
        if int(old["embed_dim"]) != int(entry.embed_dim):
            problems.append(f"teacher {entry.name!r} has embedding dim {entry.embed_dim}, but the store holds "
                            f"{old['embed_dim']}-dim features for it")
            continue
        if old["fingerprint"] != entry.fingerprint:
            changed = [k for k in ("weights", "preprocess", "tokenizer")
                       if old.get("provenance", {}).get(k) != entry.provenance.get(k)]
            problems.append(f"teacher {entry.name!r} differs from the one that wrote the store "
                            f"({', '.join(changed) or 'provenance'} changed)")
        elif {"precision": "fp32", **old.get("settings", {})} != {"precision": "fp32", **entry.settings}:
            # stores written before the precision was recorded were extracted in fp32
            problems.append(f"teacher {entry.name!r} was extracted with settings {old.get('settings')}, "
                            f"now {entry.settings}")
    if problems:
        raise UsageError(f"--out: refusing to write into {str(path)!r}: " + "; ".join(problems)
                         + ". Use the original teachers and options, another --teacher name, or a new --out folder")
