"""`mmkd align`: train the teacher alignment autoencoder on a feature store."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

DESCRIPTION = """Train the alignment autoencoder of a feature store (MMKD-CLIP's teacher projection).

One linear projection per teacher into the student's embedding size (shared by image and text),
modality MLPs, one linear decoder per teacher, reconstruction loss; --lambda-nce adds a
cross-teacher InfoNCE so that different teachers' projections of the same sample agree.
Training passes --epochs times over every sample that has an available teacher.
Saves STORE/alignment.safetensors (+ .json with the report) and prints, per teacher, its
available rows, the reconstruction error and the mean cosine between teachers' projections of
the same sample.

--arch authors trains the MMKD-CLIP authors' autoencoder instead (their models_ae.py: projection,
Gaussian noise, ReLU/dropout encoder and decoder per modality, a decoder projection per teacher;
the loss averaged over every (sample, teacher, modality) item). Either way the targets of
stage 2 are the per-teacher projections, and every run prints their norms per teacher, with a
warning when they fall far outside the 1.09-2.58 of the authors' released targets.

The latent size must equal the student's embedding size: give the student (--student, its
size is read from it) or the size itself (--latent-dim).

examples:
  mmkd align --store stores/biomedica-9t --student runs/mmkd-b16-stage1   # 512, the paper's student
  mmkd align --store store/ --latent-dim 64 --epochs 20
  mmkd align --store stores/biomedica-9t --student runs/mmkd-b16-stage1-paper --arch authors
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="feature store directory")
    parser.add_argument("--student", default="", metavar="RUN|MODEL",
                        help="the student that stage 2 will train: a run or checkpoint folder, a model-config JSON "
                             "or a model name (mmkd-b16, ViT-B-16-quickgelu, ...); the latent size is its "
                             "embedding size")
    parser.add_argument("--latent-dim", type=int, default=None,
                        help="latent size = the student's embedding size (default: read from --student)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="passes over the samples that have an available teacher (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=0,
                        help="fix the number of optimisation steps instead (default: 0, from --epochs)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--lambda-nce", type=float, default=0.0, help="weight of the cross-teacher InfoNCE")
    parser.add_argument("--arch", choices=("mmkd", "authors"), default="mmkd",
                        help="mmkd (residual GELU MLP per modality, per-teacher means summed) or authors (their "
                             "MultiCLIP_AE: noise, ReLU/dropout encoder and decoder, every item weighed equally) "
                             "(default: %(default)s)")
    parser.add_argument("--out", default="", help="weights file, ending in .safetensors; the report is written "
                                                   "beside it as .json (default STORE/alignment.safetensors)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out (and its .json) even when they are not an earlier `mmkd align` output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto",
                        help="where the autoencoder trains: auto (a GPU when one is visible), cpu, cuda, cuda:N; "
                             "the store is read on the host either way (default: %(default)s)")
    parser.add_argument("--save-every", type=int, default=500, metavar="STEPS",
                        help="write the training state every STEPS steps to OUT.partial/ beside the weights (0: "
                             "only when stopped); the same command run again continues from it, and SIGTERM, "
                             "SIGUSR1 and SIGINT write it and exit 143/130 (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def student_embed_dim(spec: str) -> int:
    """The embedding size of a student given as a run folder, checkpoint folder, config JSON or model name."""
    from mmkd.errors import UsageError
    from mmkd.models.student import resolve_model_config
    from mmkd.utils.runs import CONFIG_FILE, latest_checkpoint

    path = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec)
    if path.is_dir() and not (path / CONFIG_FILE).is_file():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise UsageError(f"--student: {spec!r} is a folder without {CONFIG_FILE} and without checkpoints; give a "
                             f"run folder (RUN/checkpoints/step_*), a checkpoint or export folder, or a model name")
        path = ckpt
    try:
        model_cfg, _ = resolve_model_config(str(path) if path.is_dir() else spec)
    except UsageError as e:
        raise UsageError(str(e).replace("--model:", "--student:", 1)) from None
    if "embed_dim" not in model_cfg:
        raise UsageError(f"--student: the model config of {spec!r} has no embed_dim; give --latent-dim N")
    return int(model_cfg["embed_dim"])


def check_arguments(args: argparse.Namespace) -> int:
    """Every bad value at once (UsageError); returns the latent size."""
    from mmkd.errors import UsageError

    problems = []

    def check(flag: str, ok: bool, allowed: str) -> None:
        if not ok:
            problems.append(f"--{flag}: {getattr(args, flag.replace('-', '_'))!r} is not allowed; {allowed}")

    check("epochs", args.epochs >= 1, "use 1 or more")
    check("steps", args.steps >= 0, "use 0 (from --epochs) or a positive step count")
    check("batch-size", args.batch_size >= 1, "use 1 or more")
    check("lr", math.isfinite(args.lr) and args.lr > 0, "use a positive learning rate, e.g. 1e-3")
    check("lambda-nce", math.isfinite(args.lambda_nce) and args.lambda_nce >= 0, "use 0 (off) or a positive weight")
    check("seed", args.seed >= 0, "use a seed >= 0")
    check("save-every", args.save_every >= 0, "use 0 (only when stopped) or a positive step count")
    from mmkd.utils.dist import checked_device

    try:
        args.device = checked_device(args.device)  # auto -> cuda or cpu
    except UsageError as e:
        problems.append(str(e))
    if args.latent_dim is not None:
        check("latent-dim", args.latent_dim >= 1, "use the student's embedding size (e.g. 512)")
    latent = args.latent_dim
    if args.student:
        try:
            embed = student_embed_dim(args.student)
        except UsageError as e:
            problems.append(str(e))
        else:
            if latent is not None and latent != embed:
                problems.append(f"--latent-dim: {latent} differs from the embedding size {embed} of --student "
                                f"{args.student}; stage 2 needs them equal: drop --latent-dim")
            latent = embed
    elif latent is None:
        problems.append("--latent-dim: not given; give --student RUN|MODEL (the stage-1 run or model that stage 2 "
                        "trains; its embedding size is used) or --latent-dim N (512 for the paper's student)")
    if problems:
        raise UsageError("; ".join(problems))
    return latent


def _check_out(args: argparse.Namespace):
    """(weights, report) paths: the weights end in .safetensors (so the .json report beside them is another
    file), and neither replaces a file that is not an earlier alignment."""
    from pathlib import Path

    from mmkd.errors import UsageError
    from mmkd.models.alignment import alignment_paths
    from mmkd.utils.outputs import check_replaceable, json_with_keys, refuse_file_as_folder

    if args.out:  # the weights' folder is created: a file in its place is the user's to fix
        for parent in reversed(Path(args.out).parents):
            refuse_file_as_folder(parent, "--out")
    if args.out and Path(args.out).suffix != ".safetensors":
        raise UsageError(f"--out: {args.out!r} must end in .safetensors; the report is written beside it with the "
                         f"suffix .json (e.g. --out {Path(args.out).with_suffix('.safetensors')})")
    weights, report = alignment_paths(args.store, args.out)
    ours = json_with_keys("teacher_dims", "latent_dim")
    check_replaceable([report], ours, "--out", "an alignment report", args.overwrite)
    check_replaceable([weights], lambda p: ours(report), "--out", "alignment weights", args.overwrite)
    return weights, report


def run(args: argparse.Namespace) -> int:
    import contextlib

    import shutil

    from mmkd.data.feature_store import FeatureStore
    from mmkd.models.alignment import save_alignment, train_alignment
    from mmkd.models.alignment_state import STATE_FILE, AlignmentStopped, state_folder
    from mmkd.utils.signals import StopFlag
    from mmkd.utils.console import Summary
    from mmkd.utils.locks import writer_lock

    started = Summary("align")
    latent_dim = check_arguments(args)
    weights, report_path = _check_out(args)
    store = FeatureStore(args.store)
    partial = state_folder(weights)
    with contextlib.ExitStack() as lock:
        if not args.out:  # writing into the store (its state folder, then the weights): one writer at a time
            lock.enter_context(writer_lock(args.store, "--store", "feature store", command="mmkd align"))
        if (partial / STATE_FILE).is_file():
            print(f"mmkd align: continuing the stopped run whose state is in {partial}", file=sys.stderr)
        try:
            with StopFlag() as stop:
                model, report = train_alignment(store, latent_dim, epochs=args.epochs, steps=args.steps,
                                                batch_size=args.batch_size, lr=args.lr, lambda_nce=args.lambda_nce,
                                                seed=args.seed, progress=not args.no_progress, arch=args.arch,
                                                device=args.device, state_dir=partial, save_every=args.save_every,
                                                stop=stop)
        except AlignmentStopped as e:
            print(f"mmkd align: stopped by {e.signal_name} at step {e.step:,} of {e.total:,}; the state is in "
                  f"{e.folder}. Run the same command again to continue", file=sys.stderr)
            return 130 if e.signal_name == "SIGINT" else 143
        save_alignment(model, weights, store, report)
        shutil.rmtree(partial, ignore_errors=True)
    print(f"latent size {latent_dim}; {args.arch} autoencoder; {report['steps']} steps ({report['epochs']:g} epochs) "
          f"on {args.device}")
    print(f"{'teacher':<20} {'rows':>8} {'rel. recon. error':>18} {'target norm, image':>20} {'text':>8}")
    idle = []
    for t, r in report["teachers"].items():
        err = r["relative_reconstruction_error"]
        if not r["rows_available"]:
            idle.append(t)
        norms = r.get("target_norm") or {}
        shown = [f"{norms[m]['mean']:.3f}" if m in norms else "-" for m in ("image", "text")]
        print(f"{t:<20} {r['rows_available']:>8} {'-' if err is None else f'{err:.4f}':>18} {shown[0]:>20} "
              f"{shown[1]:>8}")
    from mmkd.models.alignment import norm_warnings

    for line in norm_warnings(report):
        print(f"warning: {line}", file=sys.stderr)
    if report["mean_pair_cosine"] is not None:
        print(f"mean cosine between teachers' projections of the same sample: {report['mean_pair_cosine']:.3f}")
    for t in idle:
        print(f"teacher {t}: no available rows, so its projection is untrained; it teaches no sample in stage 2. "
              f"Re-decide availability (`mmkd extract --out {args.store} --reapply-availability ...`) or leave it out "
              f"(`mmkd distill --exclude-teacher {t}`)")
    print(f"saved {weights}")
    started.add("weights", weights)
    started.add("steps", f"{report['steps']:,} ({report['epochs']:g} epochs, batch {args.batch_size}, latent "
                         f"{latent_dim}, on {args.device})")
    rows = {t: r["rows_available"] for t, r in report["teachers"].items()}
    started.add("rows used", ", ".join(f"{t} {n:,}" for t, n in rows.items()))
    if report["mean_pair_cosine"] is not None:
        started.add("agreement", f"mean cosine {report['mean_pair_cosine']:.3f} between teachers' projections")
    started.emit()
    return 0
