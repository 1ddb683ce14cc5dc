"""Synthetic BIOMEDICA-style webdataset shards, written fast, for tests and the index benchmark.

The layout and per-sample JSON follow BIOMEDICA's release (see docs/SCALING.md): licence
subsets as folders (`commercial/`, `noncommercial/`, `other/`) of `NNNNNN.tar` shards; per
sample `<key>.jpg`, `<key>.txt` (the caption) and `<key>.json` with the label fields
(`image_primary_label`, `image_secondary_label` lists, panel type/subtype, the cluster id
`image_label_id`) and article fields (`article_accession_id`, `article_license`, ...). Keys look
like BIOMEDICA's `filelist_<subset>_batch_<i>_<j>-PMC<id>-<figure>-<stem>`. Labels are drawn
per sample from a fixed table of clusters whose label combinations are real BIOMEDICA ones.

Headers are written by hand (ustar, checksummed) so a million samples take about a minute; the
image member is a few fixed bytes unless `image_bytes` is given (e.g. a real tiny JPEG).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# (primary labels, secondary labels, panel type, panel subtype): combinations seen in BIOMEDICA's
# cluster annotations (annotations/cluster_labels.json of the BIOMEDICA ETL).
CLUSTERS = [
    (["Clinical Imaging"], ["computerized tomography"], "single", "single panel"),
    (["Clinical Imaging"], ["computerized tomography"], "multiple", "multiple panels: images"),
    (["Clinical Imaging"], ["x-ray radiography"], "single", "single panel"),
    (["Clinical Imaging"], ["magnetic resonance"], "multiple", "multiple panels: images"),
    (["Clinical Imaging"], ["ultrasound"], "single", "single panel"),
    (["Clinical Imaging"], ["endoscopy"], "multiple", "multiple panels: images"),
    (["Clinical Imaging"], ["surgical procedure"], "multiple", "multiple panels: images"),
    (["Clinical Imaging"], ["skin lesion"], "single", "single panel"),
    (["Clinical Imaging"], ["optical coherence tomography"], "multiple", "multiple panels: images"),
    (["Clinical Imaging"], ["angiography"], "single", "single panel"),
    (["Clinical Imaging"], ["intraoral imaging"], "multiple", "multiple panels: images"),
    (["Clinical Imaging"], ["clinical imaging", "plot"], "multiple", "multiple panels: images & plots"),
    (["Microscopy"], ["light microscopy", "immunohistochemistry"], "multiple", "multiple panels: images"),
    (["Microscopy"], ["fluorescence microscopy"], "multiple", "multiple panels: images"),
    (["Microscopy"], ["electron microscopy"], "single", "single panel"),
    (["Microscopy"], ["confocal microscopy"], "multiple", "multiple panels: images"),
    (["Microscopy", "Plots and Charts"], ["microscopy", "bar plot"], "multiple", "multiple panels: images & plots"),
    (["Plots and Charts"], ["bar plot"], "single", "single panel"),
    (["Plots and Charts"], ["line plot", "scatter plot"], "multiple", "multiple panels: images & plots"),
    (["Illustrative Diagrams"], ["diagram"], "single", "single panel"),
    (["Chemical Structures"], ["chemical structure"], "single", "single panel"),
    (["Immuno Assays"], ["immunoblot", "gel electrophoresis"], "multiple", "multiple panels: images & assays"),
    (["Tables"], ["table"], "single", "single panel"),
]
LICENSES = {"commercial": ["CC BY", "CC0", "CC BY-SA", "CC BY-ND"],
            "noncommercial": ["CC BY-NC", "CC BY-NC-SA", "CC BY-NC-ND"],
            "other": ["NO-CC CODE", ""]}
FAKE_JPEG = b"\xff\xd8\xff\xe0" + bytes(60) + b"\xff\xd9"  # tiny stand-in: indexing never decodes it


def _header(name: bytes, size: int) -> bytes:
    """A ustar header of a regular file (names up to 100 bytes)."""
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"14577334400\0"
    h[148:156] = b" " * 8
    h[156] = 0x30
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _member(name: str, data: bytes) -> bytes:
    pad = (-len(data)) % 512
    return _header(name.encode(), len(data)) + data + bytes(pad)


def sample_metadata(rng: np.random.Generator, subset: str, cluster: int) -> dict:
    primary, secondary, panel, subtype = CLUSTERS[cluster]
    licenses = LICENSES[subset]
    return {"image_file_name": "fig.jpg", "image_label_id": str(cluster), "image_panel_type": panel,
            "image_panel_subtype": subtype, "image_primary_label": primary, "image_secondary_label": secondary,
            "image_size": [int(rng.integers(100, 2000)), int(rng.integers(100, 2000))],
            "article_accession_id": f"PMC{int(rng.integers(1_000_000, 9_999_999))}",
            "article_license": licenses[int(rng.integers(len(licenses)))]}


def write_shards(root: str | Path, num_samples: int, per_shard: int = 10_000,
                 subsets: tuple[str, ...] = ("commercial", "noncommercial", "other"), seed: int = 0,
                 image_bytes: bytes | None = None, json_pad: int = 0, flat: bool = False) -> list[Path]:
    """Write `num_samples` samples as shards of `per_shard` under root/<subset>/NNNNNN.tar (or all
    in root when `flat`), samples spread over the subsets in turn; returns the shard paths.
    `json_pad` adds that many characters of article text to each JSON (real ones hold 14-136 kB)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    image = image_bytes if image_bytes is not None else FAKE_JPEG
    pad_text = ("lorem ipsum " * (json_pad // 12 + 1))[:json_pad]
    shards: list[Path] = []
    counters = {s: 0 for s in subsets}
    num_shards = -(-num_samples // per_shard)
    for k in range(num_shards):
        subset = subsets[k % len(subsets)]
        folder = root if flat else root / subset
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{counters[subset]:06d}.tar" if not flat else folder / f"{k:06d}.tar"
        counters[subset] += 1
        path.write_bytes(b"")
        n = min(per_shard, num_samples - k * per_shard)
        clusters = rng.integers(0, len(CLUSTERS), n)
        chunks: list[bytes] = []
        for i in range(n):
            key = f"filelist_{subset}_batch_{k}_{i // 100}-PMC{k * per_shard + i:07d}-{i % 7}-fig{i}_HTML"
            meta = sample_metadata(rng, subset, int(clusters[i]))
            if pad_text:
                meta["article_text"] = pad_text
            caption = f"Figure {i % 7 + 1}: {meta['image_secondary_label'][0]} of case {k}-{i}."
            chunks.append(_member(f"{key}.jpg", image))
            chunks.append(_member(f"{key}.json", json.dumps(meta).encode()))
            chunks.append(_member(f"{key}.txt", caption.encode()))
            if len(chunks) >= 3000:
                _append(path, chunks)
        chunks.append(bytes(1024))  # end-of-archive blocks
        _append(path, chunks)
        shards.append(path)
    return shards


def _append(path: Path, chunks: list[bytes]) -> None:
    with open(path, "ab") as f:
        f.write(b"".join(chunks))
    chunks.clear()
