"""`mmkd data`: build a data source's index, save metadata selections as reusable `--data` folders, and
pack samples into resized shards."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Index a data source once, and choose samples by metadata.

  mmkd data index  --data SHARDS_OR_TABLE           build (or refresh) the persistent index now,
                                                    e.g. on one node with many cores before a
                                                    multi-node job; later launches map it
  mmkd data select --data SHARDS --select FIELD=V1,V2 [--select ...] [--license commercial]
                   --out SUBSET                     save the chosen samples; prints counts per
                                                    modality and licence. SUBSET is then a --data
                                                    for pretrain, extract and distill.
  mmkd data pack SUBSET --out PACKED [--size 256] [--quality 90]
                                                    decode the samples once: write them as
                                                    webdataset shards with JPEGs resized to a
                                                    shorter side of --size (same sample ids, order,
                                                    captions, metadata, licence folders). PACKED is
                                                    then a --data; rerun to resume.

Clauses: a sample is kept when, for every clause, one of its FIELD values is listed (clauses on
different fields are ANDed, values ORed). FIELD is a key of the shards' per-sample JSON (for
BIOMEDICA: image_primary_label, image_secondary_label, image_panel_type, image_panel_subtype,
image_label_id, article_license; plus subset = the shard's first folder and license_group) or
a CSV/JSONL column. A YAML file (FIELD: [values]) holds long lists: --select recipe.yaml, or a packaged one by name.

examples:
  mmkd data select --data biomedica/ --select mmkd_b16/select-26-modalities \\
      --modality-key image_secondary_label --license commercial --out data/paper-26
  mmkd data pack data/paper-26 --out data/paper-26-256
  torchrun --nproc_per_node 8 -m mmkd pretrain --data data/paper-26-256 ...
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["index", "select", "pack"],
                        help="index: build the index; select: save a selection; pack: write resized shards")
    parser.add_argument("source", nargs="?", default="", help="pack: the selection or shards to pack (or --data)")
    parser.add_argument("--data", default="", help="webdataset shards (a folder, searched recursively; a .tar; a "
                                                   "glob; a {000..009} range) or a CSV/JSONL file")
    parser.add_argument("--format", default="auto", choices=["auto", "csv", "jsonl", "webdataset"],
                        help="format of --data (default: from the name)")
    parser.add_argument("--select", action="append", default=[], metavar="FIELD=V1,V2",
                        help="a metadata clause (repeatable), or a YAML file of FIELD: [values]")
    parser.add_argument("--license", default="", choices=["", "commercial", "noncommercial"],
                        help="keep samples whose licence allows this use (default: all)")
    parser.add_argument("--modality-key", default="modality",
                        help="field naming a sample's modality (default: modality; BIOMEDICA: image_secondary_label)")
    parser.add_argument("--image-key", default="image", help="CSV/JSONL column with the image path (default: image)")
    parser.add_argument("--caption-key", default="caption",
                        help="CSV/JSONL column, or key of a shard's .json, with the caption (default: caption)")
    parser.add_argument("--id-key", default="sample_id", help="CSV/JSONL column with the sample id (default: sample_id)")
    parser.add_argument("--index-field", action="append", default=[], metavar="FIELD",
                        help="another JSON key / column to index for selection (repeatable)")
    parser.add_argument("--index-dir", default="", help="where the index lives (default: $MMKD_CACHE/index/..., i.e. ~/.cache/mmkd/index/...)")
    parser.add_argument("--workers", type=int, default=0,
                        help="indexing / packing processes (default: 0 = every core)")
    parser.add_argument("--size", type=int, default=256, help="pack: shorter side of the packed images, px (default: "
                                                              "256; smaller images are kept as they are)")
    parser.add_argument("--quality", type=int, default=90, help="pack: JPEG quality of the packed images (default: 90)")
    parser.add_argument("--check", default="stat", choices=["stat", "full"],
                        help="how shards are checked for changes: stat = size and mtime (default); full = also "
                             "re-list every shard's headers")
    parser.add_argument("--out", help="select: the selection folder to write; pack: the folder of packed shards")
    parser.add_argument("--overwrite", action="store_true",
                        help="select: replace the selection already in --out (runs trained on it refuse to resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mmkd.data import select as sel
    from mmkd.data.index_build import ensure_index, resolve_source
    from mmkd.data.pairs import detect_format
    from mmkd.data.sources import refuse_urls
    from mmkd.errors import UsageError

    if args.action != "index" and not args.out:
        raise UsageError(f"--out: give the folder to write the {'selection' if args.action == 'select' else 'packed shards'} "
                         f"into")
    if args.workers < 0:
        raise UsageError(f"--workers: {args.workers} is not allowed; use 0 (every core) or more")
    if args.source and args.data and args.source != args.data:
        raise UsageError(f"--data: give the data once (either {args.source!r} or --data {args.data!r})")
    args.data = args.data or args.source
    if not args.data:
        raise UsageError(f"--data: give the data to {args.action}, e.g. `mmkd data {args.action} --data SHARDS`")
    if args.action == "pack":
        from mmkd.data.pack import pack

        summary = pack(args.data, args.out, args.size, args.quality, args.workers, not args.no_progress)
        print(json.dumps({k: v for k, v in summary.items() if k != "format"}))
        return 0
    refuse_urls(args.data)
    fmt = detect_format(args.data) if args.format == "auto" else args.format
    if fmt == "selection":
        raise UsageError(f"--data: {args.data} is already a selection; give the shards or table it was made from")
    clauses = sel.parse_clauses(args.select, args.license, what="--select")
    fields = tuple(dict.fromkeys((args.modality_key, *args.index_field, *clauses)))
    source = resolve_source(args.data, fmt, args.image_key, args.caption_key, args.id_key, fields, args.index_dir)
    index = ensure_index(source, args.workers, not args.no_progress, args.check)
    damaged = sum(1 for s in index.shards if s.get("damaged"))
    bad_json = sum(int(s.get("bad_json", 0)) for s in index.shards)
    duplicated = [s for s in index.shards if s.get("duplicate_keys")]
    duplicates = sum(int(s["duplicate_keys"]) for s in duplicated)
    summary = {"index": str(index.folder), "num_samples": index.num_samples, "num_files": len(index.shards),
               "damaged_shards": damaged, "unreadable_json": bad_json, "duplicate_keys": duplicates,
               "index_bytes_per_sample": round(index.nbytes() / max(1, index.num_samples), 1),
               "fields": {k: len(v) for k, v in index.fields.items()}}
    if duplicated:
        shown = "; ".join(f"{s['path']}: {', '.join(map(repr, s['duplicate_examples']))}" for s in duplicated[:3])
        print(f"warning: {duplicates} sample(s) in {len(duplicated)} shard(s) reuse a key an earlier sample of the "
              f"same shard has ({shown}); only the first sample of each key is read. Give every sample of a shard "
              f"its own key (rewrite the shard) to train on the others", file=sys.stderr)
    if args.action == "index":
        print(json.dumps(summary))
        return 0
    rows, modality, vocab = sel.evaluate(index, clauses, args.modality_key)
    if not len(rows):
        raise UsageError(f"--select: no sample of {args.data} matches {clauses or 'the licence'}; check the "
                         f"field names and values (indexed fields: {', '.join(sorted(index.fields))})")
    meta = sel.write_selection(args.out, index, {"data": _absolute(args.data), "format": fmt,
                                                 "image_key": args.image_key, "caption_key": args.caption_key,
                                                 "id_key": args.id_key}, clauses, args.license, args.modality_key,
                               rows, modality, vocab, overwrite=args.overwrite)
    print(sel.format_counts(meta["counts"], index.num_samples))
    print(json.dumps({**summary, "selection": str(args.out), "selected": meta["num_samples"],
                      "selection_bytes_per_sample": meta["bytes_per_sample"]}))
    if damaged or bad_json:
        print(f"note: {damaged} damaged shard(s) (members after the damage are not indexed) and {bad_json} "
              f"sample(s) whose JSON could not be read (they match no clause)", file=sys.stderr)
    return 0


def _absolute(spec: str) -> str:
    import os

    return spec if os.path.isabs(spec) else os.path.abspath(spec)
