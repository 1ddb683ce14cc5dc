"""`mmkd import-features`: the MMKD-CLIP authors' per-sample features -> a feature store."""

from __future__ import annotations

import argparse
import json
import sys

from mmkd.errors import UsageError

DESCRIPTION = """\
Convert the authors' pre-extracted features (meta.jsonl plus one folder per sample with
clips_output.pt and clips_project_output.pt) into a feature store, so nothing has to be
re-extracted. Raw features become each teacher's image/text arrays, `available_clips` the
availability, projected features the `projected_image`/`projected_text` arrays (precomputed
alignment targets). Streams, resumes after a crash (rerun the same command), and opens the
pickles with torch.load(weights_only=True) only.

example:
  mmkd import-features MMKDCLIP_DATA --out features/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", help="folder holding meta.jsonl and the per-sample folders")
    parser.add_argument("--out", required=True, help="feature store folder (created, or resumed)")
    parser.add_argument("--chunk-rows", type=int, default=1024, help="rows per committed chunk (default: 1024)")
    parser.add_argument("--teacher-dims", action="append", default=[], metavar="NAME=DIM",
                        help="teacher keys and raw dims to import (repeatable); default: discovered from the files "
                             "(available_clips of meta.jsonl and the <Name>_img/_txt tensors; the authors' release "
                             "has BMCA=768, BiomedCLIP=512, UniMedCLIP=512, PMCCLIP=768, QuiltNet=512, "
                             "GenMedClip=512, PLIP=512, PUBMEDCLIP=512)")
    parser.add_argument("--projected-dim", type=int, default=None,
                        help="dim of the projected features (default: read from clips_project_output.pt; 512)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _dims(items: list[str]) -> dict[str, int] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, _, dim = item.partition("=")
        if not name or not dim.isdigit() or int(dim) < 1:
            raise UsageError(f"--teacher-dims: {item!r} is not NAME=DIM (e.g. BMCA=768)")
        out[name] = int(dim)
    return out


def run(args: argparse.Namespace) -> int:
    from mmkd.teachers.extract import format_table
    from mmkd.teachers.import_authors import import_author_features

    if args.chunk_rows < 1:
        raise UsageError(f"--chunk-rows: must be >= 1, got {args.chunk_rows}")
    summary = import_author_features(args.root, args.out, chunk_rows=args.chunk_rows,
                                     teachers=_dims(args.teacher_dims), projected_dim=args.projected_dim,
                                     progress=not args.no_progress)
    print(format_table(summary["teachers"]))
    if summary.get("listed_without_features"):
        print(f"warning: listed in available_clips but without features in the files read, not imported: "
              f"{', '.join(summary['listed_without_features'])}; pass --teacher-dims NAME=DIM to import them",
              file=sys.stderr)
    if summary["problems"]:
        print(f"samples with problems (kept as unavailable rows): {json.dumps(summary['problems'])}",
              file=sys.stderr)
    print(f"feature store: {args.out}")
    return 0
