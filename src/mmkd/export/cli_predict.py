"""`mmkd predict`: zero-shot labels for images, as a ranked table per image or as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DESCRIPTION = """Zero-shot prediction: rank the given labels for each image with a CLIP model.

Each label is embedded as the mean of its prompt embeddings over the templates (default: a built-in
biomedical set; --templates FILE: one template per line with {} for the label, or a YAML list);
probabilities are the softmax of the model's scaled cosine similarities.

Examples:
  mmkd predict --model exports/mmkd-tiny --image xray.png --labels "pneumonia;normal"
  mmkd predict --model runs/distill --image a.png --image b.png --labels "red;green;blue" --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SPEC",
                        help="an mmkd run directory, checkpoint or export folder, or any spec `mmkd.load_model` "
                             "accepts (open_clip local-dir:/hf-hub:, transformers hf: folders)")
    parser.add_argument("--image", dest="images", action="append", required=True, metavar="PATH",
                        help="image file to classify (repeat for several)")
    parser.add_argument("--labels", required=True, metavar="'A;B;C'",
                        help="candidate labels separated by ';', e.g. \"pneumonia;normal\"")
    parser.add_argument("--templates", default="", metavar="FILE",
                        help="prompt templates: .txt with one template per line ({} = the label) or a .yaml list")
    parser.add_argument("--top", type=int, default=0, metavar="K",
                        help="show only the K most probable labels per image (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")


def parse_labels(text: str) -> list[str]:
    """Labels from 'a;b;c'; blank parts (a trailing ';') are dropped, duplicates and an empty list are errors."""
    from mmkd.export.inference import check_labels

    return check_labels([part for part in text.split(";") if part.strip()], where="--labels")


def predict(model, image_paths: list[str], labels: list[str], templates: list[str] | None = None,
            top: int = 0, batch_size: int = 64, device: str = "cpu") -> list[dict[str, Any]]:
    """Per image: {"image", "ranking": [{"label", "probability"}...] best first} (top K when top > 0).

    Images are opened before the model is loaded, so a bad path fails fast.
    """
    from mmkd.export.inference import load_image, zero_shot

    pil_images = [load_image(path, where="--image") for path in image_paths]
    probs_NC = zero_shot(model, pil_images, labels, templates, batch_size=batch_size, device=device)
    results = []
    for path, probs_C in zip(image_paths, probs_NC):
        order = probs_C.argsort(descending=True).tolist()
        order = order[:top] if top > 0 else order
        results.append({"image": str(path),
                        "ranking": [{"label": labels[i], "probability": float(probs_C[i])} for i in order]})
    return results


def format_table(result: dict[str, Any]) -> str:
    width = max(len(r["label"]) for r in result["ranking"])
    lines = [result["image"], f"  {'rank':>4}  {'label':<{width}}  probability"]
    for rank, row in enumerate(result["ranking"], 1):
        lines.append(f"  {rank:>4}  {row['label']:<{width}}  {row['probability']:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mmkd.errors import UsageError

    for path in args.images:  # before any heavy import, so the message comes fast
        if not Path(path).is_file():
            raise UsageError(f"--image: file {path!r} does not exist; check the path")
    labels = parse_labels(args.labels)
    if args.top < 0:
        raise UsageError(f"--top: {args.top} is negative; use 0 (all labels) or a positive K")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: {args.batch_size} must be at least 1")
    from mmkd.utils.dist import checked_device

    device = checked_device(args.device)
    templates = None
    if args.templates:
        from mmkd.evaluation.prompts import read_templates

        try:
            templates = read_templates(args.templates)
        except UsageError as e:
            raise UsageError(f"--templates: {e}") from None
    results = predict(args.model, args.images, labels, templates, args.top, args.batch_size, device)
    if args.json:
        print(json.dumps({"model": args.model, "labels": labels, "templates": templates or "default",
                          "results": results}, indent=2))
    else:
        print("\n\n".join(format_table(r) for r in results))
    return 0
