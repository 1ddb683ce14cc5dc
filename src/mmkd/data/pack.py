"""`mmkd data pack`: the selected samples of webdataset shards rewritten as resized shards, once.

A BIOMEDICA image is a full-resolution JPEG (often 1600 x 1200, ~1 MB): decoding it costs tens of
ms of CPU every epoch, while a student or teacher sees 224 px. Packing decodes each selected
image once (`Image.draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale), resizes its shorter side
to `size` (bicubic; never enlarged) and re-encodes it as JPEG at `quality`.

What is kept, so that a store extracted from the packed shards and one from the originals name
the same rows in the same order:
- the layout: packed shard `DIR/<relative path>` for each source shard that holds a selected
  sample, so sample ids (`<shard path without .tar>/<key>`) and BIOMEDICA's licence subsets
  (the first folder) are unchanged;
- the keys and their order within a shard; the .txt member byte for byte; the .json member with
  one field added, `mmkd_pack`: the size, the quality and `source_image_digest` (the content digest
  of the original image, `mmkd.data.content`), and `modality`, the modality a selection gave the
  sample (`--modality-key`), unless the JSON has that field already: `--data.modality_key`'s
  default then reads it from the packed shards. A feature store records digests of the image
  bytes it read, so packed and original data never pass each other's identity check, and the
  refusal says which of the two the store was made from;
- an image that is already small enough, or that cannot be decoded, is copied unchanged (it is
  then read, or skipped for the same reason, as before).

Each packed shard is written to a hidden temporary file and renamed into place when complete: a
rerun after a crash or Ctrl-C skips the shards that exist and writes the rest. `DIR/PACKED.json`
records the settings (a rerun with other settings or another selection is refused) and, once
every shard is written, the counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import multiprocessing
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mmkd.data.content import PACK_FILE, digest
from mmkd.errors import UsageError
from mmkd.utils.io import atomic_write_text

FORMAT = "mmkd-packed"
DEFAULT_SIZE = 256
DEFAULT_QUALITY = 90


def packed_size(width: int, height: int, size: int) -> tuple[int, int] | None:
    """(w, h) with the shorter side `size` and the aspect kept, or None when the image is not larger."""
    short = min(width, height)
    if short <= size:
        return None
    return (size, max(size, round(height * size / width))) if width <= height else \
        (max(size, round(width * size / height)), size)


def resize_image(data: bytes, size: int, quality: int, max_pixels: int) -> bytes | None:
    """JPEG bytes of the image resized to shorter side `size`, or None to keep `data` as it is
    (already small enough, or not decodable: it is read, or skipped, as the original would be)."""
    import warnings

    from PIL import Image

    from mmkd.data.pairs import rgb_of

    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if img.width * img.height > max_pixels:
                return None
            target = packed_size(img.width, img.height, size)
            if target is None:
                return None
            img.draft("RGB", target)  # JPEG: decode at the smallest 1/2, 1/4 or 1/8 scale still >= target
            img.load()
            rgb = rgb_of(img)
        buf = io.BytesIO()
        rgb.resize(target, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - any decoding failure keeps the original bytes (see the docstring)
        return None


# ---- one shard ------------------------------------------------------------------------------
def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: the same input packs to the same bytes
    tf.addfile(info, io.BytesIO(data))


def pack_shard(job: tuple[str, str, list[tuple[str, tuple[int, ...], str]], int, int, int]) -> dict[str, int]:
    """Write one packed shard (atomically); returns its counts. The job: source shard, packed shard,
    the selected samples as (key, member table row, modality), size, quality, max pixels."""
    src, dst, samples, size, quality, max_pixels = job
    counts = {"samples": len(samples), "resized": 0, "kept": 0, "bytes_in": 0, "bytes_out": 0}
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    fd = os.open(src, os.O_RDONLY)
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for key, (image_off, image_size, caption_off, caption_size, json_off, json_size, kind), modality \
                        in samples:
                    pack_info: dict[str, Any] = {"size": size, "quality": quality}
                    if image_off >= 0:
                        data = os.pread(fd, image_size, image_off)
                        counts["bytes_in"] += len(data)
                        pack_info["source_image_digest"] = digest(data).hex()
                        small = resize_image(data, size, quality, max_pixels)
                        ext = "jpg" if small is not None else _image_ext(key, data)
                        counts["resized" if small is not None else "kept"] += 1
                        image = small if small is not None else data
                        counts["bytes_out"] += len(image)
                        _add(tf, f"{key}.{ext}", image)
                    if kind == 1:  # CAPTION_TXT
                        _add(tf, f"{key}.txt", os.pread(fd, caption_size, caption_off))
                    if json_off >= 0:
                        _add(tf, f"{key}.json", _with_pack_info(os.pread(fd, json_size, json_off), pack_info,
                                                                 modality))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return counts


def _image_ext(key: str, data: bytes) -> str:
    """The extension of an image kept as it is: from its bytes (PIL sniffs the format; the name only
    has to be one the index takes for an image)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _with_pack_info(raw: bytes, info: dict[str, Any], modality: str) -> bytes:
    """The sample's JSON with `mmkd_pack` added, and `modality` (the one a selection chose) where it has
    none; JSON that is not an object is kept byte for byte."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(obj, dict):
        return raw
    obj["mmkd_pack"] = info
    if modality and "modality" not in obj:
        obj["modality"] = modality
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


# ---- the command ----------------------------------------------------------------------------
def _jobs(records, out: Path, size: int, quality: int, max_pixels: int) -> list[tuple]:
    """One job per source shard holding a selected sample, in shard order."""
    index = records.data_index
    rows = np.arange(index.num_samples) if records.rows is None else np.asarray(records.rows, dtype=np.int64)
    shard_of = np.searchsorted(index.shard_starts, rows, side="right") - 1
    jobs = []
    bounds = np.flatnonzero(np.diff(shard_of)) + 1
    for part in np.split(np.arange(len(rows)), bounds):
        if not part.size:
            continue
        s = int(shard_of[part[0]])
        table = index.members[rows[part]]
        samples = [(index.key(int(r)), tuple(int(v) for v in m), records[int(i)].modality)
                   for i, r, m in zip(part, rows[part], table)]
        jobs.append((index.shard_paths[s], str(out / index.shards[s]["path"]), samples, size, quality, max_pixels))
    return jobs


@contextlib.contextmanager
def _claim(out: Path) -> Iterator[None]:
    """Hold DIR/.pack.lock for the whole run: a second pack into the same folder is refused."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".pack.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"--out: another `mmkd data pack` is writing {out}; wait for it or choose another "
                             f"--out") from None
        yield


