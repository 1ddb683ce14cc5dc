"""`mmkd report DIR`: tables, plots and an HTML page from a folder of evaluation results."""

from __future__ import annotations

import argparse

DESCRIPTION = """Turn a folder of `mmkd eval` results into:
  results.csv     every (model, dataset, task, metric) with its 95 % CI
  results.md      markdown tables, models × datasets with a mean column, per task and metric
  plots/*.png     a bar chart per task (CI error bars) and a radar chart across tasks
  report.html     one self-contained page with the tables, the plots (embedded) and provenance

example:
  mmkd eval --model runs/a --model runs/b --tasks zero-shot --datasets real_mini --out results
  mmkd report results"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="results folder written by `mmkd eval --out DIR` (searched recursively)")
    parser.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: DIR/report)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmkd.errors import UsageError
    from mmkd.evaluation.report import write_report

    if not Path(args.dir).is_dir():
        raise UsageError(f"DIR: {args.dir!r} is not a folder; give the --out folder of `mmkd eval`")
    written = write_report(args.dir, args.out)
    print(f"{written['num_results']} result(s) of {len(written['models'])} model(s): {', '.join(written['models'])}")
    for key in ("csv", "markdown", "html"):
        print(f"{key}: {written[key]}")
    for p in written["plots"]:
        print(f"plot: {p}")
    print()
    print(Path(written["markdown"]).read_text(encoding="utf-8"))
    return 0
