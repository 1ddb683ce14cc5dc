"""`mmkd align`: train the teacher alignment autoencoder on a feature store."""

from __future__ import annotations

import argparse

DESCRIPTION = """Train the alignment autoencoder of a feature store (MMKD-CLIP's teacher projection).

One linear projection per teacher into the student's embedding size (shared by image and text),
modality MLPs, one linear decoder per teacher, reconstruction loss; --lambda-nce adds a
cross-teacher InfoNCE so that different teachers' projections of the same sample agree.
Saves STORE/alignment.safetensors (+ .json with the report) and prints, per teacher, the
reconstruction error and the mean cosine between teachers' projections of the same sample.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="feature store directory")
    parser.add_argument("--latent-dim", type=int, default=64,
                        help="latent size = the student's embedding size (512 for the paper's student)")
    parser.add_argument("--steps", type=int, default=500, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lambda-nce", type=float, default=0.0, help="weight of the cross-teacher InfoNCE")
    parser.add_argument("--out", default="", help="weights file, ending in .safetensors; the report is written "
                                                   "beside it as .json (default STORE/alignment.safetensors)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out (and its .json) even when they are not an earlier `mmkd align` output")
    parser.add_argument("--seed", type=int, default=0)


def _check_out(args: argparse.Namespace):
    """(weights, report) paths: the weights end in .safetensors (so the .json report beside them is another
    file), and neither replaces a file that is not an earlier alignment."""
    from pathlib import Path

    from mmkd.errors import UsageError
    from mmkd.models.alignment import alignment_paths
    from mmkd.utils.outputs import check_replaceable, json_with_keys

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

    from mmkd.data.feature_store import FeatureStore
    from mmkd.errors import UsageError
    from mmkd.models.alignment import save_alignment, train_alignment
    from mmkd.utils.locks import writer_lock

    for name in ("latent_dim", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: {getattr(args, name)} is not allowed; use 1 or more")
    weights, report_path = _check_out(args)
    store = FeatureStore(args.store)
    model, report = train_alignment(store, args.latent_dim, steps=args.steps, batch_size=args.batch_size,
                                    lr=args.lr, lambda_nce=args.lambda_nce, seed=args.seed)
    with contextlib.ExitStack() as lock:
        if not args.out:  # writing into the store: one writer at a time
            lock.enter_context(writer_lock(args.store, "--store", "feature store", command="mmkd align"))
        save_alignment(model, weights, store, report)
    print(f"{'teacher':<20} {'rows':>8} {'rel. recon. error':>18}")
    for t, r in report["teachers"].items():
        err = r["relative_reconstruction_error"]
        print(f"{t:<20} {r['rows_available']:>8} {err if err is None else f'{err:.4f}':>18}")
    if report["mean_pair_cosine"] is not None:
        print(f"mean cosine between teachers' projections of the same sample: {report['mean_pair_cosine']:.3f}")
    print(f"saved {weights}")
    return 0
