"""Test data made on the fly: tiny image-text pair sets whose captions describe the image."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ("square", "disc")


def draw(color: str, shape: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    img = (rng.integers(0, 40, (size, size, 3))).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
    r = size // 5
    mask = (abs(xx - cx) < r) & (abs(yy - cy) < r) if shape == "square" else (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
    img[mask] = COLORS[color]
    return img


def make_pairs(root: Path, n: int = 64, seed: int = 0, size: int = 32, fmt: str = "csv",
               name: str = "pairs") -> Path:
    """Write n pairs (PNG files + a CSV/JSONL table) under root; returns the table path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        color, shape = list(COLORS)[i % len(COLORS)], SHAPES[(i // len(COLORS)) % len(SHAPES)]
        Image.fromarray(draw(color, shape, rng, size)).save(root / "img" / f"{i:05d}.png")
        rows.append({"image": f"img/{i:05d}.png", "caption": f"a {color} {shape}", "sample_id": f"s{i:05d}",
                     "modality": "toy"})
    path = root / f"{name}.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_store(table: Path, store: Path, dims=(24, 40), seed: int = 0, names=("t0", "t1")) -> Path:
    """A finished feature store for `table` written through the real writer: two 'teachers' whose
    features are class prototypes plus noise; t0 teaches red/green samples only."""
    from mmkd.data.feature_store import FeatureStoreWriter, TeacherEntry
    from mmkd.data.pairs import index_source

    records, _ = index_source(str(table))
    classes = [f"a {c} {s}" for c in COLORS for s in SHAPES]
    rng = np.random.default_rng(seed)
    entries = [TeacherEntry(n, d, provenance={"weights": {"w": f"{n}-{d}"}}) for n, d in zip(names, dims)]
    writer = FeatureStoreWriter.open(store, [r.sample_id for r in records], entries, chunk_rows=16)
    labels = np.array([classes.index(r.caption) for r in records])
    for k, (entry, d) in enumerate(zip(entries, dims)):
        protos = rng.normal(size=(len(classes), d))
        img = protos[labels] + 0.3 * rng.normal(size=(len(records), d))
        txt = protos[labels] + 0.1 * rng.normal(size=(len(records), d))
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        avail = np.array([("red" in r.caption or "green" in r.caption) if k == 0 else True for r in records])
        for c in range(writer.num_chunks):
            a, b = writer.chunk_bounds(c)
            writer.write_chunk(c, entry.name, {"image": img[a:b], "text": txt[a:b], "available": avail[a:b],
                                               "score": np.ones(b - a, np.float32)})
    writer.finalize()
    return store


def assert_same_store(path: Path, ref_path: Path, kinds=("image", "text", "available", "score"),
                      check_summary: bool = False) -> None:
    """Two feature stores hold the same arrays, chunk records and checksums."""
    from mmkd.data.feature_store import FeatureStore

    store, ref = FeatureStore(path), FeatureStore(ref_path)
    assert store.teachers == ref.teachers and store.sample_ids == ref.sample_ids
    for name in ref.teachers:
        for kind in kinds:
            np.testing.assert_array_equal(store.array(name, kind), ref.array(name, kind), err_msg=f"{name}/{kind}")
    assert store.manifest["chunks"] == ref.manifest["chunks"]
    if check_summary:
        assert store.manifest["summary"] == ref.manifest["summary"]
    assert store.verify() == []


def writable_array(store: Path, teacher: str, kind: str):
    """A teacher's array of a store, mapped for writing (where the manifest says it lives), to
    damage it on purpose."""
    from mmkd.data.feature_store import _open_array
    from mmkd.utils.io import read_json

    entry = next(t for t in read_json(Path(store) / "manifest.json")["teachers"] if t["name"] == teacher)
    return _open_array(Path(store), entry["arrays"][kind], "r+", {})


COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (20, 40, 210)}


def save_noisy_colour(path: Path, name: str, rng: np.random.Generator, noise: float, size: int = 32) -> Path:
    """A PNG of one of COLOURS with Gaussian pixel noise (evaluation sets the tests write)."""
    from PIL import Image

    arr = np.clip(np.array(COLOURS[name]) + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def write_originals(root: Path, shards: dict[str, int], seed: int = 0) -> Path:
    """Shards root/<subset>/<NNNNNN>.tar, each holding `n` samples: a 320 x 240 JPEG of a coloured shape
    (drawn at 40 x 40 and stretched, so a downscaled copy keeps the picture), a .txt caption and a .json
    with BIOMEDICA's licence and label fields."""
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(seed)
    i = 0
    for rel, n in shards.items():
        path = root / f"{rel}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tf:
            for _ in range(n):
                color, shape = list(COLORS)[i % len(COLORS)], SHAPES[(i // len(COLORS)) % len(SHAPES)]
                small = Image.fromarray(draw(color, shape, rng, 40)).resize((320, 240), Image.BILINEAR)
                buf = io.BytesIO()
                small.save(buf, format="JPEG", quality=95)
                key = f"filelist_{rel.split('/')[0]}_batch_{i}-PMC{1000 + i}-0-fig{i}"
                meta = {"article_license": "CC BY", "image_secondary_label": [shape], "image_size": [320, 240]}
                for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", f"a {color} {shape}".encode()),
                                   (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                i += 1
    return root


def write_unit_store(store: Path, sample_ids: list[str], dims: dict[str, int], available_NT: np.ndarray,
                     rng: np.random.Generator, latent_dim: int, alignment_seed: int) -> dict[str, dict[str, np.ndarray]]:
    """A one-chunk feature store written through the real writer: per teacher (in order) random unit-norm image
    then text features drawn from `rng`, stored as float16, with the availability given; plus a randomly
    initialised alignment autoencoder into `latent_dim` (torch seed `alignment_seed`). Returns the features as
    stored, {teacher: {"image": [N, D], "text": [N, D]}}."""
    import torch

    from mmkd.data.feature_store import FeatureStore, FeatureStoreWriter, TeacherEntry
    from mmkd.models.alignment import WEIGHTS_FILE, AlignmentAE, save_alignment

    n = len(sample_ids)
    entries = [TeacherEntry(t, d, provenance={"weights": {"w": t}}) for t, d in dims.items()]
    writer = FeatureStoreWriter.open(store, sample_ids, entries, chunk_rows=n)
    raw = {}
    for j, (t, d) in enumerate(dims.items()):
        feats = {k: rng.normal(size=(n, d)) for k in ("image", "text")}
        raw[t] = {k: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16) for k, v in feats.items()}
        writer.write_chunk(0, t, {**raw[t], "available": available_NT[:, j], "score": np.ones(n, np.float32)})
    writer.finalize()
    torch.manual_seed(alignment_seed)
    save_alignment(AlignmentAE(dims, latent_dim), store / WEIGHTS_FILE, FeatureStore(store), {})
    return raw


def pairs_with_unit_store(root: Path, n: int, dims: dict[str, int], available_NT: np.ndarray,
                          rng: np.random.Generator, latent_dim: int, alignment_seed: int):
    """`make_pairs(root / "data", n)` indexed, and `write_unit_store` of its samples at root / "store":
    (table path, records, the features as stored)."""
    from mmkd.data.pairs import index_source

    table = make_pairs(root / "data", n=n)
    records, _ = index_source(str(table))
    raw = write_unit_store(root / "store", [r.sample_id for r in records], dims, available_NT, rng, latent_dim,
                           alignment_seed)
    return table, records, raw


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a torchrun rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
