"""Teacher extraction with the paper's nine teachers at their real sizes: images/s and bf16 vs fp32.

(Not named bench_*.py: `make bench` would write 10 GB of full-size teachers on every CPU run.)

The nine teachers are written in their published formats with random weights
(`mmkd.teachers.paper_inputs.write_paper_inputs`, as `make paper-dry-run` does; `--inputs DIR`
reuses a folder written before) and loaded through `load_teacher` exactly as `mmkd extract`
loads them. For each teacher, one at a time (memory stays at the largest one):

- images/s: one batch of `--batch` images (random pixels at the teacher's own input size) and
  their captions (10-60 biomedical words), `encode_image` + `encode_text` as `mmkd extract` calls
  them, in the precision it would use (bf16 autocast on CUDA, fp32 on CPU; `--precision`), the
  median of `--repeats` timed batches after one warm-up batch;
- the cosine between its bf16-autocast and fp32 features of the same batch (min over rows, image
  and text): the measured check behind `mmkd extract --precision bf16` (tolerance
  BF16_COSINE_TOLERANCE, the value `tests/test_extract.py` asserts on tiny teachers).

The all-nine rate is 1 / (sum over teachers of seconds per image): every image goes through every
teacher. Decoding is not timed here (it runs in the loader's workers; `bench_data_wait.py`).
Device time is measured with CUDA synchronisation; peak memory per teacher on CUDA.

Usage: python bench/gpu_extract.py (or python bench/bench_gpu.py --stage extract) [--batch N] [--repeats 5] [--inputs DIR] [--precision auto|fp32|bf16]
Prints one line per teacher and `FIGURE gpu_extract_all_teachers_images_per_s: <rate>`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _common import median, print_header, set_threads, synthetic_captions

BF16_COSINE_TOLERANCE = 0.99


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def encode(teacher, pixels: torch.Tensor, captions: list[str], precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mmkd.teachers.extract import teacher_precision

    with teacher_precision(teacher, precision):
        return teacher.encode_image(pixels).float(), teacher.encode_text(captions).float()


def measure(teacher, pixels: torch.Tensor, captions: list[str], precision: str, repeats: int,
            device: torch.device) -> dict[str, float]:
    """images/s in `precision`, and the bf16-vs-fp32 cosine of the same batch."""
    encode(teacher, pixels, captions, precision)  # warm-up (kernels, autotuning, caches)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        encode(teacher, pixels, captions, precision)
        _sync(device)
        times.append(time.perf_counter() - t0)
    img32, txt32 = encode(teacher, pixels, captions, "fp32")
    img16, txt16 = encode(teacher, pixels, captions, "bf16")
    cosine = min(float(F.cosine_similarity(img16, img32, dim=-1).min()),
                 float(F.cosine_similarity(txt16, txt32, dim=-1).min()))
    return {"images_per_s": pixels.shape[0] / median(times), "bf16_cosine_min": cosine}


def input_size(teacher) -> int:
    """The teacher's square input size, from its own preprocessing of a blank image."""
    from PIL import Image

    return int(teacher.preprocess(Image.new("RGB", (300, 300))).shape[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=0, help="images per batch (default: 256 on CUDA, 4 on CPU)")
    parser.add_argument("--repeats", type=int, default=0, help="timed batches per teacher (default: 5 CUDA, 1 CPU)")
    parser.add_argument("--inputs", default="", help="a folder written by write_paper_inputs (default: a new one)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="timed precision (default: auto = bf16 on CUDA, fp32 on CPU, as mmkd extract)")
    parser.add_argument("--only", default="", help="comma-separated teacher names (default: all nine)")
    args = parser.parse_args(argv)
    set_threads()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.batch = args.batch or (256 if cuda else 4)
    args.repeats = args.repeats or (5 if cuda else 1)
    precision = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    print_header("teacher extraction, the nine teachers at real size")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.inputs) if args.inputs else Path(tmp)
        # BiomedCLIP's open_clip_config.json names BiomedBERT by hub id: found in the written cache, offline.
        # Set before transformers / huggingface_hub are imported (they read it once).
        os.environ.update(HF_HUB_CACHE=str(root / "hf-cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if not (root / "teachers").is_dir():
            from mmkd.teachers.paper_inputs import write_paper_inputs

            write_paper_inputs(root, log=lambda msg: None)
        run(root / "teachers", args, device, precision)


def run(teachers_dir: Path, args, device: torch.device, precision: str) -> None:
    from mmkd.teachers import load_teacher
    from mmkd.teachers.recipes import RECIPES

    where = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"device: {where}; batch {args.batch}; timed precision {precision}; {args.repeats} timed batch(es)")
    captions = synthetic_captions(args.batch, np.random.default_rng(0), 10, 60)
    wanted = [n.strip() for n in args.only.split(",") if n.strip()] or list(RECIPES)
    seconds_per_image, worst = 0.0, 1.0
    for name in wanted:
        recipe = RECIPES[name]
        teacher = load_teacher(recipe.spec(teachers_dir), device=str(device), name=name)
        size = input_size(teacher)
        pixels = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = measure(teacher, pixels, captions, precision, args.repeats, device)
        mem = f", max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
        ok = "within" if r["bf16_cosine_min"] >= BF16_COSINE_TOLERANCE else "BELOW"
        print(f"{name:<12} {size} px, {teacher.embed_dim}-d: {r['images_per_s']:9.1f} images/s; bf16 vs fp32 cosine "
              f"min {r['bf16_cosine_min']:.5f} ({ok} the tolerance {BF16_COSINE_TOLERANCE}){mem}")
        print(f"FIGURE gpu_extract_{name.lower().replace('-', '_')}_images_per_s: {r['images_per_s']:.1f}")
        seconds_per_image += 1.0 / r["images_per_s"]
        worst = min(worst, r["bf16_cosine_min"])
        del teacher, pixels
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"all {len(wanted)} teachers: {1.0 / seconds_per_image:.1f} images/s through every teacher ({where}); "
          f"lowest bf16 vs fp32 cosine {worst:.5f}")
    print(f"FIGURE gpu_extract_all_teachers_images_per_s: {1.0 / seconds_per_image:.1f}")
    print(f"FIGURE gpu_extract_bf16_cosine_min: {worst:.5f}")


if __name__ == "__main__":
    main()
