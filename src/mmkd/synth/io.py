"""Writing corpora: deterministic PNGs, CSV/JSONL tables, webdataset shards and dataset catalogs.

Shared by `mmkd synth` (synthetic corpus) and `real_corpus` (the shipped real-mini sets).
Everything written here is byte-for-byte reproducible: PNGs carry no timestamps, tar members
have fixed owner and mtime, CSV rows keep their given order with '\\n' line ends.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mmkd.utils.io import atomic_path, atomic_write_text


def png_bytes(image_HW3: np.ndarray) -> bytes:
    """PNG of a uint8 [H, W, 3] image; saved as greyscale when the three channels are equal."""
    from PIL import Image

    arr = np.asarray(image_HW3, np.uint8)
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def save_png(path: str | os.PathLike, image_HW3: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(png_bytes(image_HW3))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3] pixels of an image file (greyscale PNGs come back as three equal channels)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A CSV with exactly `columns`, in row order, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in rows))


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def write_shards(shard_dir: str | os.PathLike, samples: Sequence[dict[str, Any]], root: str | os.PathLike,
                 samples_per_shard: int = 1000) -> list[Path]:
    """Webdataset shards `shard-000000.tar`, ... of the samples (dicts with image (path relative to
    `root`), caption, sample_id, and any other keys, which go into the member `<sample_id>.json`).

    Members per sample: `<sample_id>.<png|jpg>` (the image file's bytes), `<sample_id>.txt` (the
    caption), `<sample_id>.json`. Sample ids must not contain dots (webdataset splits keys at the
    first dot).
    """
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(samples), samples_per_shard):
        path = shard_dir / f"shard-{start // samples_per_shard:06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for s in samples[start:start + samples_per_shard]:
                key = s["sample_id"]
                if "." in key or "/" in key:
                    raise ValueError(f"sample id {key!r} contains '.' or '/', which webdataset keys cannot hold")
                image_path = Path(root) / s["image"]
                ext = image_path.suffix.lower().lstrip(".")
                _tar_add(tf, f"{key}.{ext}", image_path.read_bytes())
                _tar_add(tf, f"{key}.txt", s["caption"].encode("utf-8"))
                meta = {k: v for k, v in s.items() if k not in ("image", "caption")}
                _tar_add(tf, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
        paths.append(path)
    return paths


def write_catalog(path: str | os.PathLike, datasets: dict[str, dict[str, Any]], header: str = "") -> None:
    """A dataset catalog for `mmkd eval`: `datasets: {name: {tasks, format, path, ...}}` (paths relative to it)."""
    import yaml

    text = yaml.safe_dump({"datasets": datasets}, sort_keys=False, default_flow_style=None, width=120)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    atomic_write_text(path, comment + text)


_PATH_KEYS = ("path", "templates", "classnames")


def merge_catalogs(out_path: str | os.PathLike, catalog_paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Write one catalog holding the datasets of several, with relative paths rebased onto `out_path`'s folder.

    Dataset names must be unique across the inputs. Returns the merged `datasets` mapping.
    """
    import yaml

    out_dir = Path(out_path).resolve().parent
    merged: dict[str, Any] = {}
    for cat in catalog_paths:
        cat_dir = Path(cat).resolve().parent
        for name, entry in (yaml.safe_load(Path(cat).read_text()) or {}).get("datasets", {}).items():
            if name in merged:
                raise ValueError(f"dataset {name!r} appears in more than one catalog ({cat})")
            entry = dict(entry)

            def rebase(p: str) -> str:
                return p if os.path.isabs(p) else os.path.relpath(cat_dir / p, out_dir)

            for key in _PATH_KEYS:
                value = entry.get(key)
                if isinstance(value, str) and (key == "path" or value.endswith((".txt", ".yaml", ".json"))):
                    entry[key] = rebase(value)
            if isinstance(entry.get("split"), dict):
                entry["split"] = {k: rebase(v) for k, v in entry["split"].items()}
            merged[name] = entry
    write_catalog(out_path, merged, header="merged by mmkd.synth.io.merge_catalogs")
    return merged
