"""Training throughput and MFU of stage 1 and stage 2 on the device present.

With CUDA: the paper's student — ViT-B/16 (224 px, QuickGELU) + a BERT-base text tower
(12 x 768, vocabulary 30522, CLS pooling, MLP head, context 256), embedding 512 — randomly
initialised, bf16 autocast, fused AdamW, SDPA attention (open_clip's ViT blocks and
transformers' BERT both dispatch to `scaled_dot_product_attention`), optional
`torch.compile` (`--compile`). Without CUDA: a tiny configuration of the same structure
(ViT 32 px + a 2-layer BERT), fp32, so the script runs anywhere (`--paper` forces the paper
student on CPU, slowly).

What is timed: the training step of `fit` without the data loader — the same pieces
(`ClipTask` / `DistillTask` modules and losses, `DistillTask.prepare` before the forward,
`autocast_context`, `build_optimizer`, grad clipping at 1.0, logit-scale clamp, one host sync
per step for the logged terms, as `fit` runs them) on pre-made image tensors on the device and
realistic captions (10-60 biomedical words) tokenized beforehand with `BatchTokenizer`, as the
loader's workers do, padded to the batch's longest unless `--full-context`. Stage 2
reads the paper's teacher set (9 teachers, dims 768/512, ~6.6 of 9 available per row) from a
feature store, through the alignment autoencoder into 512-d targets, random-available policy,
FD x 50 + ICL. Data loading is measured separately (`bench_data_wait.py`).

The ratio: each stage trains its own copy of the student from the same initial weights, and their
steps alternate (stage 1, stage 2, then stage 2, stage 1, ...), so each stage-2 step has a stage-1
step beside it in time, on the same state of a shared machine; the RATIO is the median of those
pairs' ratios over every round. `--aa` times stage 1 against itself in the same way, which gives the
spread noise alone leaves. Before 2026-12-06 the stages ran one after the other in each round, with
each round's fastest 5-step windows paired: on one 2-vCPU host, three A/A runs of 5 rounds gave
1.029x, 1.007x and 0.983x that way, single rounds from 0.709x to 1.411x, and 1.003x, 1.006x and
1.004x with the paired steps (bench/results-cpu/gpu-aa-*-2026-12-06.txt); until 2026-12-05 it was
the two stages' median step times. Both are still printed ("median step, ratio", "fastest 5 steps of each round"); the H200
figures in docs/PERFORMANCE.md (one round) were measured with the median steps. samples/s and MFU
are the median step's.

MFU = (FLOPs of one step, counted by `torch.utils.flop_counter.FlopCounterMode` on the real
shapes) x steps/s / the card's dense bf16 peak (a table of common cards; `--peak-tflops`
overrides). Channels-last is not used: a ViT has a single patch convolution, where it does
not help.

Extraction with the nine teachers at real size (images/s, bf16 vs fp32 cosine): `--stage extract`,
which runs bench/gpu_extract.py with the remaining options.

Usage: python bench/bench_gpu.py [--batch N] [--steps 20] [--rounds 5] [--compile] [--full-context] [--paper] [--profile]
       [--aa]
Prints `RATIO gpu_stage2_vs_stage1: <stage-2 / stage-1 step time>x (target <= 1.10)` and
`FIGURE` lines with samples/s, TFLOP/s and MFU of each stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import CAPTION_WORDS, build_bert_folder, fastest_window, median, print_header, set_threads, synthetic_captions

# Dense bf16 tensor-core peak, TFLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0,
                    "H100 PCIe": 756.0, "H100": 756.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0,
                    "L40S": 362.0, "L40": 181.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0, "RTX 4090": 165.0,
                    "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # most specific name first
        if key.lower() in name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def build_student(root: Path, paper: bool):
    """(student, description): the paper's ViT-B/16 + BERT-base, or a tiny one of the same structure."""
    from mmkd.models.student import create_student

    words = list(CAPTION_WORDS)
    if paper:
        bert = build_bert_folder(root / "bert-base", words, hidden=768, layers=12, heads=12, intermediate=3072,
                                 max_positions=512, vocab_size=30522)
        return create_student("mmkd-b16", hf_text_path=str(bert), seed=0), "ViT-B/16 + BERT-base (paper)"
    bert = build_bert_folder(root / "bert-tiny", words, hidden=64, layers=2, heads=2, intermediate=128,
                             max_positions=512)
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps({
        "embed_dim": 64, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_pooler", "context_length": 256}}))
    return create_student(str(cfg), hf_text_path=str(bert), seed=0), "tiny ViT 32 px + BERT 2 x 64 (CPU)"


def write_inputs(root: Path, n: int, embed_dim: int, captions: list[str]) -> tuple[Path, Path]:
    """A CSV of n samples (the images are never read) and a 9-teacher store with alignment weights."""
    from bench_stage2_vs_stage1 import PAPER_TEACHERS, write_teacher_store

    csv = root / "pairs.csv"
    with open(csv, "w") as f:
        f.write("image,caption,sample_id\n")
        for i in range(n):
            f.write(f"img/{i}.png,\"{captions[i % len(captions)]}\",s{i:07d}\n")
    return csv, write_teacher_store(csv, root / "store", PAPER_TEACHERS, embed_dim)


def make_config(csv: Path, store: Path, out: Path, args, device: str):
    from mmkd.config import build_config

    return build_config(None, ["--data", str(csv), "--store", str(store), "--out", str(out), "--train.device", device,
                               "--optim.fused", "true", "--model.pad_to_longest", str(not args.full_context).lower(),
                               "--batch-size", str(args.batch)], stage="distill")


def make_stepper(task, student, cfg, device, batches, args) -> dict:
    """A stage's training step as `fit` runs it (without the loader), its FLOPs, after `args.warmup` steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmkd.training.precision import autocast_context
    from mmkd.training.optim import build_optimizer

    module = task.module.to(device)
    module.train()
    optimizer = build_optimizer(module, cfg.optim, device.type)
    runner = {"module": module}  # FLOPs are counted on the eager module (compiled graphs bypass the counter)

    # Stage 2's teacher targets are read from the store by the loader's workers in fit (CollateWithTargets):
    # read here once per batch, outside the timed step, and handed to `prepare` as fit does.
    hosts = {id(batch): task.target_reader(batch) for _, batch in batches} if hasattr(task, "target_reader") else {}

    def step(images, batch):
        optimizer.zero_grad(set_to_none=True)
        tokens = batch.tokens.to(device, non_blocking=True)  # tokenized by the loader's workers, as in fit
        if hasattr(task, "prepare"):
            task.prepare(batch, hosts.get(id(batch)))
        with autocast_context(device.type, cfg.train.precision):
            outputs = runner["module"](images, tokens)
        terms = task.losses(outputs, batch, 0, 1)
        terms["loss"].backward()
        # fit logs every term each step: one host sync
        values = dict(zip(terms, torch.stack([v.detach().float().reshape(()) for v in terms.values()]).tolist()))
        loss = values["loss"]
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        with torch.no_grad():
            student.model.logit_scale.clamp_(0, np.log(100))
        return loss, int(tokens.shape[1])

    with FlopCounterMode(display=False) as counter:
        step(*batches[0])
    if args.compile:
        runner["module"] = torch.compile(module)
    for i in range(args.warmup):
        step(*batches[i % len(batches)])
    return {"step": step, "flops_per_step": counter.get_total_flops(), "student": student}


def time_interleaved(steppers: dict[str, dict], device, batches, args) -> dict[str, dict]:
    """Time `args.steps` steps of each stage, one stage's step then the other's (every other step in the
    other order), so both see the same state of a shared machine; returns each stage's step times."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    lengths: dict[str, list[int]] = {name: [] for name in names}
    for i in range(args.steps):
        for name in names if i % 2 == 0 else names[::-1]:
            sync()
            t0 = time.perf_counter()
            loss, length = steppers[name]["step"](*batches[i % len(batches)])
            sync()
            times[name].append(time.perf_counter() - t0)
            lengths[name].append(length)
            assert np.isfinite(loss), "non-finite loss in the benchmark"
    out = {}
    for name in names:
        step_s = median(times[name])
        flops = steppers[name]["flops_per_step"]
        out[name] = {"times": times[name], "step_s": step_s, "samples_per_s": args.batch / step_s,
                     "flops_per_step": flops, "tflops_per_s": flops / step_s / 1e12,
                     "text_len": float(np.mean(lengths[name]))}
        if device.type == "cuda":  # both stages' peak: they share the device
            out[name]["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def merge_rounds(rounds: list[dict], batch: int) -> dict:
    """One stage's figures over its rounds: the median step time of all their timed steps."""
    times = [t for r in rounds for t in r["times"]]
    step_s = median(times)
    out = dict(rounds[-1], times=times, step_s=step_s, samples_per_s=batch / step_s,
               tflops_per_s=rounds[-1]["flops_per_step"] / step_s / 1e12,
               text_len=float(np.mean([r["text_len"] for r in rounds])))
    if "max_memory_gib" in rounds[-1]:
        out["max_memory_gib"] = max(r["max_memory_gib"] for r in rounds)
    return out


def profile(step, student, cfg, device, batches) -> None:
    """Where a step's time goes: each part alone (median of 5), then the busiest kernels and how
    much of the step the device was busy (below 100 %: the host is the limit)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from mmkd.models.text import BatchTokenizer
    from mmkd.training.precision import autocast_context

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    images, batch = batches[0]
    tokens = batch.tokens.to(device)
    batcher = BatchTokenizer(student.tokenizer, student.model, cfg.model.pad_to_longest)

    def timed(fn, repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return 1000 * median(times)

    def tower(encode, x):
        def run():
            with autocast_context(device.type, cfg.train.precision):
                out = encode(x, normalize=True)
            out.float().square().mean().backward()
        return run

    parts = {"tokenize (host, in the loader's workers)": timed(lambda: batcher(batch.captions)),
             "tokenize, open_clip full context (host)": timed(lambda: student.tokenizer(batch.captions)),
             "image tower fwd+bwd": timed(tower(student.model.encode_image, images)),
             "text tower fwd+bwd": timed(tower(student.model.encode_text, tokens)),
             "whole step": timed(lambda: step(*batches[0]))}
    print("  parts, ms: " + "; ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    t0 = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for i in range(3):
            step(*batches[i % len(batches)])
        sync()
    wall_ms = 1000 * (time.perf_counter() - t0) / 3
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    if cuda:
        busy_ms = sum(getattr(e, key, 0) for e in averages if e.device_type.name == "CUDA") / 1000 / 3
        print(f"  device busy {busy_ms:.1f} of {wall_ms:.1f} ms per profiled step ({busy_ms / wall_ms:.0%})")
    print(averages.table(sort_by=key, row_limit=18, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=0, help="batch size (default: 256 on CUDA, 16 on CPU)")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per round (default: 20)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds of both stages; each stage's median is over all its rounds, the ratio is the "
                             "median of the rounds' (default: 5 on CPU, where a shared machine drifts, 1 on CUDA)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (default: 5 CUDA, 3 CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student (longer warm-up)")
    parser.add_argument("--full-context", action="store_true", help="pad captions to 256 tokens, as the paper does")
    parser.add_argument("--paper", action="store_true", help="the paper's student even on CPU (slow)")
    parser.add_argument("--stage", choices=("1", "2", "both", "extract"), default="both",
                        help="which stages to time; extract: the nine teachers (bench/gpu_extract.py)")
    parser.add_argument("--profile", action="store_true", help="print where each stage's step time goes")
    parser.add_argument("--aa", action="store_true",
                        help="time stage 1 against itself (in stage 2's place): the spread noise alone gives the ratio")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the card's dense bf16 peak, TFLOP/s")
    args, rest = parser.parse_known_args()
    if args.stage == "extract":
        import gpu_extract

        return gpu_extract.main(rest + (["--batch", str(args.batch)] if args.batch else []))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    set_threads()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    args.batch = args.batch or (256 if cuda else 16)
    args.steps = args.steps or 20
    args.warmup = args.warmup or (5 if cuda else 3)
    args.rounds = args.rounds or (1 if cuda else 5)
    print_header("training step throughput and MFU, stage 1 and stage 2")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from mmkd.training.stage1 import ClipTask
    from mmkd.training.stage2 import DistillTask

    rng = np.random.default_rng(0)
    captions = synthetic_captions(4 * args.batch, rng, 10, 60)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paper = cuda or args.paper
        student, desc = build_student(root, paper)
        size = student.preprocess_cfg["size"]
        size = size[0] if isinstance(size, (list, tuple)) else size
        n = 4 * args.batch
        csv, store = write_inputs(root, n, student.embed_dim, captions)
        cfg = make_config(csv, store, root / "run", args, device.type)
        print(f"student: {desc}; batch {args.batch}; precision "
              f"{'bf16 autocast' if cuda else 'fp32'}; fused AdamW {cuda}; compile {args.compile}; "
              f"text {'full 256' if args.full_context else 'padded to the longest caption'}")
        text_model = getattr(getattr(student.model, "text", None), "transformer", None)
        if text_model is not None and hasattr(text_model, "config"):
            print(f"text attention: {getattr(text_model.config, '_attn_implementation', '?')}")
        from mmkd.data.pairs import Batch
        from mmkd.models.text import BatchTokenizer

        batcher = BatchTokenizer(student.tokenizer, student.model, cfg.model.pad_to_longest, 32 if args.compile else 8)
        batches = []
        for k in range(4):
            idx = torch.arange(k * args.batch, (k + 1) * args.batch)
            images = torch.randn(args.batch, 3, size, size, device=device)
            batches.append((images, Batch(images=images, captions=[captions[i] for i in idx.tolist()], indices=idx,
                                          sample_ids=[f"s{i:07d}" for i in idx.tolist()],
                                          modalities=[""] * args.batch, skipped={},
                                          tokens=batcher([captions[i] for i in idx.tolist()]))))
        # Rounds of both stages, each from the same initial weights, each stage on its own copy of the student.
        # Within a round the stages' steps alternate, so a machine that slows down or speeds up moves both
        # alike; the ratio is the median over every round of each step pair's ratio (see the module text).
        initial = {k: v.clone() for k, v in student.model.state_dict().items()}
        stages = (("stage1", ClipTask), ("stage2", ClipTask if args.aa else DistillTask))
        stages = tuple((name, make) for name, make in stages if args.stage in ("both", name[-1]))
        rounds: dict[str, list[dict]] = {}
        paired = []
        for r in range(args.rounds):
            steppers = {}
            for k, (stage, make) in enumerate(stages if r % 2 == 0 else stages[::-1]):  # alternate who warms up first
                own = student if k == 0 else copy.deepcopy(student)  # each stage trains its own copy
                own.model.load_state_dict(initial)
                steppers[stage] = make_stepper(make(own, cfg, device), own, cfg, device, batches, args)
            timed = time_interleaved(dict(sorted(steppers.items())), device, batches, args)
            for stage, result in timed.items():
                rounds.setdefault(stage, []).append(result)
            if len(timed) == 2:
                paired += [b / a for a, b in zip(timed["stage1"]["times"], timed["stage2"]["times"])]
            if args.profile and r == 0:
                for stage, stepper in steppers.items():
                    print(f"{stage}:")
                    profile(stepper["step"], stepper["student"], cfg, device, batches)
            del steppers
        windows = [fastest_window(b["times"]) / fastest_window(a["times"])
                   for a, b in zip(rounds.get("stage1", []), rounds.get("stage2", []))]
        results = {stage: merge_rounds(rs, args.batch) for stage, rs in rounds.items()}
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(0)) if cuda else None)
    for stage, r in results.items():
        mfu = f"{r['tflops_per_s'] / peak:.1%}" if peak else "n/a (no GPU peak)"
        mem = f", max memory {r['max_memory_gib']:.1f} GiB" if "max_memory_gib" in r else ""
        print(f"{stage}: {r['samples_per_s']:8.1f} samples/s, {1000 * r['step_s']:7.1f} ms/step, "
              f"{r['flops_per_step'] / args.batch / 1e9:6.1f} GFLOP/sample (fwd+bwd, text ~{r['text_len']:.0f} tokens), "
              f"{r['tflops_per_s']:7.2f} TFLOP/s, MFU {mfu}{mem}")
        print(f"FIGURE gpu_{stage}_samples_per_s: {r['samples_per_s']:.1f}")
        if peak:
            print(f"FIGURE gpu_{stage}_mfu: {r['tflops_per_s'] / peak:.3f}")
    if len(results) < 2:
        return
    ratio = median(paired)
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {desc}"
    spread = f"quartiles of the {len(paired)} pairs {np.percentile(paired, 25):.3f}x-{np.percentile(paired, 75):.3f}x"
    old = (f"median step, ratio: {results['stage2']['step_s'] / results['stage1']['step_s']:.3f}x; fastest 5 steps of "
           f"each round, ratio: {', '.join(f'{x:.3f}x' for x in windows)}")
    print(old)
    if args.aa:  # no target: what noise alone gives
        print(f"FIGURE gpu_stage1_vs_stage1_aa: {ratio:.3f}x (stage 1 against itself, median of the paired steps' "
              f"ratios, {args.rounds} round(s); {spread}; {where})")
        return
    print(f"RATIO gpu_stage2_vs_stage1: {ratio:.3f}x (target <= 1.10: stage-2 / stage-1 step time, median of the "
          f"paired steps' ratios, {args.rounds} round(s); {spread}; {where})")


if __name__ == "__main__":
    main()
