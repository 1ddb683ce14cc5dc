"""Stage-2 (distillation) step against the stage-1 (CLIP) step: same student, batch and data.

Both run through `mmkd.training.loop.fit` — `ClipTask` for stage 1, `DistillTask` for stage 2
— on the same CSV, student config, seed, batch and number of steps. Stage 2 reads precomputed
teacher features from a feature store written with `FeatureStoreWriter` (the paper's teacher
set: 9 teachers, dims 768/512, about 6.6 of 9 available per sample) and uses the paper's
defaults: random-available policy, projection targets through an alignment autoencoder,
lambda_fd 50, lambda_icl 1. The timed window is the same steps of both (start-up and the
final checkpoint left out); the two runs alternate `--repeats` times, every other pair in the other order.

What is compared, as in `bench_pretrain_step.py`: each run's fastest 5-step window (from `fit`'s
metrics, logged every 5 steps). Other jobs on a shared machine can only add time to a window, so
the fastest one is the closest to the step's own cost; the median of the paired ratios is the
RATIO. The median of the paired ratios of the whole windows' mean rates, which this benchmark
reported until 2026-12-05 and which gave 1.055x run alone and 1.145x inside `make bench` on the
same machine that day (with repeats where stage 2, which does strictly more work, ran faster than
stage 1), is printed beside it. `--aa` times stage 1 against itself with the same estimators: the ratio
that noise alone produces on the machine, for either estimator.

On this CPU with a tiny student the fixed per-teacher cost of stage 2 (store reads, 9
alignment projections, FD and ICL per teacher) weighs far more than with the paper's
ViT-B/16 + BERT-base student, whose step is about 10^4 times larger; `bench_gpu.py` measures
that configuration.

Usage: python bench/bench_stage2_vs_stage1.py [--model mmkd-tiny-vit] [--batch 32] [--steps 40] [--aa]
Prints `RATIO stage2_vs_stage1_step: <stage-2 / stage-1 step time>x (target <= 1.10)`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from _common import median, print_header, set_threads, steady_rate, window_seconds, write_pairs_csv

# The paper's teachers and their raw embedding dims (DESIGN.md section 1).
PAPER_TEACHERS = {"BMCA": 768, "BiomedCLIP": 512, "UniMedCLIP": 512, "PMCCLIP": 768, "QuiltNet": 512,
                  "GenMedClip": 512, "PLIP": 512, "PUBMEDCLIP": 512, "MedCLIP": 512}


def write_teacher_store(csv: Path, store: Path, teachers: dict[str, int], latent_dim: int, seed: int = 0,
                        available_share: float = 6.6 / 9, chunk_rows: int = 4096) -> Path:
    """A complete feature store for the samples of `csv` (random unit features, random availability)
    plus alignment weights (a randomly initialised autoencoder into `latent_dim`)."""
    import torch

    from mmkd.data.feature_store import FeatureStore, FeatureStoreWriter, TeacherEntry
    from mmkd.data.pairs import index_source
    from mmkd.models.alignment import WEIGHTS_FILE, AlignmentAE, save_alignment

    records, _ = index_source(str(csv))
    ids = [r.sample_id for r in records]
    rng = np.random.default_rng(seed)
    entries = [TeacherEntry(t, d, provenance={"weights": {t: f"bench-{t}"}}) for t, d in teachers.items()]
    writer = FeatureStoreWriter.open(store, ids, entries, chunk_rows=chunk_rows)
    for c in range(writer.num_chunks):
        a, b = writer.chunk_bounds(c)
        for t, d in teachers.items():
            img, txt = rng.standard_normal((b - a, d)), rng.standard_normal((b - a, d))
            writer.write_chunk(c, t, {
                "image": img / np.linalg.norm(img, axis=1, keepdims=True),
                "text": txt / np.linalg.norm(txt, axis=1, keepdims=True),
                "available": rng.random(b - a) < available_share,
                "score": np.ones(b - a, np.float32)})
    writer.finalize()
    torch.manual_seed(seed)
    save_alignment(AlignmentAE(teachers, latent_dim), store / WEIGHTS_FILE, FeatureStore(store), {})
    return store


def run(stage: str, csv: Path, store: Path, out: Path, args) -> tuple[float, float]:
    """(samples/s between step `warmup` and the last step, seconds of the fastest 5-step window) of one run."""
    from mmkd.config import build_config
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask
    from mmkd.training.stage2 import DistillTask

    flags = ["--data", str(csv), "--model", args.model, "--out", str(out), "--batch-size", str(args.batch),
             "--max-steps", str(args.steps), "--optim.warmup_steps", "10", "--train.device", "cpu",
             "--train.progress", "false", "--train.log_every", "5", "--seed", "0"]
    if stage == "distill":
        flags += ["--store", str(store)]
    cfg = build_config(None, flags, stage=stage)
    fit(cfg, DistillTask if stage == "distill" else ClipTask)
    return steady_rate(out, args.batch, args.warmup), min(window_seconds(out, args.batch, args.warmup))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mmkd-tiny-vit", help="student config")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="steps per run (a multiple of 5)")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing (a multiple of 5)")
    parser.add_argument("--teachers", type=int, default=9, help="how many of the paper's 9 teachers the store holds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--aa", action="store_true",
                        help="stage 1 against stage 1 (the ratio noise alone gives), with the same estimators")
    args = parser.parse_args()
    set_threads()
    from mmkd.models.student import resolve_model_config

    print_header("stage-2 step vs stage-1 step (same student, batch, data; teachers precomputed)")
    teachers = dict(list(PAPER_TEACHERS.items())[:args.teachers])
    embed_dim = int(resolve_model_config(args.model)[0]["embed_dim"])
    second = "pretrain" if args.aa else "distill"
    rates: dict[str, list[float]] = {"first": [], "second": []}
    best: dict[str, list[float]] = {"first": [], "second": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = write_pairs_csv(root / "data", args.batch * (args.steps + 1), image_size=32)
        store = write_teacher_store(csv, root / "store", teachers, embed_dim)
        print(f"store: {len(teachers)} teachers (dims {sorted(set(teachers.values()))}), "
              f"{args.batch * (args.steps + 1)} rows, alignment latent {embed_dim}")
        for r in range(args.repeats):
            order = [("first", "pretrain"), ("second", second)]
            for side, stage in order if r % 2 == 0 else order[::-1]:  # neither side always runs after the other
                rate, window = run(stage, csv, store, root / f"{side}-{r}", args)
                rates[side].append(rate)
                best[side].append(window)
            print(f"repeat {r}: stage 1 {rates['first'][-1]:7.1f} samples/s, {second_name(args)} "
                  f"{rates['second'][-1]:7.1f} samples/s; fastest 5 steps: stage 1 {1000 * best['first'][-1]:6.1f} ms, "
                  f"{second_name(args)} {1000 * best['second'][-1]:6.1f} ms")
    s1, s2 = rates["first"], rates["second"]
    whole = median([a / b for a, b in zip(s1, s2)])
    ratio = median([b / a for a, b in zip(best["first"], best["second"])])  # paired repeats
    print(f"whole window, median of paired ratios: {whole:.3f}x")
    print(f"stage 1: {median(s1):7.1f} samples/s ({1000 * args.batch / median(s1):6.1f} ms/step, median); "
          f"fastest 5 steps {1000 * median(best['first']) / 5:6.1f} ms/step (median over repeats)")
    print(f"{second_name(args)}: {median(s2):7.1f} samples/s ({1000 * args.batch / median(s2):6.1f} ms/step, median); "
          f"fastest 5 steps {1000 * median(best['second']) / 5:6.1f} ms/step (median over repeats)")
    print(f"extra per step: {1000 * (median(best['second']) - median(best['first'])) / 5:.1f} ms (fastest 5 steps)")
    if args.aa:  # no target: what noise alone gives, for either estimator
        print(f"FIGURE stage1_vs_stage1_step_aa: {ratio:.3f}x (stage 1 against itself, fastest 5-step window of "
              f"each run; whole window {whole:.3f}x)")
    else:
        print(f"RATIO stage2_vs_stage1_step: {ratio:.3f}x (target <= 1.10: stage-2 / stage-1 step time, "
              f"{args.model}, {len(teachers)} teachers, fastest 5-step window of each run)")


def second_name(args) -> str:
    """What the run's second side is called."""
    return "stage 1 again" if args.aa else "stage 2"


if __name__ == "__main__":
    main()
