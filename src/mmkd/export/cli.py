"""`mmkd export`: a checkpoint -> an open_clip-loadable folder with a model card (and, optionally, ONNX)."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = """Export a trained student as a folder that open_clip loads with its own functions:

  model, _, preprocess = open_clip.create_model_and_transforms("local-dir:OUT")
  tokenizer = open_clip.get_tokenizer("local-dir:OUT")

OUT holds open_clip_config.json, open_clip_model.safetensors (bit-identical to the checkpoint),
the HF text model's config and tokenizer files (HF text towers), a model card README.md (architecture,
training data, teachers and their licences with the most restrictive one stated first, distillation
settings, evaluation results from RUN/eval) and mmkd_export.json (provenance and the parity check:
open_clip's embeddings of the export against mmkd's, max abs diff <= 1e-5).

Examples:
  mmkd export --checkpoint runs/distill --out exports/mmkd-tiny
  mmkd export --checkpoint runs/distill/checkpoints/step_00000300 --out exports/s300 --onnx
  mmkd export --relink exports/mmkd-tiny      # after moving a folder with an HF text tower
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="a run directory (its latest checkpoint is used) or a checkpoint folder "
                             "RUN/checkpoints/step_XXXXXXXX")
    parser.add_argument("--out", metavar="DIR", help="the folder to write; must be new or empty (see --overwrite)")
    parser.add_argument("--name", default="", help="model name in the card (default: the --out folder's name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out when it is an earlier `mmkd export` folder (other folders are never deleted)")
    parser.add_argument("--hf-text-path", default="", metavar="DIR",
                        help="HF text towers: local folder with the text model's config.json and tokenizer files, "
                             "when the checkpoint does not hold them")
    parser.add_argument("--hf-model-name", default="", metavar="NAME",
                        help="HF text towers: what open_clip_config.json names as hf_model_name. Default: the export "
                             "folder's absolute path (loads offline; rerun with --relink after moving it). Give a hub id "
                             "(e.g. microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract) to publish the folder")
    parser.add_argument("--eval", dest="eval_paths", action="append", default=None, metavar="PATH",
                        help="evaluation result JSON files or folders for the card (repeatable; default: RUN/eval)")
    parser.add_argument("--data-licence", default="", metavar="TEXT",
                        help="licence of the training data, stated in the card and counted for the most restrictive one")
    parser.add_argument("--licence", default="", metavar="TEXT",
                        help="licence to declare for the exported weights (default: the most restrictive one found)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write onnx/image_encoder.onnx and onnx/text_encoder.onnx, checked against PyTorch "
                             "(needs `pip install 'mmkd[onnx]'`)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip loading the export back with open_clip and comparing embeddings with mmkd's")
    parser.add_argument("--relink", metavar="DIR", default="",
                        help="instead of exporting: point a moved export folder's HF text-tower reference at its new path")


def run(args: argparse.Namespace) -> int:
    from mmkd.errors import UsageError
    from mmkd.export.exporter import export
    from mmkd.export.folder import relink
    from mmkd.utils.console import Summary

    started = Summary("export")
    if args.relink:
        print(f"relinked {relink(args.relink)}")
        return 0
    if not args.checkpoint or not args.out:
        missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--out", args.out)) if not value]
        raise UsageError(f"{' and '.join(missing)}: required; e.g. `mmkd export --checkpoint runs/distill --out "
                         f"exports/model`")
    manifest = export(args.checkpoint, args.out, name=args.name, overwrite=args.overwrite,
                      hf_text_path=args.hf_text_path, hf_model_name=args.hf_model_name, eval_paths=args.eval_paths,
                      data_licence=args.data_licence, licence=args.licence, onnx=args.onnx,
                      verify=not args.no_verify)
    out = Path(args.out).resolve()
    strictest = manifest["card"]["most_restrictive"]
    print(f"exported {manifest['source_checkpoint']} -> {out}")
    if "parity" in manifest:
        p = manifest["parity"]
        print(f"open_clip parity: image {p['image_max_abs_diff']:.1e}, text {p['text_max_abs_diff']:.1e} "
              f"(tolerance {p['tolerance']:.0e}) {'ok' if p['passed'] else 'FAILED'}")
    if "onnx" in manifest:
        p = manifest["onnx"]["parity"]
        print(f"onnx parity: image {p['image_max_abs_diff']:.1e}, text {p['text_max_abs_diff']:.1e} -> {out / 'onnx'}")
    if strictest["rank"] >= 0:
        print(f"most restrictive licence: {', '.join(strictest['licences'])} ({', '.join(strictest['sources'])})")
    print(f'load it: open_clip.create_model_and_transforms("local-dir:{out}")')
    started.add("folder", out)
    started.add("from", manifest["source_checkpoint"])
    if "parity" in manifest:
        started.add("open_clip parity", "ok" if manifest["parity"]["passed"] else "FAILED")
    else:
        started.add("open_clip parity", "not checked (--no-verify)")
    if "onnx" in manifest:
        started.add("onnx", out / "onnx")
    unknown = manifest["card"].get("unknown_licences") or []
    started.add("licence", "; ".join(strictest["licences"]) or "none recorded")
    if unknown:
        started.add("licence unknown", f"{', '.join(unknown)} (the card says so and names none for them)")
    started.emit()
    return 0
