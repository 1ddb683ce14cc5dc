"""Scanning a data source into index parts: one shard of tar members, or one CSV/JSONL file.

A shard is listed by its headers (`mmkd.data.tarscan`); members are grouped into samples by key
(the name up to the first dot of its basename) in order of first appearance, and the metadata
fields are read from each sample's .json member. A table is read once, front to back, keeping
the byte offset where each record starts (captions are not kept: they are read from the file by
offset later). A part is the arrays of one shard/file plus a small JSON of counts and
vocabularies, written as an .npz (no pickles) into the build folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.data import tarscan
from mmkd.data.index import (CAPTION_JSON, CAPTION_NONE, CAPTION_TXT, FLAG_CAPTION_TOO_LONG, MAX_CAPTION_CHARS,
                             MEMBER_DTYPE, TableLayout)
from mmkd.errors import UsageError
from mmkd.utils.io import json_object_line

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
LICENSE_SUBSETS = ("commercial", "noncommercial", "other")


def _values(value: Any) -> list[str]:
    """A JSON value as the strings a selection compares: a string, a list of strings, a scalar."""
    if isinstance(value, str):
        return [value] if value else []
    if value is None or isinstance(value, dict):
        return []
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return [v for v in value if v]
        return [v for item in value if not isinstance(item, list) for v in _values(item)]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    text = str(value)
    return [text] if text else []


_NC_RE = re.compile(r"\bNC\b")


def license_group(subset: str, license_text: str | None) -> str:
    """commercial | noncommercial | other: from BIOMEDICA's licence folder when the shard sits in
    one, else from the article licence (any CC licence without NC is commercial-use; *inferred*)."""
    if subset in LICENSE_SUBSETS:
        return subset
    text = (license_text or "").upper().replace("_", " ")
    if not text.startswith("CC") and "PUBLIC DOMAIN" not in text:
        return "other"
    return "noncommercial" if _NC_RE.search(text.replace("-", " ")) else "commercial"


def _listing_digest(listing: tarscan.TarListing) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, off, size in zip(listing.names, listing.offsets, listing.sizes):
        h.update(f"{name}\0{off}\0{size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class _FieldCollector:
    """Per-field CSR of local value codes, filled one sample at a time."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.vocab: dict[str, dict[str, int]] = {n: {} for n in names}
        self.codes: dict[str, list[int]] = {n: [] for n in names}
        self.starts: dict[str, list[int]] = {n: [0] for n in names}

    def add(self, values: dict[str, list[str]]) -> None:
        for name in self.names:
            codes = self.codes[name]
            got = values.get(name)
            if got:
                vocab = self.vocab[name]
                for v in got:
                    code = vocab.get(v)
                    if code is None:
                        code = vocab[v] = len(vocab)
                    codes.append(code)
            self.starts[name].append(len(codes))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, name in enumerate(self.names):
            out[f"f{i}_codes"] = np.asarray(self.codes[name], dtype=np.uint32)
            out[f"f{i}_starts"] = np.asarray(self.starts[name], dtype=np.int64)
        return out

    def vocabularies(self) -> list[list[str]]:
        return [list(self.vocab[n]) for n in self.names]


def _keys_arrays(keys: list[str]) -> dict[str, np.ndarray]:
    encoded = [k.encode("utf-8", "surrogateescape") for k in keys]
    starts = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=starts[1:])
    return {"keys": np.frombuffer(b"".join(encoded), dtype=np.uint8), "key_starts": starts}