def pack(data: str, out: str, size: int = DEFAULT_SIZE, quality: int = DEFAULT_QUALITY, workers: int = 0,
         progress: bool = True, max_pixels: int = 64_000_000) -> dict[str, Any]:
    """Pack the samples of `data` (shards, or a selection of shards) into `out`; returns PACKED.json's content."""
    from mmkd.data.index import IndexedRecords
    from mmkd.data.index_build import default_workers
    from mmkd.data.pairs import index_source
    from mmkd.data.records import ids_digest

    if not 32 <= size <= 4096:
        raise UsageError(f"--size: {size} is not allowed; give the shorter side in pixels, 32 to 4096 (e.g. 256)")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality: {quality} is not allowed; give a JPEG quality from 1 to 100 (e.g. 90)")
    records, _ = index_source(data, progress=progress)
    if not isinstance(records, IndexedRecords) or records.data_index.kind != "webdataset":
        raise UsageError(f"{data}: mmkd data pack reads webdataset shards or a selection of them; a CSV/JSONL of "
                         f"loose files is read by random access as it is")
    if not len(records):
        raise UsageError(f"{data}: holds no samples to pack")
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--out: {out} is a file; give a folder for the packed shards")
    root, target = records.data_index.root.resolve(), dest.resolve()
    if target == root or root in target.parents or target in root.parents:
        # inside the source, packed shards would be read as more source shards by the next index
        raise UsageError(f"--out: {out} overlaps the folder of the shards being packed ({root}); choose a folder "
                         f"outside it")
    settings = {"format": FORMAT, "size": size, "quality": quality, "resample": "bicubic, shorter side",
                "source": os.path.abspath(data), "sample_ids_sha256": ids_digest(records.sample_ids),
                "num_samples": len(records)}
    with _claim(dest):
        meta_path = dest / PACK_FILE
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            differ = {k: (old.get(k), v) for k, v in settings.items() if k != "source" and old.get(k) != v}
            if differ:
                shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in differ.items())
                raise UsageError(f"--out: {out} was packed with other settings or samples ({shown}); choose another "
                                 f"--out, or delete it to pack again")
        elif any(p for p in dest.iterdir() if p.name != ".pack.lock"):
            raise UsageError(f"--out: {out} is not empty and holds no {PACK_FILE}; choose an empty or new folder")
        else:
            atomic_write_text(meta_path, json.dumps({**settings, "complete": False}, indent=1))
        jobs = _jobs(records, dest, size, quality, max_pixels)
        todo = [j for j in jobs if not os.path.isfile(j[1])]
        totals = {"samples": 0, "resized": 0, "kept": 0, "bytes_in": 0, "bytes_out": 0}
        start = time.perf_counter()
        for counts in _run(todo, workers or default_workers(), progress, len(records) - sum(len(j[2]) for j in todo)):
            for k in totals:
                totals[k] += counts[k]
        summary = {**settings, "complete": True, "num_shards": len(jobs), "shards_written": len(todo),
                   "shards_skipped": len(jobs) - len(todo), "written": totals,
                   "seconds": round(time.perf_counter() - start, 2)}
        atomic_write_text(meta_path, json.dumps(summary, indent=1))
    return summary


def _run(jobs: Sequence[tuple], workers: int, progress: bool, done: int) -> Iterator[dict[str, int]]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=done + sum(len(j[2]) for j in jobs), initial=done, desc="packing", unit="sample",
                   file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
    n = min(workers, len(jobs))
    try:
        if n <= 1:
            results: Iterator[dict[str, int]] = map(pack_shard, jobs)
            for counts in results:
                if bar is not None:
                    bar.update(counts["samples"])
                yield counts
        else:
            with multiprocessing.get_context("fork").Pool(n) as pool:
                for counts in pool.imap_unordered(pack_shard, jobs, chunksize=1):
                    if bar is not None:
                        bar.update(counts["samples"])
                    yield counts
    finally:
        if bar is not None:
            bar.close()
