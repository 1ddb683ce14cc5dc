"""Image-text pairs from CSV/JSONL files or webdataset tar shards, as one random-access dataset.

Every source is turned into a sequence of records (`PairRecord`) so that all formats share one
sampler: a seeded permutation per epoch, split across ranks, which is what makes mid-epoch
resume exact. The records come from a persistent, memory-mapped index of the source
(`mmkd.data.index`), built on the first launch and only refreshed where a shard changed: tar
members and CSV/JSONL records are read by seeking to their offsets, so a sample is found in
O(1) without unpacking a shard or holding a caption in memory. Metadata clauses
(`--data.select`, `mmkd.data.select`) and saved selections choose a subset of the index.

A sample that cannot be read is not an error: `load_sample` returns a `Skip` carrying the
reason (missing file, unreadable image, decompression bomb, empty caption, ...) and the
collate function drops it and counts it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mmkd.data.records import (  # noqa: F401 - the readers' public names
    BAD_CAPTION_ENCODING, BAD_TAR_MEMBER, CAPTION_TOO_LONG, DECOMPRESSION_BOMB, DUPLICATE_KEY, EMPTY_CAPTION, IMAGE_EXTS,
    MISSING_FILE,
    MISSING_IMAGE, UNREADABLE_IMAGE, PairRecord, Skip)
from mmkd.data.sources import expand_shards, refuse_urls  # noqa: F401 - expand_shards is public here too
from mmkd.config import MAX_OPEN_SHARDS
from mmkd.errors import UsageError
from mmkd.utils.io import json_object_line

def detect_format(path: str) -> str:
    p = path.lower()
    if p.endswith(".csv") or p.endswith(".tsv"):
        return "csv"
    if p.endswith(".jsonl") or p.endswith(".json"):
        return "jsonl"
    if os.path.isdir(path):
        from mmkd.data.select import is_selection

        return "selection" if is_selection(path) else "webdataset"
    if p.endswith(".tar") or "{" in p or "*" in p:
        return "webdataset"
    raise UsageError(
        f"--data: cannot tell the format of {path!r}; use a .csv, .jsonl, .tar (or a folder of .tar shards), "
        f"or set --data.format csv|jsonl|webdataset"
    )


def read_table(path: Path, fmt: str, what: str = "--data") -> list[dict[str, Any]]:
    """Rows of a CSV/TSV or JSONL file as dicts; `what` names the option in error messages.

    A UTF-8 byte-order mark is dropped; a field over csv's default limit (128 KiB) is read whole."""
    if not path.is_file():
        raise UsageError(f"{what}: file {str(path)!r} does not exist")
    # Bytes that are not UTF-8 are kept as surrogate escapes: the row stays (image paths are still the
    # file's bytes) and `read_caption` skips a caption holding them as bad_caption_encoding.
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            reader = csv.DictReader(f, dialect=dialect)
            old_limit = csv.field_size_limit()
            csv.field_size_limit(2 ** 31 - 1)
            try:
                return list(reader)
            except csv.Error as e:
                raise UsageError(f"{what}: {path}:{reader.line_num} is not valid CSV ({e}); fix that line") from None
            finally:
                csv.field_size_limit(old_limit)
    rows = []
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                rows.append(json_object_line(line, f"{what}: {path}:{line_no}", "an object with the sample's fields"))
    return rows


