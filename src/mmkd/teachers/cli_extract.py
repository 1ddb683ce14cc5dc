"""`mmkd extract`: encode a dataset with several teachers into a feature store."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmkd.errors import UsageError

DESCRIPTION = """\
Encode every image-text pair of a dataset with each teacher and write a feature store
(see `mmkd.FeatureStore`). Each image is decoded once and given to every teacher's own
preprocessing; captions go through each teacher's own tokenizer. Writes are chunked and
committed atomically: rerun the same command after a crash and it resumes where it stopped.
Under torchrun every rank extracts its own chunks into the same store.

examples:
  mmkd extract --data pairs.csv --teacher biomedclip=hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 \\
      --teacher plip=hf:/models/plip --out features/
  mmkd extract --config extract.yaml        # keys: data, teachers {name: spec}, out, batch_size, ...
  torchrun --nproc_per_node 4 -m mmkd extract --data shards/ --teacher QuiltNet --out features/
  mmkd extract --data subset/ ...           # a selection made by `mmkd data select`
  mmkd extract --verify --out features/     # recompute every chunk checksum of a finished store

Availability (may teacher T teach sample S?): `rank` (default) — T ranks S's own caption first
among --candidates captions (S's own plus others of the same chunk); `threshold` — cosine of
image and own caption >= --threshold; `always`. The rank margin is stored as the score.
"""

_DEFAULTS: dict[str, Any] = {"batch_size": 64, "chunk_rows": 1024, "availability": "rank", "candidates": 10, "threshold": 0.25,
             "seed": 0, "workers": 0, "device": "auto", "precision": "auto", "data_format": "auto", "image_key": "image",
             "caption_key": "caption", "id_key": "sample_id", "select": None, "license": ""}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe with the same keys as the options below (teachers as a "
                                         "mapping name: spec), a file or a packaged name such as mmkd_b16/extract; "
                                         "command-line options override it")
    parser.add_argument("--data", help="CSV/JSONL file of image-text pairs, or webdataset .tar shards (a file, "
                                       "a folder, a glob or a brace range)")
    parser.add_argument("--data-format", choices=["auto", "csv", "jsonl", "webdataset"], default=None,
                        help="format of --data (default: from the file name)")
    parser.add_argument("--image-key", default=None, help="CSV/JSONL column with the image path (default: image)")
    parser.add_argument("--caption-key", default=None, help="column/JSON key with the caption (default: caption)")
    parser.add_argument("--id-key", default=None, help="column with the sample id (default: sample_id; row "
                                                       "number when absent)")
    parser.add_argument("--select", action="append", default=None, metavar="FIELD=V1,V2",
                        help="keep the samples whose metadata FIELD has one of the values (repeatable, ANDed; or a "
                             "YAML file FIELD: [values]); see `mmkd data select`")
    parser.add_argument("--license", choices=["commercial", "noncommercial"], default=None,
                        help="keep samples whose licence allows this use (default: all)")
    parser.add_argument("--teacher", action="append", default=[], metavar="NAME=SPEC",
                        help="a teacher to extract, repeatable. SPEC: local-dir:PATH, hf-hub:ORG/NAME, "
                             "ARCH@WEIGHTS_FILE, hf:PATH_OR_ID, pmc-clip:PATH, medclip:PATH, unimed-clip:PATH, or "
                             "a folder. A known teacher's name alone (see `mmkd teachers`) uses its default spec")
    parser.add_argument("--out", help="feature store folder (created, or resumed when it exists)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per model call (default: 64)")
    parser.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per atomically committed chunk (default: 1024; a resumed store keeps its own). "
                             "Every chunk starts on a 4 KiB page; multiples of 1024 keep the padding this needs small")
    parser.add_argument("--availability", choices=["rank", "threshold", "always"], default=None,
                        help="rule deciding which teacher may teach a sample (default: rank)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="captions the own caption must beat under the rank rule, itself included (default: 10)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="cosine threshold of the threshold rule (default: 0.25)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the candidate draw (default: 0)")
    parser.add_argument("--workers", type=int, default=None, help="data-loading worker processes (default: 0)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                        help="teachers' arithmetic: bf16 autocast or fp32; auto = bf16 on CUDA, fp32 on CPU "
                             "(default: auto). Recorded per teacher; a resume must use the same")
    parser.add_argument("--reapply-availability", action="store_true",
                        help="only decide availability again in the finished store --out, by --availability "
                             "(and --threshold), from the stored scores and features; no teacher is run")
    parser.add_argument("--verify", action="store_true",
                        help="only recompute every chunk checksum of the finished store --out and report damage "
                             "(exit 1); no teacher is run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--check-data", choices=["sample", "full", "off"], default="sample",
                        help="when --out already holds rows: compare the content digests of the data's images and "
                             "captions with the store's, on a sample of rows or on all (default: sample)")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    recipe: dict[str, Any] = {}
    if args.config:
        import yaml

        from mmkd.recipe_files import resolve_recipe

        try:
            with open(resolve_recipe(args.config), encoding="utf-8") as f:
                recipe = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"--config: cannot read {args.config!r} ({e})") from None
        if not isinstance(recipe, dict):
            raise UsageError(f"--config: {args.config!r} must hold a mapping of options")
        recipe = {k.replace("-", "_"): v for k, v in recipe.items()}
        unknown = set(recipe) - set(_DEFAULTS) - {"data", "out", "teachers"}
        if unknown:
            raise UsageError(f"--config: unknown key(s) {sorted(unknown)}; allowed: data, out, teachers, "
                             f"{', '.join(_DEFAULTS)}")
    opts = {**_DEFAULTS, **{k: v for k, v in recipe.items() if k in _DEFAULTS}}
    for key in _DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    opts["data"] = args.data or recipe.get("data")
    opts["out"] = args.out or recipe.get("out")
    teachers = dict(recipe.get("teachers") or {})
    for item in args.teacher:
        name, sep, spec = item.partition("=")
        teachers[name.strip()] = spec.strip() if sep else ""
    opts["teachers"] = teachers
    problems = []
    if not opts["data"]:
        problems.append("--data: missing; pass the dataset to encode")
    if not opts["out"]:
        problems.append("--out: missing; pass the feature store folder")
    if not teachers:
        problems.append("--teacher: give at least one NAME=SPEC (see `mmkd teachers` for known names)")
    for key in ("batch_size", "chunk_rows", "candidates"):
        if int(opts[key]) < 1:
            problems.append(f"--{key.replace('_', '-')}: must be >= 1, got {opts[key]}")
    if problems:
        from mmkd.errors import ConfigError

        raise ConfigError(problems)
    return opts


def run(args: argparse.Namespace) -> int:
    from mmkd.data.pairs import index_source
    from mmkd.teachers import load_teacher
    from mmkd.teachers.extract import ExtractOptions, extract_features, format_table
    from mmkd.teachers.registry import find_known
    from mmkd.utils.console import Summary
    from mmkd.utils.dist import destroy, init_distributed, pick_device

    started = Summary("extract")
    if args.reapply_availability:
        return _reapply(args)
    if args.verify:
        return _verify(args)
    opts = _options(args)
    device = pick_device(opts["device"])
    dist_info = init_distributed(device.split(":")[0])
    if dist_info.distributed and device == "cuda":
        device = f"cuda:{dist_info.local_rank}"
    try:
        records, index_problems = index_source(opts["data"], opts["data_format"], opts["image_key"],
                                               opts["caption_key"], opts["id_key"], select=opts["select"] or (),
                                               license=opts["license"] or "",
                                               progress=not args.no_progress and dist_info.is_main)
        if not records:
            raise UsageError(f"--data: {opts['data']!r} holds no samples")
        teachers = {}
        for name, spec in opts["teachers"].items():
            if not spec:
                known = find_known(name)
                if known is None:
                    raise UsageError(f"--teacher: {name!r} is not a known teacher; write NAME=SPEC "
                                     f"(see `mmkd teachers`)")
                spec = known.name
            teachers[name] = load_teacher(spec, device=device, name=name)
        extract_opts = ExtractOptions(batch_size=int(opts["batch_size"]), chunk_rows=int(opts["chunk_rows"]),
                                      availability=opts["availability"], candidates=int(opts["candidates"]),
                                      threshold=float(opts["threshold"]), seed=int(opts["seed"]),
                                      num_workers=int(opts["workers"]), progress=not args.no_progress,
                                      check_data=args.check_data,
                                      precision=_resolve_precision(opts["precision"], device))
        summary = extract_features(records, teachers, opts["out"], extract_opts, dist_info,
                                   extra_manifest={"source": {"data": str(opts["data"]),
                                                              "format": opts["data_format"]}})
    finally:
        destroy()
    if summary is not None and summary.get("stopped_by_signal"):
        from mmkd.utils.signals import exit_code

        if dist_info.is_main:
            print(f"mmkd extract: stopped by {summary['signal']}; the written chunks are kept "
                  f"({summary['chunks_left']} chunk(s) left). Resume by running the same command again",
                  file=sys.stderr)
        return exit_code(summary["signal"])
    if summary is not None:
        print(format_table(summary["teachers"]))
        for warning in summary.get("warnings", []):
            print(f"mmkd extract: warning: {warning}", file=sys.stderr)
        skipped = {**summary.get("skipped", {}), **dict(index_problems)}
        print(f"feature store: {opts['out']}")
        _summarise(started, opts["out"], summary["teachers"], skipped)
    return 0


def _resolve_precision(precision: str, device: str) -> str:
    if precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"--precision: {precision!r} is not allowed; choose auto, fp32 or bf16")
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def _summarise(started, out: str, table: dict[str, dict[str, float]], skipped: dict[str, int]) -> None:
    from mmkd.utils.console import skipped_line

    num_rows = int(max((row["rows"] for row in table.values()), default=0))
    started.add("feature store", out)
    started.add("rows", f"{num_rows:,} samples x {len(table)} teacher(s)")
    started.add("available", ", ".join(f"{name} {row['share_available']:.0%}" for name, row in table.items()))
    started.add("samples", skipped_line(skipped, num_rows - sum(skipped.values()))
                + (" (kept as rows no teacher teaches)" if skipped else ""))
    started.emit()


def _reapply(args: argparse.Namespace) -> int:
    from mmkd.teachers.extract import format_table, reapply_availability

    if not args.out:
        raise UsageError("--out: give the feature store whose availability to re-decide")
    rule = args.availability or "rank"
    threshold = args.threshold if args.threshold is not None else _DEFAULTS["threshold"]
    summary = reapply_availability(args.out, rule, threshold)
    print(format_table(summary["teachers"]))
    for warning in summary.get("warnings", []):
        print(f"mmkd extract: warning: {warning}", file=sys.stderr)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from mmkd.data.feature_store import FeatureStore, StoreChecksumError

    if not args.out:
        raise UsageError("--out: give the feature store to verify")
    store = FeatureStore(args.out)
    problems = store.verify()
    if problems:
        raise StoreChecksumError(f"feature store {args.out!r}: {len(problems)} chunk array(s) differ from their "
                                 f"checksums: {'; '.join(problems[:5])}. Re-extract those teachers into a new folder")
    print(f"feature store {args.out}: {len(store.manifest.get('chunks', []))} chunk(s) of {len(store.teachers)} "
          f"teacher(s) verified, every checksum matches")
    return 0
