"""Parity and speed against CLIP_benchmark (LAION-AI/CLIP_benchmark, the PyPI package `clip_benchmark`).

CLIP_benchmark runs in its own virtual environment (default .venv-clipbench in the repository, which `make bench`
creates: `make clipbench` installs clip_benchmark==1.6.2 with torch==2.14.1 torchvision==0.29.1 requests
'numpy<2.4'; another one with MMKD_CLIPBENCH_PYTHON=PATH/bin/python); it is not a test dependency. Without it,
or with another CLIP_benchmark version, the benchmark cannot run: it says why and exits 2, and `make bench`
fails. clip_benchmark 1.6.2 also needs
`requests` (imported, not declared) and numpy < 2.4 (its accuracy() converts a 1-element array
with float(), which numpy 2.4 refuses).

Same model (an open_clip architecture with seeded random weights, saved as one safetensors file
both load), same data (the same PNG bytes, written as CLIP_benchmark's WebDataset layout and as
mmkd's list layout) and same `{c}` templates:
1. zero-shot predictions of every image: CLIP_benchmark's own `zero_shot_classifier` +
   `run_classification` (amp off) against mmkd's encoders and prompt ensemble;
2. retrieval recall@1/5/10 of both command lines on captions whose scores have no ties;
3. wall time of one `mmkd eval` command over every dataset (the model is loaded once) against
   the CLIP_benchmark command lines for the same datasets (it loads the model per dataset).

Usage: python bench/bench_clip_benchmark.py [--arch ViT-S-32] [--images 48]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_info  # noqa: E402

DEFAULT_PYTHON = str(HERE.parent / ".venv-clipbench" / "bin" / "python")
CLIP_BENCHMARK_VERSION = "1.6.2"  # the version compared; the Makefile's `clipbench` installs it
DATASETS = {  # name -> class names (label order)
    "shapes2": ["round blob", "square block"],
    "tissue4": ["adipose tissue", "lymphocytes", "mucus", "tumour epithelium"],
    "organs6": ["liver", "spleen", "kidney", "heart", "lung", "bladder"],
}
TEMPLATES = ["a photo of {c}.", "a medical image showing {c}", "{c}"]

CLIPBENCH_PREDICT = r'''
import json, sys, torch
from clip_benchmark.models import load_clip
from clip_benchmark.datasets.builder import build_dataset
from clip_benchmark.metrics.zeroshot_classification import zero_shot_classifier, run_classification
arch, weights, root, names, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5]
model, transform, tokenizer = load_clip(model_type="open_clip", model_name=arch, pretrained=weights, cache_dir=None,
                                        device="cpu")
model.eval()
result = {}
for name in names:
    ds = build_dataset(f"wds/{name}", root=f"{root}/{name}", transform=transform, split="test",
                       task="zeroshot_classification")
    loader = torch.utils.data.DataLoader(ds.batched(32), batch_size=None, shuffle=False, num_workers=0)
    clf = zero_shot_classifier(model, tokenizer, ds.classes, ds.templates, "cpu", amp=False)
    logits, target = run_classification(model, clf, loader, "cpu", amp=False)
    result[name] = {"logits": logits.tolist(), "target": target.tolist()}
json.dump(result, open(out, "w"))
'''



def _fmt(value) -> str:
    """A metric, or what stands for none (CLIP_benchmark's NaN, mmkd's null below 5 classes)."""
    return "n/a" if value is None or value != value else f"{value:.4f}"

def _image(rng: np.random.Generator, label: int, size: int = 64) -> bytes:
    from PIL import Image

    arr = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    c = (np.array([label * 53 % 255, label * 97 % 255, 255 - label * 41 % 255]) * 0.9).astype(np.uint8)
    half = size // 2
    lo, hi = rng.integers(4, half - 4), rng.integers(half + 4, size - 4)
    arr[lo:hi, lo:hi] = c
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_data(root: Path, num_images: int) -> Path:
    """Both layouts of every dataset; returns the mmkd catalog."""
    rng = np.random.default_rng(0)
    lines = ["datasets:"]
    for name, classes in DATASETS.items():
        mm, wds = root / "mmkd" / name, root / "wds" / name
        (mm / "test").mkdir(parents=True)
        (wds / "test").mkdir(parents=True)
        labels = [i % len(classes) for i in range(num_images)]
        with tarfile.open(wds / "test" / "0.tar", "w") as tar:
            for i, label in enumerate(labels):
                png = _image(rng, label)
                (mm / "test" / f"{i:05d}.png").write_bytes(png)
                _tar_add(tar, f"{i:05d}.png", png)
                _tar_add(tar, f"{i:05d}.cls", str(label).encode())
        (mm / "test.txt").write_text("".join(f"{i:05d}.png {label}\n" for i, label in enumerate(labels)))
        (wds / "test" / "nshards.txt").write_text("1")
        (wds / "classnames.txt").write_text("\n".join(classes) + "\n")
        (wds / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
        lines += [f"  {name}:", "    tasks: [zero-shot]", "    format: txt", f"    path: mmkd/{name}",
                  f"    classnames: {json.dumps(classes)}", f"    templates: {json.dumps(TEMPLATES)}"]
    # retrieval: two distinct captions per image
    mm, wds = root / "mmkd" / "captions", root / "wds" / "captions"
    (mm / "test").mkdir(parents=True)
    (wds / "test").mkdir(parents=True)
    words = "axial chest lesion nodule effusion liver biopsy stained tumour margin cyst fundus retina polyp".split()
    rows = ["image,caption"]
    with tarfile.open(wds / "test" / "0.tar", "w") as tar:
        for i in range(num_images):
            png = _image(rng, i % 7)
            caps = [" ".join(rng.choice(words, 6)) + f" case {i} view {v}" for v in (1, 2)]
            (mm / "test" / f"{i:05d}.png").write_bytes(png)
            rows += [f"test/{i:05d}.png,{c}" for c in caps]
            _tar_add(tar, f"{i:05d}.png", png)
            _tar_add(tar, f"{i:05d}.txt", "\n".join(caps).encode())
    (mm / "captions.csv").write_text("\n".join(rows) + "\n")
    (wds / "test" / "nshards.txt").write_text("1")
    (wds / "dataset_type.txt").write_text("retrieval")
    lines += ["  captions:", "    tasks: [retrieval]", "    format: csv", "    path: mmkd/captions/captions.csv"]
    (root / "catalog.yaml").write_text("\n".join(lines) + "\n")
    return root / "catalog.yaml"


def write_weights(arch: str, path: Path) -> None:
    import open_clip
    import torch

    from mmkd.utils.io import atomic_save_safetensors

    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    atomic_save_safetensors(path, {k: v.contiguous() for k, v in model.state_dict().items()})


def timed(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc


def mmkd_predictions(spec: str, catalog: Path) -> tuple[dict, dict]:
    """Per-image zero-shot predictions and retrieval score matrix with mmkd's own encoders."""
    from mmkd import load_model
    from mmkd.evaluation.datasets import load_captions, load_classification
    from mmkd.evaluation.runner import FeatureCache, load_catalog
    from mmkd.evaluation.prompts import class_embeddings

    model = load_model(spec)
    cache = FeatureCache(None, batch_size=32)
    preds, sims = {}, {}
    for entry in load_catalog(catalog):
        if "zero-shot" in entry.tasks:
            data = load_classification(entry)
            feats = cache.image_features(model, entry.name, "test", data.splits["test"].images)
            logits = 100.0 * feats @ class_embeddings(model, data.classnames, entry.templates).T  # CLIP_benchmark's scale
            preds[entry.name] = {"logits": logits.tolist(), "target": data.splits["test"].labels.tolist()}
        else:
            _, caps = load_captions(entry)
            img = cache.image_features(model, entry.name, "test", caps.images)
            txt = cache.text_features(model, entry.name, "test", caps.captions)
            sims[entry.name] = (img @ txt.T).numpy()
    return preds, sims


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-S-32", help="open_clip architecture (random weights, seed 0)")
    parser.add_argument("--images", type=int, default=48, help="images per dataset")
    args = parser.parse_args()
    cb_python = os.environ.get("MMKD_CLIPBENCH_PYTHON", DEFAULT_PYTHON)
    if not Path(cb_python).is_file():
        print(f"CANNOT RUN: no CLIP_benchmark environment at {cb_python}; `make clipbench` creates it "
              f"(or set MMKD_CLIPBENCH_PYTHON)")
        return 2
    cb_version = subprocess.run([cb_python, "-c", "import importlib.metadata as m; print(m.version('clip_benchmark'))"],
                                capture_output=True, text=True).stdout.strip()
    if cb_version != CLIP_BENCHMARK_VERSION:
        print(f"CANNOT RUN: {cb_python} has clip_benchmark {cb_version or '(none)'}, not the compared "
              f"{CLIP_BENCHMARK_VERSION}; rerun `make clipbench`")
        return 2
    info = machine_info()
    print(f"# CLIP_benchmark {cb_version} vs mmkd; {args.arch} (random weights), {args.images} images per dataset")
    print(f"# machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, gpu {info['gpu']}")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        catalog = write_data(root, args.images)
        weights = root / "weights.safetensors"
        write_weights(args.arch, weights)
        names = list(DATASETS)

        cb_bin = str(Path(cb_python).parent / "clip_benchmark")
        common = ["--dataset_root", f"{root}/wds/{{dataset_cleaned}}", "--model", args.arch, "--pretrained", str(weights),
                  "--no_amp", "--batch_size", "32", "--num_workers", "0", "--output", f"{root}/cb/{{dataset}}_{{task}}.json"]
        (root / "cb").mkdir()
        t_cb_cls, _ = timed([cb_bin, "eval", "--dataset", *[f"wds/{n}" for n in names], "--task",
                             "zeroshot_classification", *common], env)
        t_cb_ret, _ = timed([cb_bin, "eval", "--dataset", "wds/captions", "--task", "zeroshot_retrieval",
                             "--recall_k", "1", "5", "10", *common], env)
        spec = f"{args.arch}@{weights}"
        t_mmkd, proc = timed([sys.executable, "-m", "mmkd", "eval", "--model", spec, "--name", "bench", "--datasets",
                              str(catalog), "--tasks", "zero-shot,retrieval", "--num-bootstrap", "0", "--no-cache",
                              "--batch-size", "32", "--out", str(root / "mmkd_out")], env)

        # 1. per-image zero-shot predictions
        subprocess.run([cb_python, "-c", CLIPBENCH_PREDICT, args.arch, str(weights), f"{root}/wds", ",".join(names),
                        str(root / "cb_pred.json")], check=True, capture_output=True, env=env)
        cb_pred = json.loads((root / "cb_pred.json").read_text())
        mm_pred, sims = mmkd_predictions(spec, catalog)
        total = mismatched = 0
        max_logit_diff = 0.0
        for name in names:
            a, b = cb_pred[name], mm_pred[name]
            assert a["target"] == b["target"], f"{name}: the two layouts give different labels"
            la, lb = np.asarray(a["logits"]), np.asarray(b["logits"])
            diff = int((np.argsort(-la, 1) != np.argsort(-lb, 1)).any(1).sum())  # whole class ranking per image
            max_logit_diff = max(max_logit_diff, float(np.abs(la - lb).max()))
            a["pred"], b["pred"] = la.argmax(1).tolist(), lb.argmax(1).tolist()
            total += len(a["pred"])
            mismatched += diff
            cb_json = json.loads((root / "cb" / f"{name}_zeroshot_classification.json").read_text())["metrics"]
            mm_json = json.loads((root / "mmkd_out" / "bench" / f"{name}__zero-shot.json").read_text())["clip_benchmark"]
            print(f"{name:<8} {len(a['pred'])} images, {len(set(b['pred']))} distinct predicted classes: "
                  f"{diff} class ranking(s) differ, max logit diff {np.abs(la - lb).max():.2e}; acc1 CLIP_benchmark {cb_json['acc1']:.4f} mmkd {mm_json['acc1']:.4f}; "
                  f"mean_per_class_recall {cb_json['mean_per_class_recall']:.4f} / {mm_json['mean_per_class_recall']:.4f}; "
                  f"acc5 {_fmt(cb_json['acc5'])} / {_fmt(mm_json['acc5'])}")
        # 2. retrieval recalls (no ties)
        sim = sims["captions"]
        ties = int(sum(len(np.unique(row)) < len(row) for row in sim) + sum(len(np.unique(col)) < len(col) for col in sim.T))
        cb_ret = json.loads((root / "cb" / "captions_zeroshot_retrieval.json").read_text())["metrics"]
        mm_ret = json.loads((root / "mmkd_out" / "bench" / "captions__retrieval.json").read_text())["clip_benchmark"]
        recall_diff = max(abs(cb_ret[k] - mm_ret[k]) for k in cb_ret)
        for k in sorted(cb_ret):
            print(f"captions {k:<28} CLIP_benchmark {cb_ret[k]:.4f}  mmkd {mm_ret[k]:.4f}")
        print(f"captions: score rows/columns with ties: {ties}")

    ratio = t_mmkd / (t_cb_cls + t_cb_ret)
    print(f"wall s: CLIP_benchmark {t_cb_cls:.1f} (3 zero-shot datasets, one command) + {t_cb_ret:.1f} (retrieval) = "
          f"{t_cb_cls + t_cb_ret:.1f}; mmkd {t_mmkd:.1f} (all 4 datasets, one command)")
    print(f"RATIO clip_benchmark_predictions_differ: {mismatched} of {total} (target <= 0: images whose zero-shot class "
          f"ranking differs from CLIP_benchmark's, same model, images and templates; max logit difference "
          f"{max_logit_diff:.1e} on CLIP_benchmark's 100 x cosine scale)")
    print(f"RATIO clip_benchmark_recall_difference: {recall_diff:.1e} (target <= 1e-6, float32 rounding: largest "
          f"retrieval recall@k difference, captions without ties)")
    print(f"RATIO clip_benchmark_wall_time: {ratio:.2f}x (target < 1: mmkd eval / CLIP_benchmark wall time, "
          f"3 zero-shot + 1 retrieval datasets, {args.images} images each, {args.arch} on CPU)")
    return 0 if mismatched == 0 and recall_diff < 1e-6 else 1  # CLIP_benchmark averages in float32


if __name__ == "__main__":
    sys.exit(main())
