"""`mmkd datasets`: list the datasets of a catalog, prepare one from its official download, check what is missing."""

from __future__ import annotations

import argparse
import os

from mmkd.errors import UsageError

DESCRIPTION = """Datasets of an evaluation catalog (default: `paper`, the MMKD-CLIP benchmark as far as it can be
identified, with public substitutes marked), under $MMKD_DATA.

  mmkd datasets list                      name, tasks, modality, licence, status, found under $MMKD_DATA
  mmkd datasets prepare NAME --from PATH  official download (archive or folder) -> the catalog's layout,
                                          counts per split and class checked against the published figures
  mmkd datasets check                     what is missing, where to get it and the prepare command; what
                                          is there is checked: files listed exist, images decode, features
                                          load, counts match PREPARED.json (exit 1 naming each problem)

examples:
  export MMKD_DATA=/data/biomed
  mmkd datasets prepare lc25000_lung --from ~/Downloads/LC25000.zip
  mmkd datasets prepare nct_crc_he --from NCT-CRC-HE-100K.zip --from CRC-VAL-HE-7K.zip
  mmkd datasets prepare pcam --from pcam/ --splits test
  mmkd eval --model SPEC --datasets paper --tasks all"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "prepare", "check"), help="what to do")
    parser.add_argument("names", nargs="*", metavar="NAME", help="dataset name(s) (prepare: exactly one)")
    parser.add_argument("--datasets", default="paper", metavar="CATALOG",
                        help="catalog YAML or built-in catalog name (default: %(default)s)")
    parser.add_argument("--from", dest="sources", action="append", default=[], metavar="PATH",
                        help="prepare: the official download, an archive or the folder it was unpacked to; repeat "
                             "for downloads in several parts")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="prepare: write here instead of the catalog's path under $MMKD_DATA")
    parser.add_argument("--splits", default="", metavar="NAMES",
                        help="prepare: comma-separated splits to write (e.g. test); all are counted (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="prepare: replace data already prepared")
    parser.add_argument("--accept-counts", action="store_true",
                        help="prepare: write even when the counts match no published figure")
    parser.add_argument("--copy", action="store_true",
                        help="prepare: copy files of an unpacked download instead of hard-linking them")
    parser.add_argument("--markdown", action="store_true", help="list: print a markdown table")


def _entries(catalog: str, names: list[str]):
    from mmkd.evaluation.runner import load_catalog

    entries = load_catalog(catalog)
    if names:
        known = {e.name for e in entries}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"NAME: {', '.join(unknown)} not in the catalog {catalog}; it has {', '.join(sorted(known))}")
        entries = [e for e in entries if e.name in names]
    return entries


def _status(entry) -> str:
    from mmkd.evaluation.prepare import data_root_unset, present

    if data_root_unset(entry):
        return "MMKD_DATA unset"
    return "found" if present(entry) else "absent"


def published_size(entry) -> str:
    """The first published figure of the entry, e.g. "train 100,000 / test 7,180" ('' when none)."""
    spec = entry.option("prepare")
    published = (spec or {}).get("published") if isinstance(spec, dict) else None
    if not published:
        return ""
    counts = published[0].get("counts") or {}
    parts = [f"{split} {sum(v.values()) if isinstance(v, dict) else v:,}" for split, v in counts.items()]
    return " / ".join(parts) + f" ({published[0].get('source', '')})"


def list_rows(entries) -> list[dict[str, str]]:
    rows = []
    for e in entries:
        rows.append({"name": e.name, "tasks": ",".join(e.tasks), "modality": e.modality or "",
                     "licence": str(e.option("licence", "")), "evidence": str(e.option("evidence", "")),
                     "converter": str((e.option("prepare") or {}).get("layout", "")) if isinstance(e.option("prepare"), dict) else "",
                     "source": str(e.option("source", "")), "size": published_size(e), "format": e.format,
                     "status": _status(e)})
    return rows


def _print_table(rows: list[dict[str, str]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in columns))


def run(args: argparse.Namespace) -> int:
    entries = _entries(args.datasets, args.names)
    if args.action == "list":
        rows = list_rows(entries)
        columns = ["name", "tasks", "modality", "licence", "evidence", "converter", "status"]
        if args.markdown:  # the documentation table (docs/BENCHMARK.md): no machine-specific status
            for r in rows:
                r["in mmkd"] = f"`prepare` ({r['converter']})" if r["converter"] else f"layout only ({r['format']})"
            columns = ["name", "tasks", "modality", "evidence", "source", "licence", "size (published)", "in mmkd"]
            print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
            for r in rows:
                r["size (published)"] = r["size"]
                print("| " + " | ".join(r[c].replace("|", "/") for c in columns) + " |")
            return 0
        else:
            _print_table(rows, columns)
        found = sum(r["status"] == "found" for r in rows)
        print(f"\n{found} of {len(rows)} dataset(s) found" + ("" if os.environ.get("MMKD_DATA") else
                                                          "; MMKD_DATA is not set"))
        return 0
    if args.action == "check":
        return _check(entries)
    if len(args.names) != 1:
        raise UsageError("prepare: give exactly one dataset NAME (see `mmkd datasets list`)")
    if not args.sources:
        raise UsageError(f"--from: missing; give the downloaded archive or folder of {args.names[0]} "
                         f"(`mmkd datasets check {args.names[0]}` says where to get it)")
    from mmkd.evaluation.prepare import prepare_dataset, target_of

    entry = entries[0]
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] or None
    manifest = prepare_dataset(entry, args.sources, out=args.out, overwrite=args.overwrite,
                               accept_counts=args.accept_counts, splits=splits, link=not args.copy)
    where = args.out or target_of(entry)[0]
    print(f"{entry.name}: prepared in {where} ({manifest['written'].get('format')})")
    return 0


def _target_shown(entry) -> str:
    """Where a dataset goes; a path under an unset $MMKD_DATA is shown as written, with what to do."""
    from mmkd.evaluation.prepare import data_root_unset

    if data_root_unset(entry):
        raw = str(entry.option("path", ""))
        return f"{raw.replace('${MMKD_DATA}', '$MMKD_DATA')}  (MMKD_DATA is not set: export MMKD_DATA=/your/data/folder)"
    return str(entry.path)


def _check(entries) -> int:
    from mmkd.evaluation.runner import absent_hint

    from mmkd.evaluation.prepare import read_manifest
    from mmkd.evaluation.prepare.verify import verify_prepared

    missing = [e for e in entries if _status(e) != "found"]
    damaged = 0
    for e in entries:
        if e in missing:
            continue
        problems = verify_prepared(e.path, e.format, read_manifest(e))
        damaged += bool(problems)
        print(f"{'damaged' if problems else 'found':<8} {e.name}  ({e.path})")
        for problem in problems:
            print(f"         - {problem}")
    for e in missing:
        print(f"missing  {e.name}  [{', '.join(e.tasks)}; {e.modality or '-'}; licence: {e.option('licence', '?')}]")
        print(f"         source: {e.option('source', '?')}")
        print(f"         get it: {absent_hint(e)}")
        if e.option("how_to_get"):
            print(f"         note:   {e.option('how_to_get')}")
        print(f"         goes to: {_target_shown(e)}")
    print(f"\n{len(entries) - len(missing)} of {len(entries)} dataset(s) found, {len(missing)} missing"
          + (f", {damaged} damaged (their problems are listed above; prepare them again with --overwrite)"
             if damaged else "") + ("" if os.environ.get("MMKD_DATA") else " (MMKD_DATA is not set)"))
    return 1 if damaged else 0