def index_source(path: str, fmt: str = "auto", image_key: str = "image", caption_key: str = "caption",
                 id_key: str = "sample_id", modality_key: str = "modality", *, select: Sequence[str] = (),
                 license: str = "", index_dir: str = "", index_fields: Sequence[str] = (), index_workers: int = 0,
                 index_check: str = "stat", progress: bool | None = None) -> tuple[Sequence[PairRecord], Counter]:
    """The records of a data source (CSV/JSONL, shards, or a saved selection), narrowed by `select`
    clauses and `license`, plus shard-level problems found while indexing (damaged shards).

    The index is built or refreshed first when needed (`mmkd.data.index_build.ensure_index`); the
    records are an `IndexedRecords` view over its memory-mapped arrays."""
    from mmkd.data import select as sel
    from mmkd.data.index_build import ensure_index, resolve_source

    if not path:
        raise UsageError("--data: no training data given; pass --data PATH (CSV, JSONL or .tar shards)")
    refuse_urls(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in ("csv", "jsonl", "webdataset", "selection"):
        raise UsageError(f"--data.format: {fmt!r} is not allowed; choose auto, csv, jsonl or webdataset")
    clauses = sel.parse_clauses(select, license)
    progress = sys.stderr.isatty() if progress is None else progress
    saved, selection_path = None, path
    if fmt == "selection":
        saved = sel.read_selection(path)
        src = saved["source"]
        path, fmt = src["data"], src["format"]
        image_key, caption_key, id_key = src["image_key"], src["caption_key"], src["id_key"]
        modality_key = saved["modality_key"]
        index_dir = index_dir or (saved["index"]["dir"] if os.path.isdir(saved["index"]["dir"]) else "")
    fields = (modality_key, *index_fields, *clauses, *(saved["select"] if saved else ()))
    source = resolve_source(path, fmt, image_key, caption_key, id_key, tuple(dict.fromkeys(fields)), index_dir)
    index = ensure_index(source, index_workers, progress, index_check)
    close_open_shard()
    rows = modality = None
    modality_values: list[str] = []
    if saved is not None:
        rows, modality, modality_values = sel.selection_rows(selection_path, saved, index)
    records = sel.selected_records(index, rows, modality, modality_values, caption_key, modality_key, clauses)
    problems = Counter({BAD_TAR_MEMBER: sum(1 for s in index.shards if s.get("damaged")),
                        DUPLICATE_KEY: sum(int(s.get("duplicate_keys", 0)) for s in index.shards)})
    return records, +problems


def records_from_config(data_cfg, progress: bool | None = None) -> tuple[Sequence[PairRecord], Counter]:
    """`index_source` with every setting of a `DataConfig` (data.path, format, keys, select, license, index_*)."""
    return index_source(data_cfg.path, data_cfg.format, data_cfg.image_key, data_cfg.caption_key, data_cfg.id_key,
                        data_cfg.modality_key, select=data_cfg.select, license=data_cfg.license,
                        index_dir=data_cfg.index_dir, index_fields=data_cfg.index_fields,
                        index_workers=data_cfg.index_workers, index_check=data_cfg.index_check, progress=progress)


_open_shards: tuple[int, OrderedDict[str, int]] | None = None  # (pid, shard path -> fd) of the shards this process reads


def _shard_fd(shard: str) -> int:
    """A descriptor of `shard`, kept open while this process reads it: a loader that reads a few shards at a
    time (`ShardOrderedBatchSampler`, `data.open_shards`) opens each shard once, not twice per sample. The
    `MAX_OPEN_SHARDS` most recently read shards stay open."""
    global _open_shards
    pid = os.getpid()
    if _open_shards is None or _open_shards[0] != pid:  # a forked worker leaves its parent's descriptors alone
        _open_shards = (pid, OrderedDict())
    fds = _open_shards[1]
    if shard in fds:
        fds.move_to_end(shard)
        return fds[shard]
    fd = os.open(shard, os.O_RDONLY)
    fds[shard] = fd
    if len(fds) > MAX_OPEN_SHARDS:
        os.close(fds.popitem(last=False)[1])
    return fd


def close_open_shard() -> None:
    """Forget the kept descriptors (a shard replaced since is then read anew); called when a source is indexed."""
    global _open_shards
    if _open_shards is not None and _open_shards[0] == os.getpid():
        for fd in _open_shards[1].values():
            os.close(fd)
    _open_shards = None


def _read_member(ref: tuple[str, int, int]) -> bytes:
    shard, offset, size = ref
    data = os.pread(_shard_fd(shard), size, offset)
    if len(data) != size:
        raise EOFError("tar member is truncated")
    return data


def decode_image(data_or_path: bytes | str, max_pixels: int):
    """Open an image as RGB; grayscale, palette and RGBA are converted. Raises on bad bytes."""
    from PIL import Image

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as img:
        if img.width * img.height > max_pixels:
            raise _Bomb()
        img.load()
        return rgb_of(img)


def rgb_of(img):
    """A loaded PIL image as RGB: transparency is composited on white."""
    from PIL import Image

    if img.mode == "RGBA" or img.mode == "LA" or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class _Bomb(Exception):
    pass


def read_caption(record: PairRecord) -> str | Skip:
    if record.problem:
        return Skip(record.problem, record.sample_id)
    cap = record.caption
    if isinstance(cap, tuple):
        try:
            raw = _read_member(cap)
        except (OSError, EOFError):
            return Skip(BAD_TAR_MEMBER, record.sample_id)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Skip(BAD_CAPTION_ENCODING, record.sample_id)
        if record.caption_json_key:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                return Skip(BAD_TAR_MEMBER, record.sample_id)
            text = _find_caption(obj, record.caption_json_key)
        cap = text
    if not isinstance(cap, str) or not cap.strip():
        return Skip(EMPTY_CAPTION, record.sample_id)
    try:
        cap.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes of bytes that were not UTF-8 (see read_table)
        return Skip(BAD_CAPTION_ENCODING, record.sample_id)
    return cap.strip()


def _find_caption(obj: Any, key: str) -> str:
    """The caption inside a BIOMEDICA-style JSON record: `key`, else common names."""
    if not isinstance(obj, dict):
        return ""
    for k in (key, "caption", "txt", "text"):
        v = obj.get(k)
        if isinstance(v, str) and v.strip():
            return v
    return ""


def load_image(record: PairRecord, max_pixels: int, data: bytes | None = None):
    """PIL RGB image of a record, or a Skip with the reason. `data`: the image's bytes, when the caller
    has read them already (e.g. to hash them)."""
    from PIL import Image

    if record.image is None:
        return Skip(MISSING_IMAGE, record.sample_id)
    try:
        source: bytes | str
        if data is not None:
            source = data
        elif isinstance(record.image, tuple):
            source = _read_member(record.image)
        else:
            if not os.path.isfile(record.image):
                return Skip(MISSING_FILE, record.sample_id)
            source = record.image
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return decode_image(source, max_pixels)
    except (_Bomb, Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Skip(DECOMPRESSION_BOMB, record.sample_id)
    except EOFError:
        return Skip(BAD_TAR_MEMBER if isinstance(record.image, tuple) else UNREADABLE_IMAGE, record.sample_id)
    except (OSError, ValueError, SyntaxError):
        return Skip(UNREADABLE_IMAGE, record.sample_id)


class PairDataset:
    """Random-access image-text pairs. `dataset[i]` is a dict with `image` (transformed tensor),
    `caption` (str), `index`, `sample_id`, `modality` — or a `Skip`.
    """

    def __init__(self, records: Sequence[PairRecord], image_transform: Callable | None = None,
                 max_image_pixels: int = 64_000_000):
        self.records = records
        self.image_transform = image_transform
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_config(cls, data_cfg, image_transform: Callable | None = None,
                    progress: bool | None = None) -> tuple[PairDataset, Counter]:
        records, index_skips = records_from_config(data_cfg, progress)
        if not records:
            raise UsageError(f"--data: {data_cfg.path!r} holds no samples")
        return cls(records, image_transform, data_cfg.max_image_pixels), index_skips

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | Skip:
        record = self.records[index]
        caption = read_caption(record)
        if isinstance(caption, Skip):
            return caption
        image = load_image(record, self.max_image_pixels)
        if isinstance(image, Skip):
            return image
        if self.image_transform is not None:
            image = self.image_transform(image)
        return {"image": image, "caption": caption, "index": index, "sample_id": record.sample_id,
                "modality": record.modality}


@dataclass
class Batch:
    """A collated batch. Fixed keys; `skipped` counts the dropped samples by reason."""

    images: Any  # [B, 3, H, W] float tensor
    captions: list[str]
    indices: Any  # [B] long tensor: positions in the dataset
    sample_ids: list[str]
    modalities: list[str]
    skipped: Counter
    tokens: Any = None  # [B, L] long tensor when the loader tokenizes (collate_pairs(tokenize=...))

    def __len__(self) -> int:
        return len(self.captions)

    def pin_memory(self) -> Batch:
        """Called by a DataLoader with pin_memory=True: page-locked tensors copy to a GPU asynchronously."""
        import torch

        if isinstance(self.images, torch.Tensor) and self.images.numel():
            self.images = self.images.pin_memory()
        if self.tokens is not None:
            self.tokens = self.tokens.pin_memory()
        return self


def collate_pairs(items: list[dict[str, Any] | Skip], tokenize: Callable[[list[str]], Any] | None = None) -> Batch:
    """Stack the readable samples of a batch; `tokenize` (captions -> ids) runs here, in the worker."""
    import torch

    good = [it for it in items if not isinstance(it, Skip)]
    skipped = Counter(it.reason for it in items if isinstance(it, Skip))
    images: Any = torch.empty(0)
    if good:  # a list when the images are still encoded (decoded on the GPU: mmkd.data.gpu_decode)
        encoded = not isinstance(good[0]["image"], torch.Tensor)
        images = [it["image"] for it in good] if encoded else torch.stack([it["image"] for it in good])
    return Batch(
        images=images,
        captions=[it["caption"] for it in good],
        indices=torch.tensor([it["index"] for it in good], dtype=torch.long),
        sample_ids=[it["sample_id"] for it in good],
        modalities=[it["modality"] for it in good],
        skipped=skipped,
        tokens=tokenize([it["caption"] for it in good]) if tokenize is not None and good else None,
    )
