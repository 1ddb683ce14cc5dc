"""`mmkd eval`: evaluate one or more models on the datasets of a catalog."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from mmkd.errors import UsageError

DESCRIPTION = """Evaluate CLIP models on the datasets of a catalog, with one code path for every model.

Each (model, dataset, task) writes OUT/<model>/<dataset>__<task>.json with the metrics
(accuracy, balanced_accuracy, auroc, f1, precision, recall, i2t_recall@k, t2i_recall@k, c_index),
their 95 % bootstrap CIs, the prompts, split sizes, seed and the model's provenance. Image and text
features are cached per (model, dataset, split), so a second run encodes nothing.
Turn the results into tables and plots with `mmkd report OUT`.

examples:
  mmkd eval --model runs/distill --tasks zero-shot,linear-probe --datasets real_mini
  mmkd eval --model local-dir:exports/student --model hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 \\
            --tasks zero-shot,retrieval --datasets my_catalog.yaml --out results/
  mmkd eval --model SPEC --datasets paper --tasks all     # the MMKD-CLIP benchmark: what is present runs,
                                                          # what is absent is listed with its prepare command
Built-in catalogs: real_mini (the images shipped with mmkd), public_biomedical (layouts of the
common public sets; download them yourself), paper (the paper's benchmark; `mmkd datasets`)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="SPEC",
                        help="a model to evaluate: an mmkd checkpoint or run folder, an open_clip local-dir:/hf-hub: "
                             "spec or name+weights, a transformers CLIP/SigLIP folder (anything mmkd.load_model "
                             "accepts); repeat for several models")
    parser.add_argument("--name", action="append", default=None, metavar="NAME",
                        help="the name results are filed under (OUT/NAME/), one per --model in the same order "
                             "(default: the model folder's name, run-step for a checkpoint folder or a run still "
                             "training; a name already holding another model's results, or being filled by another "
                             "eval, is refused)")
    parser.add_argument("--tasks", default="zero-shot,linear-probe,retrieval",
                        help="comma-separated tasks: zero-shot, linear-probe, retrieval, vqa, mil-classification, "
                             "survival, or `all`; each dataset runs the ones it lists (default: %(default)s)")
    parser.add_argument("--datasets", required=True, metavar="CATALOG",
                        help="catalog YAML (a `datasets:` mapping name -> tasks, format, path, ...), or the name of a "
                             "built-in catalog (real_mini, public_biomedical)")
    parser.add_argument("--only", default="", metavar="NAMES",
                        help="comma-separated dataset names of the catalog to run (default: all)")
    parser.add_argument("--out", default="eval_results", metavar="DIR", help="results folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits, subsamples and bootstrap (default: 0)")
    parser.add_argument("--protocol", choices=("mmkd", "authors"), default="mmkd",
                        help="how zero-shot classification is scored: mmkd (softmax of 100 x cosine, macro metrics, "
                             "stratified bootstrap with --seed) or authors (the MMKD-CLIP authors' eval_zeroshot.py: "
                             "softmax of the raw cosine, binary F1/precision/recall on two-class sets, their "
                             "bootstrap with seed 42); results of the authors' protocol are filed as "
                             "<dataset>__zero-shot__authors.json and reported in their own column "
                             "(default: %(default)s)")
    parser.add_argument("--num-bootstrap", type=int, default=1000,
                        help="stratified bootstrap resamples for the 95%% CIs; 0 turns CIs off (default: 1000)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="feature cache folder (default: OUT/.feature_cache)")
    parser.add_argument("--no-cache", action="store_true", help="keep features in memory only; write no cache files")
    parser.add_argument("--batch-size", type=int, default=64, help="images/texts per encoder call (default: 64)")
    parser.add_argument("--workers", type=int, default=0, help="image-loading worker processes (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files at the result paths even when they are not earlier `mmkd eval` results")


MODEL_MARKER = ".model.json"  # OUT/<name>/.model.json: which model a result folder holds


def default_name(spec: str) -> str:
    """The name results are filed under when --name is not given: the model folder's name, with the run's
    name in front for a checkpoint folder (runs/s2/checkpoints/step_00000300 -> s2-step_00000300)."""
    text = spec.split(":", 1)[1] if spec.startswith(("local-dir:", "hf:")) else spec
    arch, at, weights = text.partition("@")
    if at and not Path(text).exists():  # ARCH@WEIGHTS_FILE
        return f"{arch}-{Path(weights).stem}"
    path = Path(text.rstrip("/\\") or text)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}-{path.name}"
    return path.name or text


