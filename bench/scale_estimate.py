"""Expected time and disk of the paper's pipeline at 2.9 M and 24 M pairs, from per-sample figures.

Measured here, when the script runs:
  - index build CPU time per sample: listing a synthetic BIOMEDICA-style shard's headers
    (`mmkd.data.tarscan`, 3 members a sample) plus `json.loads` of the authors' 8 real BIOMEDICA
    sample JSONs (tests/data/mmkd-reference; 21-45 kB each, as released);
  - index bytes per sample: an index built over synthetic shards, corrected for the length of
    real BIOMEDICA sample keys (the authors' 8 keys);
  - the JSON bytes an index build reads per sample (the real JSONs' mean size);
  - loader CPU per sample for a BIOMEDICA-size JPEG (1600 x 1200, ~1 MB) and for its copy packed by
    `mmkd data pack` (256 px): decode + training transform, decode + nine teachers' transforms
    (extraction), and the one-off cost of packing (`measure_loader_ms`).
Taken from measurements recorded in docs/PERFORMANCE.md (pass other values to replan):
  - --train-rate: stage-1 samples/s per GPU (NVIDIA H200, eager, run A: 941);
  - --stage2-ratio: stage-2 / stage-1 step time (H200 run B: 1.020);
  - --achieved-tflops: TFLOP/s a GPU sustains on these towers (H200 run A, full context:
    773 samples/s x 245 GFLOP = 189 TFLOP/s, 19 % MFU), used for the teachers' forward passes;
Exact by construction: the feature store's bytes per sample (9 teachers, float16 image and
text vectors of 768/512 dims, availability and score), a selection's (row + modality code).
Teacher forward FLOPs are counted from their architectures (ViT/BERT/CLIP-text encoders as
transformers; RN50 and Swin-T from their published GMACs), an estimate.

Each pass over the pairs (extraction, every epoch of each stage) takes the longest of: the GPU
time, the loader's CPU time on --loader-cores cores, and the time to read the shards at
--fs-gbps per node (the table names which one binds), once reading the originals and once the
packed shards. Packing is bound by its CPU time on --cores cores or by reading the originals once;
the index build by its CPU time on --cores cores or by reading every JSON once. The `cores:` lines
give the loader cores a node needs to keep its GPUs busy in training.

Usage: python bench/scale_estimate.py [--pairs 2900000,24000000] [--gpus 8] [--nodes 1,4]
       [--cores 16] [--epochs 20] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import REPO, transformer_flops  # noqa: E402

REFERENCE = REPO / "tests" / "data" / "mmkd-reference" / "MMKDCLIP_DATA"
BIOMEDICA_TB = 27.0  # the release's size on disk (BIOMEDICA paper), for 24 M pairs
DIMS = [768, 512, 512, 768, 512, 512, 512, 512, 512]  # BMCA-CLIP, BiomedCLIP, UniMed, PMC-CLIP, QuiltNet, GenMedCLIP, PLIP, PubMedCLIP, MedCLIP


def teacher_gflop_per_sample(caption_tokens: int = 128) -> dict[str, float]:
    """Forward GFLOP (2 per multiply-add) of each teacher for one 224-px image and one caption."""
    vit = {"L/14": transformer_flops(257, 1024, 24), "B/16": transformer_flops(197, 768, 12),
           "B/32": transformer_flops(50, 768, 12)}
    clip_text = {512: transformer_flops(77, 512, 12), 768: transformer_flops(77, 768, 12)}
    bert = transformer_flops(caption_tokens, 768, 12)
    g = 1e9
    return {"BMCA-CLIP (ViT-L/14)": (vit["L/14"] + clip_text[768]) / g,
            "BiomedCLIP (ViT-B/16 + PubMedBERT)": (vit["B/16"] + bert) / g,
            "UniMed-CLIP (ViT-B/16 + BiomedBERT)": (vit["B/16"] + bert) / g,
            "PMC-CLIP (RN50 + PubMedBERT)": (2 * 4.1e9 + bert) / g,
            "QuiltNet (ViT-B/32)": (vit["B/32"] + clip_text[512]) / g,
            "GenMedCLIP (ViT-B/16)": (vit["B/16"] + clip_text[512]) / g,
            "PLIP (ViT-B/32)": (vit["B/32"] + clip_text[512]) / g,
            "PubMedCLIP (ViT-B/32)": (vit["B/32"] + clip_text[512]) / g,
            "MedCLIP (Swin-T + Bio_ClinicalBERT)": (2 * 4.5e9 + bert) / g}


def measure_index(samples: int = 20_000) -> dict[str, float]:
    """CPU seconds per sample of an index build at real JSON sizes, and index bytes per sample."""
    from mmkd.data import tarscan
    from mmkd.data.index_build import ensure_index, resolve_source
    from mmkd.synth.biomedica import write_shards

    real = sorted(REFERENCE.rglob("*.json"))
    blobs = [p.read_bytes() for p in real]
    keys = [p.stem for p in real]
    reps = 50
    t0 = time.process_time()
    for _ in range(reps):
        for b in blobs:
            json.loads(b)
    json_s = (time.process_time() - t0) / (reps * len(blobs))
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["MMKD_CACHE"] = str(Path(tmp) / "cache")
        shards = write_shards(Path(tmp) / "d", samples, per_shard=samples // 2, flat=True)
        from mmkd.data.index import DEFAULT_SHARD_FIELDS, DERIVED_FIELDS
        from mmkd.data.index_scan import scan_shard

        fields = (*DEFAULT_SHARD_FIELDS, *DERIVED_FIELDS)
        t0 = time.process_time()
        arrays, meta = scan_shard(str(shards[0]), shards[0].name, fields)
        scan_s = (time.process_time() - t0) / meta["num_samples"]
        listing = tarscan.list_members(str(shards[0]))
        small = [Path(shards[0]).open("rb").read()[o:o + n] for o, n, name in
                 zip(listing.offsets, listing.sizes, listing.names) if name.endswith(".json")][:2000]
        t0 = time.process_time()
        for b in small:
            json.loads(b)
        small_json_s = (time.process_time() - t0) / len(small)
        index = ensure_index(resolve_source(str(Path(tmp) / "d"), "webdataset"), workers=1, progress=False)
        synth_key = statistics.mean(len(index.key(r)) for r in range(0, index.num_samples, 97))
        index_bytes = index.nbytes() / index.num_samples
    real_key = statistics.mean(len(k) for k in keys)
    return {"json_s": json_s, "scan_s": scan_s, "cpu_s_per_sample": scan_s - small_json_s + json_s,
            "json_bytes": statistics.mean(len(b) for b in blobs), "index_bytes": index_bytes + real_key - synth_key,
            "real_key_chars": real_key, "json_files": len(blobs)}


def measure_loader_ms(width: int = 1600, height: int = 1200, reps: int = 10) -> dict[str, float]:
    """CPU ms per sample (median of `reps`) of what the loaders do with one BIOMEDICA-size JPEG (~1 MB,
    stored at original resolution) and with its copy packed by `mmkd data pack` (256 px, quality 90):
    - train_*: decode + the student's training transform (RandomResizedCrop 224, scale 0.9-1, normalise);
    - extract_*: decode once + nine teachers' eval transforms (resize 224, centre crop, normalise);
    - pack: decoding (with Image.draft) + resizing + encoding the packed copy, once per sample."""
    import io

    import numpy as np
    from PIL import Image

    from mmkd.data.pack import resize_image
    from mmkd.data.pairs import decode_image
    from mmkd.models.student import build_transforms

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (height // 27, width // 27, 3), dtype=np.uint8))
    pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    pixels = pixels + rng.normal(0, 8, pixels.shape).astype(np.int16)  # figure-like structure plus noise, ~1 MB
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    original = buf.getvalue()
    packed = resize_image(original, 256, 90, 10 ** 9)
    assert packed is not None
    cfg = {"size": 224, "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    train_tf, eval_tf = build_transforms(cfg, "random-resized-crop", 0.9)

    def median_ms(fn) -> float:
        times = []
        for _ in range(reps):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return statistics.median(times) * 1e3

    def extract(data: bytes) -> None:
        img = decode_image(data, 10 ** 9)
        for _ in range(9):
            eval_tf(img)

    return {"original_bytes": len(original), "packed_bytes": len(packed),
            "train_originals": median_ms(lambda: train_tf(decode_image(original, 10 ** 9))),
            "train_packed": median_ms(lambda: train_tf(decode_image(packed, 10 ** 9))),
            "extract_originals": median_ms(lambda: extract(original)),
            "extract_packed": median_ms(lambda: extract(packed)),
            "pack": median_ms(lambda: resize_image(original, 256, 90, 10 ** 9))}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def human_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="2900000,24000000", help="training pairs, comma-separated")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--nodes", default="1,4", help="node counts to plan for, comma-separated")
    parser.add_argument("--cores", type=int, default=16, help="CPU cores per node (index build)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per stage (the paper: 20)")
    parser.add_argument("--train-rate", type=float, default=941.0, help="stage-1 samples/s per GPU")
    parser.add_argument("--stage2-ratio", type=float, default=1.020, help="stage-2 / stage-1 step time")
    parser.add_argument("--achieved-tflops", type=float, default=189.0, help="sustained TFLOP/s per GPU")
    parser.add_argument("--fs-gbps", type=float, default=1.0,
                        help="GB/s the shared filesystem gives one node (an assumption: measure yours)")
    parser.add_argument("--loader-cores", type=int, default=14, help="cores per node decoding images")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = parser.parse_args()

    m = measure_index()
    ms = measure_loader_ms()
    sample_bytes = BIOMEDICA_TB * 1e12 / 24_000_000  # image + JSON + caption, as released
    read_bytes = {"originals": sample_bytes, "packed": ms["packed_bytes"] + 200}  # + a caption
    teachers = teacher_gflop_per_sample()
    teacher_gflop = sum(teachers.values())
    store_bytes = sum(2 * 2 * d for d in DIMS) + len(DIMS) * 5 + m["real_key_chars"] + 4
    selection_bytes = 4 + 2
    print(f"measured: index build {m['cpu_s_per_sample'] * 1e6:.0f} us CPU/sample (a synthetic shard scanned in "
          f"{m['scan_s'] * 1e6:.0f} us/sample, its small JSONs' parse replaced by {m['json_s'] * 1e6:.0f} us for a real "
          f"{m['json_bytes'] / 1e3:.0f} kB BIOMEDICA JSON, mean of {m['json_files']}); index {m['index_bytes']:.0f} "
          f"B/sample (real keys: "
          f"{m['real_key_chars']:.0f} characters)")
    print(f"measured: CPU ms per sample, a 1600x1200 JPEG of {ms['original_bytes'] / 1e6:.2f} MB vs its packed 256-px "
          f"copy of {ms['packed_bytes'] / 1e3:.0f} kB: training transform {ms['train_originals']:.1f} vs "
          f"{ms['train_packed']:.1f}; extraction (decode + 9 teachers' transforms) {ms['extract_originals']:.1f} vs "
          f"{ms['extract_packed']:.1f}; packing (once) {ms['pack']:.1f}. A released sample is "
          f"{sample_bytes / 1e6:.2f} MB on disk (27 TB / 24 M)")
    print(f"exact: feature store {store_bytes / 1e3:.1f} kB/sample (9 teachers, ids included); selection "
          f"{selection_bytes} B/sample; teachers' forward {teacher_gflop:.0f} GFLOP/sample (estimate: "
          + ", ".join(f"{k.split(' ')[0]} {v:.0f}" for k, v in teachers.items()) + ")")
    for kind in ("originals", "packed"):
        need = args.train_rate * args.gpus * ms[f"train_{kind}"] / 1e3
        print(f"cores: training from {kind} needs {need:.0f} loader cores per node to feed {args.gpus} GPUs at "
              f"{args.train_rate:.0f} samples/s each ({ms[f'train_{kind}']:.1f} ms per sample)")
    nodes = [int(x) for x in args.nodes.split(",")]
    rows = []
    for n in (int(x) for x in args.pairs.split(",")):
        full = 24_000_000  # the index covers the whole download, whatever the selection
        disk = {"shards (the download)": BIOMEDICA_TB * 1e12, "index (all 24 M)": m["index_bytes"] * full,
                "packed shards": read_bytes["packed"] * n, "selection": selection_bytes * n,
                "feature store": store_bytes * n, "checkpoints (2 kept, with AdamW state)": 2 * 2.4e9}
        for kind in ("originals", "packed"):
            for k in nodes:
                g = args.gpus * k
                index_s = m["cpu_s_per_sample"] * full / (args.cores * k)
                index_io = m["json_bytes"] * full / (args.fs_gbps * 1e9 * k)
                read_s = n * read_bytes[kind] / (args.fs_gbps * 1e9 * k)

                # each pass over the pairs is bound by the GPUs, by the loader's CPU, or by reading the shards
                def bound(gpu: float, cpu_ms: float) -> tuple[float, str]:
                    cpu_s = n * cpu_ms / 1e3 / (args.loader_cores * k)
                    return max((gpu, "GPU"), (cpu_s, "decode"), (read_s, "read"))

                pack_s = (0.0, "-") if kind == "originals" else max(
                    (n * ms["pack"] / 1e3 / (args.cores * k), "CPU"),
                    (n * sample_bytes / (args.fs_gbps * 1e9 * k), "read"))
                e = bound(n * teacher_gflop * 1e9 / (args.achieved_tflops * 1e12 * g), ms[f"extract_{kind}"])
                s1 = bound(n / (args.train_rate * g), ms[f"train_{kind}"])
                s2 = bound(n / (args.train_rate * g) * args.stage2_ratio, ms[f"train_{kind}"])
                rows.append((n, kind, k, g, (max(index_s, index_io), "read" if index_io > index_s else "CPU"), pack_s,
                             e, (s1[0] * args.epochs, s1[1]), (s2[0] * args.epochs, s2[1])))
        print(f"\n{n:,} pairs: disk " + "; ".join(f"{k} {human_bytes(v)}" for k, v in disk.items()))
        print(f"{n:,} pairs: GPU-bound, stage 1 would take "
              f"{human_time(n / (args.train_rate * args.gpus * nodes[0]) * args.epochs)} on {nodes[0]} node(s)")
    header = ("pairs", "data", "nodes", "GPUs", "index build (once)", "pack (once)", "extract (9 teachers)",
              "stage 1", "stage 2")

    def cell(t: float, w: str) -> str:
        return "-" if w == "-" else f"{human_time(t)} ({w})"

    if args.markdown:
        print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for n, kind, k, g, *times in rows:
            print(f"| {n / 1e6:.1f} M | {kind} | {k} | {g} | " + " | ".join(cell(t, w) for t, w in times) + " |")
    else:
        print()
        for n, kind, k, g, *times in rows:
            print(f"{n / 1e6:5.1f} M pairs, {kind:<9}, {k} node(s), {g:3d} GPUs: " + ", ".join(
                f"{name} {cell(t, w)}" for name, (t, w) in zip(header[4:], times)))

if __name__ == "__main__":
    main()