def scan_shard(path: str, rel: str, fields: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Index one shard: its samples (members grouped by key, in order of first appearance), their
    member offsets and the values of `fields` read from each sample's .json member."""
    try:
        listing = tarscan.list_members(path)
    except OSError:
        listing = tarscan.TarListing([], [], [], damaged=True)
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    repeats: dict[str, dict[str, int]] = {}  # key -> member extension -> copies after the first
    for name, off, size in zip(listing.names, listing.offsets, listing.sizes):
        slash = name.rfind("/")
        base = name[slash + 1:]
        dot = base.find(".")
        key = name[:slash + 1 + dot] if dot >= 0 else name
        ext = base[dot + 1:].lower() if dot >= 0 else ""
        members = groups.get(key)
        if members is None:
            members = groups[key] = {}
        if ext in members:  # a second sample under a key already used: the first one is kept
            counts = repeats.setdefault(key, {})
            counts[ext] = counts.get(ext, 0) + 1
        else:
            members[ext] = (off, size)
    # A key written n times holds n samples; all but the first are dropped and counted.
    duplicates = {key: max(counts.values()) for key, counts in repeats.items()}
    subset = rel.split("/", 1)[0] if "/" in rel else ""
    json_fields = tuple(f for f in fields if f not in ("subset", "license_group"))
    want_json = bool(json_fields) or "license_group" in fields
    collector = _FieldCollector(fields)
    rows: list[tuple[int, int, int, int, int, int, int]] = []
    bad_json = 0
    fd = os.open(path, os.O_RDONLY) if want_json and groups else -1
    try:
        for members in groups.values():
            image = next((members[e] for e in IMAGE_EXTS if e in members), None) or (-1, 0)
            js = members.get("json") or (-1, 0)
            txt = members.get("txt")
            if txt:
                caption, kind = txt, CAPTION_TXT
            elif js[0] >= 0:
                caption, kind = js, CAPTION_JSON
            else:
                caption, kind = (-1, 0), CAPTION_NONE
            rows.append((image[0], image[1], caption[0], caption[1], js[0], js[1], kind))
            values: dict[str, list[str]] = {}
            obj: Any = None
            if js[0] >= 0 and want_json:
                try:
                    obj = json.loads(os.pread(fd, js[1], js[0]))
                except (ValueError, OSError):
                    obj = None
                if not isinstance(obj, dict):
                    bad_json += 1
                    obj = None
            if obj is not None:
                for f in json_fields:
                    values[f] = _values(obj.get(f))
            if subset:
                values["subset"] = [subset]
            if "license_group" in fields and (subset in LICENSE_SUBSETS or obj is not None):
                values["license_group"] = [license_group(subset, obj.get("article_license") if obj else None)]
            collector.add(values)
    finally:
        if fd >= 0:
            os.close(fd)
    table = np.array(rows, dtype=MEMBER_DTYPE) if rows else np.zeros(0, dtype=MEMBER_DTYPE)
    arrays = {"members": table, **_keys_arrays(list(groups)), **collector.arrays()}
    meta = {"num_samples": len(groups), "damaged": listing.damaged, "bad_json": bad_json,
            "duplicate_keys": sum(duplicates.values()), "duplicate_examples": list(duplicates)[:3],
            "num_members": len(listing.names), "listing": _listing_digest(listing), **_sizes(arrays, fields),
            "vocab": collector.vocabularies()}
    return arrays, meta


def _sizes(arrays: dict[str, np.ndarray], fields: tuple[str, ...]) -> dict[str, Any]:
    return {"key_bytes": int(arrays["keys"].size),
            "field_values": [int(arrays[f"f{j}_codes"].size) for j in range(len(fields))]}


# ---- scanning a CSV/JSONL file --------------------------------------------------------------
class _Lines:
    """Binary lines of a file decoded for the csv module, remembering the byte offset reached."""

    def __init__(self, f, start: int):
        self.f, self.pos, self.line_no = f, start, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.f.readline()
        if not line:
            raise StopIteration
        self.pos += len(line)
        self.line_no += 1
        return line.decode("utf-8", "surrogateescape")


def _raise_duplicates(path: str, ids: list[str], lines: list[int]) -> None:
    """Refuse duplicate sample ids, naming each one's line numbers (found by sorting 64-bit hashes)."""
    hashes = np.fromiter((hash(s) for s in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(hashes, kind="stable")
    same = np.flatnonzero(hashes[order][1:] == hashes[order][:-1])
    if not same.size:
        return
    where: dict[str, list[int]] = {}
    for j in same:
        a, b = int(order[j]), int(order[j + 1])
        if ids[a] == ids[b]:
            where.setdefault(ids[a], [lines[a]])
            if lines[b] not in where[ids[a]]:
                where[ids[a]].append(lines[b])
    if not where:
        return
    shown = "; ".join(f"{sid!r} on lines {', '.join(map(str, sorted(ls)))}" for sid, ls in list(where.items())[:5])
    more = f" (and {len(where) - 5} more)" if len(where) > 5 else ""
    raise UsageError(f"--data: {path} has duplicate sample ids: {shown}{more}. Every sample needs its own id: fix "
                     f"the file, or drop the id column so that rows are numbered")


def scan_table(path: str, kind: str, layout: TableLayout, fields: tuple[str, ...]
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Index a CSV/TSV or JSONL file: byte offset of every record, ids, flags, field values.
    Fills `layout.header` (CSV). Raises UsageError for missing columns, bad lines, duplicate ids."""
    starts: list[int] = []
    ids: list[str] = []
    lines: list[int] = []
    flags = bytearray()
    collector = _FieldCollector(fields)
    with open(path, "rb") as f:
        bom = f.read(3) == b"\xef\xbb\xbf"
        f.seek(3 if bom else 0)
        reader_lines = _Lines(f, 3 if bom else 0)
        if kind == "csv":
            old_limit = csv.field_size_limit()
            csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # long fields are flagged, not fatal
            try:
                reader = csv.reader(reader_lines, delimiter=layout.delimiter)
                try:
                    layout.header = next(reader)
                except StopIteration:
                    layout.header = []
                except csv.Error as e:
                    raise UsageError(f"--data: {path}:1 is not valid CSV ({e})") from None
                missing = [k for k in (layout.image_key, layout.caption_key) if k not in layout.header]
                if layout.header and missing:
                    raise UsageError(f"--data: {path} has no column(s) {missing}; it has {sorted(layout.header)}. "
                                     f"Set --data.image_key / --data.caption_key to the right names")
                col = {name: i for i, name in enumerate(layout.header)}
                while True:
                    start, line_no = reader_lines.pos, reader_lines.line_no + 1
                    try:
                        values = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as e:
                        raise UsageError(f"--data: {path}:{line_no} is not valid CSV ({e}); fix that line") from None
                    if not values:
                        continue  # a blank line is not a record (as csv.DictReader skips it)
                    n = len(starts)

                    def get(key: str) -> str | None:
                        i = col.get(key)
                        return values[i] if i is not None and i < len(values) else None

                    starts.append(start)
                    lines.append(line_no)
                    ids.append(str(get(layout.id_key) or n))
                    caption = get(layout.caption_key) or ""
                    flags.append(FLAG_CAPTION_TOO_LONG if len(caption) > MAX_CAPTION_CHARS else 0)
                    collector.add({k: [v] for k in fields if (v := get(k))})
            finally:
                csv.field_size_limit(old_limit)
        else:
            first = True
            while True:
                start = reader_lines.pos
                try:
                    text = next(reader_lines)
                except StopIteration:
                    break
                if not text.strip():
                    continue
                row = json_object_line(text, f"--data: {path}:{reader_lines.line_no}", "an object with the sample's fields")
                if first:
                    missing = [k for k in (layout.image_key, layout.caption_key) if k not in row]
                    if missing:
                        raise UsageError(f"--data: {path} has no column(s) {missing}; it has "
                                         f"{sorted(str(k) for k in row)}. Set --data.image_key / --data.caption_key "
                                         f"to the right names")
                    first = False
                image = row.get(layout.image_key)
                if image is not None and not isinstance(image, str):
                    raise UsageError(f"--data: {path}:{reader_lines.line_no}: {layout.image_key!r} is a JSON "
                                     f"{type(image).__name__}, not an image path")
                n = len(starts)
                starts.append(start)
                lines.append(reader_lines.line_no)
                ids.append(str(row.get(layout.id_key) or n))
                caption = row.get(layout.caption_key) or ""
                flags.append(FLAG_CAPTION_TOO_LONG if isinstance(caption, str) and len(caption) > MAX_CAPTION_CHARS
                             else 0)
                collector.add({k: _values(row.get(k)) for k in fields})
        end = reader_lines.pos
    _raise_duplicates(path, ids, lines)
    arrays: dict[str, np.ndarray] = {"record_starts": np.asarray(starts + [end], dtype=np.int64),
              "flags": np.frombuffer(bytes(flags), dtype=np.uint8), **_keys_arrays(ids), **collector.arrays()}
    meta = {"num_samples": len(starts), "damaged": False, "bad_json": 0, "vocab": collector.vocabularies(),
            "caption_too_long": int(sum(1 for x in flags if x & FLAG_CAPTION_TOO_LONG)), "header": layout.header,
            **_sizes(arrays, fields)}
    return arrays, meta


# ---- parts on disk --------------------------------------------------------------------------
def part_path(build_dir: Path, shard: int) -> Path:
    return build_dir / f"part-{shard:07d}.npz"


def write_part(build_dir: Path, shard: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    tmp = build_dir / f".part-{shard:07d}.{os.getpid()}.npz"
    meta_bytes = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp, **{"meta": meta_bytes, **arrays})  # type: ignore[arg-type]
    os.replace(tmp, part_path(build_dir, shard))


def read_part(build_dir: Path, shard: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(part_path(build_dir, shard), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(bytes(z["meta"]).decode())
    return arrays, meta


def scan_job(args: tuple[str, str, tuple[str, ...], str, int]) -> tuple[int, int]:
    path, rel, fields, build_dir, shard = args
    arrays, meta = scan_shard(path, rel, fields)
    write_part(Path(build_dir), shard, arrays, meta)
    return shard, meta["num_samples"]