def model_identity(spec: str) -> str:
    """What a result folder's model is: the spec with any local path made absolute (./a and a are the same)."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in ("local-dir", "hf") and Path(rest).exists():
        return f"{prefix}:{Path(rest).resolve()}"
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def claim_names(out: str | Path, specs: list[str], names: list[str], explicit: bool,
                replace_earlier: bool = False) -> None:
    """Refuse names that would file two different models' results in one folder (this call, or an earlier one
    unless `replace_earlier`, i.e. --overwrite).

    Each model folder OUT/<name>/ records which model it holds in `.model.json` (hidden from `mmkd report`).
    """
    from mmkd.evaluation.runner import result_path
    from mmkd.utils.io import read_json

    seen: dict[str, str] = {}
    for spec, name in zip(specs, names):
        identity = model_identity(spec)
        folder = result_path(out, name, "x", "x").parent
        marker = folder / MODEL_MARKER
        earlier = seen.get(folder.name)
        if earlier is None and marker.is_file() and not replace_earlier:
            try:
                earlier = read_json(marker).get("identity")
            except (OSError, ValueError, AttributeError):
                earlier = None
        if earlier is not None and earlier != identity:
            hint = f"give --name for each --model (e.g. --name {_suggest(spec)})" if not explicit else \
                "choose another --name"
            if earlier != seen.get(folder.name):
                hint += ", or --overwrite to replace them"
            raise UsageError(f"--name: results of {earlier} are already filed under {str(folder)!r}; {spec!r} would "
                             f"overwrite them. {hint[0].upper() + hint[1:]}")
        seen[folder.name] = identity


def _suggest(spec: str) -> str:
    path = Path(spec.split(":", 1)[1] if spec.startswith(("local-dir:", "hf:")) else spec).resolve()
    return f"{path.parent.name}-{default_name(spec)}" if path.parent.name else default_name(spec) + "-2"


def run(args: argparse.Namespace) -> int:
    from mmkd.evaluation.runner import TASKS, load_catalog, result_path
    from mmkd.utils.console import Summary
    from mmkd.utils.dist import checked_device
    from mmkd.utils.locks import writer_lock

    started = Summary("eval")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if tasks == ["all"]:
        tasks = list(TASKS)
    if not tasks:
        raise UsageError("--tasks: empty; give e.g. zero-shot,linear-probe,retrieval")
    if args.name and len(args.name) != len(args.model):
        raise UsageError(f"--name: given {len(args.name)} time(s) for {len(args.model)} --model(s); give one per model "
                         f"or none")
    if args.num_bootstrap < 0:
        raise UsageError(f"--num-bootstrap: {args.num_bootstrap} is negative; use 0 to turn CIs off")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: {args.batch_size} must be at least 1")
    from mmkd.utils.outputs import refuse_file_as_folder

    refuse_file_as_folder(args.out, "--out")
    if args.cache_dir:
        refuse_file_as_folder(args.cache_dir, "--cache-dir")
    device = checked_device(args.device)
    entries = load_catalog(args.datasets)  # fail on catalog problems before loading any model
    only = [n.strip() for n in args.only.split(",") if n.strip()] or None
    specs = [checkpoint_of_training_run(spec) for spec in args.model]
    names = args.name or [default_name(spec) for spec in specs]
    with contextlib.ExitStack() as locks:  # each results folder is claimed before anything is checked or written
        for folder in dict.fromkeys(result_path(args.out, name, "x", "x").parent for name in names):
            locks.enter_context(writer_lock(folder, "--out", "results folder", command="mmkd eval", tidy=True))
        claim_names(args.out, specs, names, explicit=bool(args.name), replace_earlier=args.overwrite)
        _evaluate_all(args, specs, names, tasks, entries, only, device, started)
    return 0


def checkpoint_of_training_run(spec: str) -> str:
    """A run folder that a trainer is still writing: its latest checkpoint, named and said out loud (its results
    are filed as RUN-step_N, not under the run's name as if the run were done); any other spec unchanged."""
    import sys

    from mmkd.utils.locks import writer_of
    from mmkd.utils.runs import latest_checkpoint

    path = Path(spec)
    if not (path / "checkpoints").is_dir():
        return spec
    holder = writer_of(path)
    ckpt = latest_checkpoint(path) if holder else None
    if ckpt is None:
        return spec
    print(f"mmkd eval: {spec} is still being trained ({holder}); evaluating its latest checkpoint {ckpt.name}, filed "
          f"as {default_name(str(ckpt))}", file=sys.stderr)
    return str(ckpt)


def _evaluate_all(args, specs: list[str], names: list[str], tasks: list[str], entries, only, device,
                  started) -> None:
    from mmkd import load_model
    from mmkd.evaluation.runner import FeatureCache, evaluate, result_path
    from mmkd.utils.io import atomic_write_json

    cache_root = None if args.no_cache else Path(args.cache_dir or Path(args.out) / ".feature_cache")
    num_results, datasets = 0, set()
    for spec, model_name in zip(specs, names):
        model = load_model(spec, device=device, name=model_name)
        cache = FeatureCache(cache_root, batch_size=args.batch_size, num_workers=args.workers)
        marker = result_path(args.out, model_name, "x", "x").parent / MODEL_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"identity": model_identity(spec), "spec": spec})
        records = evaluate(model, entries, tasks, args.out, seed=args.seed, num_bootstrap=args.num_bootstrap,
                           cache=cache, model_name=model_name, only=only, overwrite=args.overwrite,
                           protocol=args.protocol)
        for r in records:
            shown = ", ".join(f"{k}={v:.4f}" for k, v in r["metrics"].items() if v is not None)
            print(f"{model_name}  {r['dataset']}  {r['task']}: {shown}")
        print(f"{model_name}: {len(records)} result(s) in {args.out} (feature cache: {cache.hits} hit(s), "
              f"{cache.misses} encoded)")
        num_results += len(records)
        datasets.update(r["dataset"] for r in records)
        started.add(f"model {model_name}", f"{spec} -> {marker.parent}")
    started.add("results", f"{num_results} in {args.out} ({len(datasets)} dataset(s), tasks {', '.join(tasks)})")
    started.add("next", f"mmkd report {args.out}")
    _print_absent(entries, tasks, only)
    started.emit()


def _print_absent(entries, tasks: list[str], only) -> None:
    """The selected datasets that are not on disk, each with how to get it."""
    from mmkd.evaluation.runner import absent_hint

    wanted = [e for e in entries if (not only or e.name in only) and any(t in e.tasks for t in tasks)]
    absent = [e for e in wanted if not e.path.exists()]
    if absent:
        print(f"absent ({len(absent)} of {len(wanted)} dataset(s); `mmkd datasets check` for details):")
        for e in absent:
            print(f"  {e.name}: {absent_hint(e)}")
