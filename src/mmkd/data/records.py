"""What one sample is, before it is read: where its image and caption live, and why a sample was skipped.

Shared by the readers (`mmkd.data.pairs`) and the index (`mmkd.data.index`), which neither imports
the other for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")

# Skip reasons (fixed names: they appear in summary.json).
MISSING_FILE = "missing_file"
UNREADABLE_IMAGE = "unreadable_image"
DECOMPRESSION_BOMB = "decompression_bomb"
EMPTY_CAPTION = "empty_caption"
BAD_CAPTION_ENCODING = "bad_caption_encoding"
MISSING_IMAGE = "missing_image"
BAD_TAR_MEMBER = "bad_tar_member"
CAPTION_TOO_LONG = "caption_too_long"  # a CSV/JSONL caption over 128 KiB (mmkd.data.index.MAX_CAPTION_CHARS)
DUPLICATE_KEY = "duplicate_key"  # a later sample of a shard under a key an earlier one used (the first is kept)


@dataclass(frozen=True)
class PairRecord:
    """Where one sample lives. `image` is a file path, or (tar path, offset, size) for shards."""

    sample_id: str
    image: str | tuple[str, int, int] | None
    caption: str | tuple[str, int, int] | None  # text, or a tar member (txt/json) to read
    modality: str = ""
    caption_json_key: str = ""  # when `caption` is a tar .json member: the key holding the caption
    problem: str = ""  # a skip reason found while indexing (e.g. caption_too_long): the sample is skipped


@dataclass(frozen=True)
class Skip:
    reason: str
    sample_id: str = ""


def ids_digest(sample_ids: Iterable[str]) -> str:
    """SHA-256 of a list of sample ids (each UTF-8, NUL-terminated): the identity of a dataset's row order,
    recorded by feature stores, indexes and selections."""
    h = hashlib.sha256()
    for sid in sample_ids:
        h.update(sid.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()
