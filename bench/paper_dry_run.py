"""The paper's pipeline at the real sizes and file formats, with random values: `make paper-dry-run`.

Before the real weights and data are at hand, this shows that everything a reproduction of
MMKD-CLIP needs fits together — the nine teachers in their published formats and architectures,
MetaCLIP's ViT-B/16 checkpoint, BiomedBERT with weights, the 512-d ViT-B/16 + BiomedBERT student at
224 px — and what each stage costs. In a scratch folder it:

 1. writes every input (`mmkd.teachers.paper_inputs`) and 32 image-caption pairs at 224 px;
 2. `mmkd teachers --check` on the nine folders (all must load);
 3. checks that the student's towers, initialised from the MetaCLIP file and the BiomedBERT folder,
    equal the files' tensors, then `mmkd pretrain` initialised from them, once with mmkd's
    configs/mmkd_b16/pretrain.yaml and once with the authors' pretrain-paper.yaml (validated on the
    pairs, keeping the best student);
 4. `mmkd extract` with all nine teachers into one store (one teacher per process: memory stays at one
    teacher, the store gains a teacher per call);
 5. `mmkd align` and `mmkd align --arch authors`; `mmkd distill` with configs/mmkd_b16/distill-paper.yaml
    from the authors' stage 1's best student and their alignment (skipped, and said so, when that file is
    absent) and with mmkd's defaults (no --model: the stage-1 run's own);
 6. `mmkd eval` (zero-shot, retrieval), `mmkd eval --protocol authors` (zero-shot) and `mmkd export`;
    open_clip loads the export and must give the same embeddings as mmkd's own model;
 7. prints per stage the wall time and peak RSS, and the store's bytes per sample.

Every stage runs in its own process (its peak RSS is the child's, from os.wait4). Teachers are
loaded from the HF cache offline (HF_HUB_OFFLINE=1); nothing is downloaded.

Usage: python bench/paper_dry_run.py [--out DIR] [--keep] [--readme README.md]
Exit code 0 when every stage passed. `--readme` rewrites the block between the
`<!-- paper-dry-run -->` markers of that file with the measured times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's mmkd, for the in-process parts too
NUM_PAIRS = 32
SIZE = 224
PAPER_RECIPE = ROOT / "configs" / "mmkd_b16" / "distill-paper.yaml"
PAPER_STAGE1 = ROOT / "configs" / "mmkd_b16" / "pretrain-paper.yaml"
TRAIN = ["--batch-size", "8", "--max-steps", "2", "--epochs", "1", "--device", "cpu", "--train.precision", "fp32",
         "--train.progress", "false", "--train.log_every", "1", "--data.num_workers", "0"]
MARK = "<!-- paper-dry-run -->"


class Stage:
    def __init__(self, name: str, wall_s: float, peak_rss_gb: float, ok: bool, note: str = ""):
        self.name, self.wall_s, self.peak_rss_gb, self.ok, self.note = name, wall_s, peak_rss_gb, ok, note


def run_stage(stages: list[Stage], name: str, argv: list[str], env: dict[str, str], log: Path,
              note: str = "") -> bool:
    """Run one stage in a child process; record its wall time and peak RSS (ru_maxrss of that child)."""
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n=== {name}: {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    stage = Stage(name, wall, usage.ru_maxrss / 2 ** 20, proc.returncode == 0, note)
    stages.append(stage)
    print(f"{name:<34} {'ok' if stage.ok else 'FAILED':<6} {wall:8.1f} s  peak RSS {stage.peak_rss_gb:5.2f} GB"
          + (f"  ({note})" if note else ""), flush=True)
    return stage.ok


def write_pairs(folder: Path) -> tuple[Path, Path]:
    """32 pairs at 224 px (larger source images, so resize/crop run as on real figures) and an eval catalog."""
    import csv

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = ["chest x-ray", "histology slide", "fundus photograph", "skin lesion"]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(NUM_PAIRS):
        label = classes[i % len(classes)]
        pixels = rng.integers(0, 256, (SIZE + 32, SIZE + 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i:03d}.jpg", quality=90)
        rows.append({"sample_id": f"p{i:03d}", "image": f"images/{i:03d}.jpg", "label": label,
                     "caption": f"a {label} of case {i} with a lesion", "modality": label})
    pairs = folder / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    catalog = folder / "catalog.yaml"
    catalog.write_text(
        "datasets:\n"
        f"  dry_zero_shot:\n    tasks: [zero-shot]\n    format: csv\n    path: pairs.csv\n"
        f"    classnames: [{', '.join(classes)}]\n    templates: ['a {{}}']\n"
        f"  dry_retrieval:\n    tasks: [retrieval]\n    format: csv\n    path: pairs.csv\n")
    return pairs, catalog


CHECK_INIT = """
import sys, torch
from mmkd.models.student import create_student
from mmkd.models.weights import read_state_dict
from mmkd.models.init import hf_weight_files
metaclip, bert = sys.argv[1], sys.argv[2]
student = create_student("mmkd-b16", hf_text_path=bert, image_init=metaclip)
own = student.model.state_dict()
clip = read_state_dict(metaclip)
visual = [k for k in own if k.startswith("visual.")]
assert all(torch.equal(own[k], clip[k]) for k in visual), "image tower differs from b16_400m.pt"
assert torch.equal(own["logit_scale"], clip["logit_scale"])
bert_state = read_state_dict(hf_weight_files(bert)[0])
text = [k for k in own if k.startswith("text.transformer.") and not k.endswith("position_ids")]
assert text and all(torch.equal(own[k], bert_state["bert." + k[len("text.transformer."):]]) for k in text), \\
    "text tower differs from BiomedBERT's model.safetensors"
