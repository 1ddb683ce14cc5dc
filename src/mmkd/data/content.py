"""Content digests of image-text pairs: what each feature-store row was made from.

A row's digest is 16 bytes: BLAKE2b-64 of the image file's bytes (a tar member's bytes for
shards), then BLAKE2b-64 of the caption's UTF-8 text as the teachers read it (stripped). An
unreadable image or caption digests to 8 zero bytes. `mmkd extract` hashes the bytes it reads
for decoding anyway, so recording digests costs no extra read. `mmkd extract` (resuming or
adding teachers) and `mmkd distill` compare the data they are given with the store's digests:
a sample of rows by default, every row on request, and refuse a store made from other images or
captions under the same sample ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmkd.data.pairs import PairRecord, Skip, _read_member, read_caption
from mmkd.errors import UsageError

CONTENT_FILE = "content.npy"
DIGEST_BYTES = 8
ROW_BYTES = 2 * DIGEST_BYTES
ZERO = bytes(DIGEST_BYTES)
CHECK_MODES = ("sample", "full", "off")
SAMPLE_ROWS = 64


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def image_bytes(record: PairRecord) -> bytes | None:
    """The raw bytes of a record's image (file or tar member), or None when they cannot be read."""
    try:
        if isinstance(record.image, tuple):
            return _read_member(record.image)
        if record.image is None or not os.path.isfile(record.image):
            return None
        with open(record.image, "rb") as f:
            return f.read()
    except (OSError, EOFError):
        return None


def digest_of(image: bytes | None, caption: str | Skip) -> bytes:
    """16 bytes from what was read of a record: its image bytes (None: unreadable) and caption (or Skip)."""
    cap = digest(caption.encode("utf-8")) if isinstance(caption, str) else ZERO
    return (digest(image) if image is not None else ZERO) + cap


def row_digest(record: PairRecord) -> bytes:
    """16 bytes for one record, reading its image and caption."""
    return digest_of(image_bytes(record), read_caption(record))


def _rows_to_check(written: np.ndarray, mode: str, seed: int) -> np.ndarray:
    if mode == "full" or written.size <= SAMPLE_ROWS:
        return written
    return np.sort(np.random.default_rng(seed).choice(written, SAMPLE_ROWS, replace=False))


def check_rows(content: np.ndarray, records: Sequence[PairRecord], rows: np.ndarray | None, mode: str,
               where: str, option: str, seed: int = 0) -> int:
    """Compare `records[i]` with store row `rows[i]` (row i when `rows` is None) on the rows the store wrote.

    Returns how many rows were checked; a mismatch is a UsageError naming the rows."""
    if mode == "off":
        return 0
    if mode not in CHECK_MODES:
        raise UsageError(f"{option}: {mode!r} is not a check mode; choose one of {', '.join(CHECK_MODES)}")
    store_rows = np.arange(len(records)) if rows is None else np.asarray(rows)
    stored = np.asarray(content[store_rows]) if store_rows.size else np.zeros((0, ROW_BYTES), np.uint8)
    written = np.flatnonzero(stored.any(axis=1))  # rows no chunk wrote yet are all zero
    picked = _rows_to_check(written, mode, seed)
    bad = [int(i) for i in picked if row_digest(records[i]) != bytes(stored[i])]
    if bad:
        shown = ", ".join(f"row {int(store_rows[i])} ({records[i].sample_id})" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        first = int(bad[0])
        raise UsageError(
            f"{option}: {len(bad)} of {len(picked)} checked sample(s) differ from the data the feature store {where} "
            f"was made from: {shown}{more}. {_packed_note(records[first], bytes(stored[first]))}Use the "
            f"data the store was made from, or extract a new store for this data")
    return len(picked)


def _packed_note(record: PairRecord, stored: bytes) -> str:
    """Why a row differs, when packing explains it: the data given are resized copies (`mmkd data pack`)."""
    info = pack_info(record.image[0]) if isinstance(record.image, tuple) else None
    if info is None:
        return ("Their image or caption bytes changed under the same sample ids (a store extracted from images "
                "resized by `mmkd data pack` differs from one extracted from the originals). ")
    packed = f"packed copies (shorter side {info.get('size')} px, JPEG quality {info.get('quality')})"
    if source_image_digest(record) == stored[:DIGEST_BYTES].hex():
        return f"The data given are {packed} of the images the store was made from. "
    return f"The data given are {packed}; the store was made from other images. "


def open_content(store_path: str | Path) -> np.ndarray | None:
    """The store's [N, 16] uint8 digests (memmapped), or None for a store that has none."""
    path = Path(store_path) / CONTENT_FILE
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UsageError(f"feature store {str(store_path)!r}: {CONTENT_FILE} is unreadable ({e}); rerun the "
                         f"extraction into a new folder") from None
    if arr.ndim != 2 or arr.shape[1] < ROW_BYTES or arr.dtype != np.uint8:
        raise UsageError(f"feature store {str(store_path)!r}: {CONTENT_FILE} has shape {arr.shape} {arr.dtype}, "
                         f"not [N, {ROW_BYTES}] uint8; rerun the extraction into a new folder")
    return arr[:, :ROW_BYTES]  # wider rows are padding that keeps every chunk on a page


# Packed data (`mmkd data pack`): each packed folder holds PACK_FILE, and each sample's .json its `mmkd_pack`.
PACK_FILE = "PACKED.json"


def pack_info(shard_path: str) -> dict[str, Any] | None:
    """PACKED.json of the packed folder holding `shard_path` (searched upwards), or None for original data."""
    folder = Path(shard_path).parent
    for candidate in (folder, *folder.parents):
        meta = candidate / PACK_FILE
        if meta.is_file():
            try:
                return json.loads(meta.read_text())
            except (OSError, ValueError):
                return None
    return None


def source_image_digest(record) -> str:
    """`source_image_digest` of a packed sample (its .json's `mmkd_pack`), or "" when it has none."""
    from mmkd.data import tarscan

    shard, offset, _ = record.image
    listing = tarscan.list_members(shard)
    try:
        name = listing.names[listing.offsets.index(offset)]
    except ValueError:
        return ""
    key = name[:len(name) - len(name.rsplit("/", 1)[-1])] + name.rsplit("/", 1)[-1].split(".", 1)[0]
    for member, off, size in zip(listing.names, listing.offsets, listing.sizes):
        if member == f"{key}.json":
            try:
                with open(shard, "rb") as f:
                    f.seek(off)
                    obj = json.loads(f.read(size))
                return str(obj.get("mmkd_pack", {}).get("source_image_digest", ""))
            except (OSError, ValueError, AttributeError):
                return ""
    return ""
