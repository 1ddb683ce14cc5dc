"""`mmkd teachers`: the registry of known teachers (ids, dims, domains, licences, how to load)."""

from __future__ import annotations

import argparse
import importlib.util
import json

DESCRIPTION = """\
List the nine teachers of MMKD-CLIP that mmkd knows: Hugging Face id, embedding dim, domain,
licence, loader, and whether this installation can load them. Use a name alone as
`--teacher NAME` (its hub id, from the local Hugging Face cache) or point mmkd at a local copy
with `--teacher NAME=SPEC` (the template column shows the spec form).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the registry as JSON")
    parser.add_argument("--check", metavar="DIR", default="",
                        help="find which of the nine teachers are in DIR (one sub-folder each: bmca-clip, biomedclip, "
                             "unimed-clip, pmc-clip, quiltnet, genmedclip, plip, pubmedclip, medclip; see "
                             "mmkd.teachers.recipes), load each one and encode a probe image and captions; exit 1 "
                             "if a present teacher fails")


def loads_today(info) -> bool:
    """open_clip/transformers teachers always load; custom ones when their adapter module exists."""
    if not info.loader.startswith("custom:"):
        return True
    module = info.loader.split(":", 1)[1]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run(args: argparse.Namespace) -> int:
    from mmkd.teachers.registry import KNOWN_TEACHERS

    if args.check:
        return run_check(args.check, as_json=args.json)
    rows = []
    for info in KNOWN_TEACHERS.values():
        rows.append({**info.as_dict(), "loads_today": loads_today(info)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "dim", "loader", "loads", "hub id / spec", "domain", "licence")
    table = [(r["name"], str(r["embed_dim"]), r["loader"].replace("custom:mmkd.teachers.custom.", "custom:"),
              "yes" if r["loads_today"] else "no", r["spec"] or r["spec_template"], r["domain"], r["licence"])
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print("\nweights are never downloaded by extraction when HF_HUB_OFFLINE=1; to use a local copy: "
          "--teacher NAME=local-dir:PATH (open_clip) or NAME=hf:PATH (transformers)")
    return 0


def run_check(folder: str, as_json: bool = False) -> int:
    """`mmkd teachers --check DIR` (see mmkd.teachers.recipes.check_folder)."""
    from dataclasses import asdict

    from mmkd.teachers.recipes import check_folder, format_results

    results = check_folder(folder)
    if as_json:
        print(json.dumps([{k: v for k, v in asdict(r).items() if k != "provenance"} for r in results], indent=2))
    else:
        print(format_results(results))
    return 1 if any(r.status in ("error", "incomplete") for r in results) else 0