print(f"image tower: {len(visual)} tensors equal b16_400m.pt; text tower: {len(text)} tensors equal BiomedBERT's")
"""

CHECK_EXPORT = """
import sys, torch, open_clip
from PIL import Image
import mmkd
export, run, images = sys.argv[1], sys.argv[2], sys.argv[3:]
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + export)
tokenizer = open_clip.get_tokenizer("local-dir:" + export)
model.eval()
ours = mmkd.load_model(run)
captions = ["a chest x-ray of case 1 with a lesion", "a histology slide"]
with torch.no_grad():
    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
    a_img = model.encode_image(pixels, normalize=True)
    a_txt = model.encode_text(tokenizer(captions), normalize=True)
    b_img = ours.encode_image(torch.stack([ours.preprocess(Image.open(p).convert("RGB")) for p in images]))
    b_txt = ours.encode_text(captions)
d = max((a_img - b_img).abs().max().item(), (a_txt - b_txt).abs().max().item())
print(f"open_clip's export vs mmkd's model: max |diff| {d:.2e} over {len(images)} images, {len(captions)} captions")
assert a_img.shape[1] == 512 and d <= 1e-5, d
"""


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the inputs, runs and store (about 10 GB) after a pass")
    parser.add_argument("--readme", default="", help="rewrite the paper-dry-run block of this file with the times")
    parser.add_argument("--reuse-inputs", action="store_true",
                        help="keep the inputs an earlier run wrote into --out (and the stages that passed)")
    args = parser.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mmkd-paper-dry-run-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_CACHE=str(work / "inputs" / "hf-cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(min(4, os.cpu_count() or 1))))
    py, mmkd = [sys.executable], [sys.executable, "-m", "mmkd"]
    inputs, runs, store = work / "inputs", work / "runs", work / "store"
    print(f"scratch folder: {work} (log: {log})", flush=True)
    stages: list[Stage] = []
    started = time.perf_counter()
    if args.reuse_inputs and (inputs / "DONE").is_file():
        ok = True
        print("write inputs: reusing", inputs, flush=True)
        for done in (runs, store, work / "eval", work / "export"):
            shutil.rmtree(done, ignore_errors=True)
    else:
        shutil.rmtree(inputs, ignore_errors=True)
        ok = run_stage(stages, "write inputs (full size)", py + [
            "-c", "import sys; from mmkd.teachers.paper_inputs import write_paper_inputs; "
            "write_paper_inputs(sys.argv[1]); open(sys.argv[1] + '/DONE', 'w').close()", str(inputs)], env, log)
    pairs, catalog = write_pairs(work / "data")
    teachers = inputs / "teachers"
    if ok:
        ok = run_stage(stages, "teachers --check (nine)", mmkd + ["teachers", "--check", str(teachers)], env, log)
    if ok:
        ok = run_stage(stages, "student init equals the files", py + ["-c", CHECK_INIT, str(inputs / "metaclip" /
                       "b16_400m.pt"), str(inputs / "biomedbert")], env, log)
    if ok:
        ok = run_stage(stages, "pretrain (2 steps, batch 8)", mmkd + [
            "pretrain", "--config", str(ROOT / "configs" / "mmkd_b16" / "pretrain.yaml"), "--data", str(pairs),
            "--data.format", "csv", "--model.hf_text_path", str(inputs / "biomedbert"), "--model.image_init",
            str(inputs / "metaclip" / "b16_400m.pt"), "--out", str(runs / "s1"), "--optim.warmup_steps", "1",
            "--train.save_every", "0", *TRAIN], env, log)
    if ok:  # the authors' stage 1: fp32, local loss, per-process batch; validated, the best student kept
        ok = run_stage(stages, "pretrain (pretrain-paper.yaml)", mmkd + [
            "pretrain", "--config", str(PAPER_STAGE1), "--data", str(pairs), "--data.format", "csv",
            "--model.hf_text_path", str(inputs / "biomedbert"), "--model.image_init",
            str(inputs / "metaclip" / "b16_400m.pt"), "--out", str(runs / "s1-paper"), "--optim.warmup_steps", "1",
            "--train.save_every", "0", *TRAIN, "--train.batch_size_per_process", "8", "--val.data", str(pairs),
            "--val.encode_batch_size", "16", "--val.keep_best", "val/clip_loss"], env, log)
    if ok:
        from mmkd.teachers.recipes import RECIPES

        for name, recipe in RECIPES.items():
            ok = run_stage(stages, f"extract {name}", mmkd + [
                "extract", "--data", str(pairs), "--teacher", f"{name}={recipe.spec(teachers)}", "--out", str(store),
                "--batch-size", "8", "--device", "cpu", "--no-progress"], env, log)
            if not ok:
                break
    if ok:
        ok = run_stage(stages, "align", mmkd + ["align", "--store", str(store), "--latent-dim", "512", "--steps",
                                               "20", "--batch-size", "16"], env, log)
    authors_alignment = store / "alignment-authors.safetensors"
    if ok:
        ok = run_stage(stages, "align --arch authors", mmkd + [
            "align", "--store", str(store), "--latent-dim", "512", "--steps", "20", "--batch-size", "16",
            "--arch", "authors", "--out", str(authors_alignment)], env, log)
    if ok and PAPER_RECIPE.is_file():
        ok = run_stage(stages, "distill (distill-paper.yaml)", mmkd + [
            "distill", "--config", str(PAPER_RECIPE), "--data", str(pairs), "--data.format", "csv",
            "--store", str(store), "--init", f"{runs / 's1-paper'}:best", "--out", str(runs / "s2-paper"),
            "--train.save_every", "0", "--distill.alignment", str(authors_alignment), *TRAIN], env, log)
    elif ok:
        print(f"{'distill (distill-paper.yaml)':<34} skipped: {PAPER_RECIPE.relative_to(ROOT)} does not exist", flush=True)
        stages.append(Stage("distill (distill-paper.yaml)", 0.0, 0.0, True, "skipped: recipe absent"))
    if ok:
        ok = run_stage(stages, "distill (mmkd defaults)", mmkd + [
            "distill", "--data", str(pairs), "--store", str(store), "--init", str(runs / "s1"),
            "--out", str(runs / "s2"), *TRAIN], env, log)
    if ok:
        ok = run_stage(stages, "eval (zero-shot, retrieval)", mmkd + [
            "eval", "--model", str(runs / "s2"), "--tasks", "zero-shot,retrieval", "--datasets", str(catalog),
            "--out", str(work / "eval"), "--num-bootstrap", "100", "--device", "cpu", "--batch-size", "16"], env, log)
    if ok:
        ok = run_stage(stages, "eval --protocol authors (zero-shot)", mmkd + [
            "eval", "--model", str(runs / "s2"), "--tasks", "zero-shot", "--datasets", str(catalog), "--protocol",
            "authors", "--out", str(work / "eval"), "--num-bootstrap", "100", "--device", "cpu", "--batch-size",
            "16"], env, log)
    if ok:
        ok = run_stage(stages, "export", mmkd + ["export", "--checkpoint", str(runs / "s2"), "--out",
                                                 str(work / "export")], env, log)
    if ok:
        images = [str(p) for p in sorted((work / "data" / "images").glob("*.jpg"))[:4]]
        ok = run_stage(stages, "open_clip loads the export", py + ["-c", CHECK_EXPORT, str(work / "export"),
                                                                   str(runs / "s2"), *images], env, log)
    total = time.perf_counter() - started
    store_bytes = dir_bytes(store) if store.is_dir() else 0
    # per-sample arrays (features, availability, scores: .npy) grow with the data; the manifest, chunk records
    # and the alignment autoencoder's weights do not
    array_bytes = sum(f.stat().st_size for f in store.rglob("*.npy")) if store.is_dir() else 0
    per_sample = array_bytes / NUM_PAIRS
    print(f"store: {per_sample / 1024:.1f} KiB per sample (nine teachers' image and text features in float16, "
          f"availability, scores) + {(store_bytes - array_bytes) / 2 ** 20:.1f} MiB fixed (manifest, chunk records, "
          f"alignment weights)")
    print(f"total: {total / 60:.1f} min; {'PASSED' if ok else 'FAILED (see ' + str(log) + ')'}")
    results = {"passed": ok, "total_s": total, "store_bytes_per_sample": per_sample,
               "stages": [vars(s) for s in stages]}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    if ok and args.readme:
        write_readme(Path(args.readme), stages, total, per_sample)
    if ok and not args.keep:  # about 10 GB: the big parts go, the log and results.json stay in --out
        for big in ((work,) if not args.out else (inputs, runs, store, work / "export")):
            shutil.rmtree(big, ignore_errors=True)
    return 0 if ok else 1


def write_readme(path: Path, stages: list[Stage], total: float, per_sample: float) -> None:
    import platform

    from mmkd.utils.io import atomic_write_text

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rows = "\n".join(f"| {s.name} | {s.note} | |" if s.note.startswith("skipped") else
                     f"| {s.name} | {s.wall_s:.0f} | {s.peak_rss_gb:.2f} |" for s in stages)
    block = (f"{MARK}\n`make paper-dry-run` (= `python bench/paper_dry_run.py --readme README.md`) last passed in "
             f"**{total / 60:.0f} minutes** on {os.cpu_count()} CPU cores ({cpu}), store "
             f"{per_sample / 1024:.1f} KiB per sample:\n\n| stage | wall s | peak RSS GB |\n|---|---:|---:|\n{rows}\n"
             f"{MARK}")
    text = path.read_text()
    if text.count(MARK) == 2:
        head, _, rest = text.partition(MARK)
        _, _, tail = rest.partition(MARK)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)
    print(f"wrote the times into {path}")


if __name__ == "__main__":
    sys.exit(main())
