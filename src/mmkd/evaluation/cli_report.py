"""`mmkd report DIR`: tables, plots and an HTML page from a folder of evaluation results."""

from __future__ import annotations

import argparse

DESCRIPTION = """Turn a folder of `mmkd eval` results into:
  report.html     one self-contained page: the headline table (models × task types and overall,
                  95 % CI as ±, best per column marked), one plot per task, the per-dataset detail
  results.md      the same tables in markdown
  headline.csv    the headline table: model, column, value, ci_half_width, datasets_run,
                  datasets_listed, ranked, best
  results.csv     every (model, dataset, task, metric) with its 95 % CI
  plots/TASK.png  the task's headline metric per dataset, one marker per model, CI whiskers

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
    markdown = Path(written["markdown"]).read_text(encoding="utf-8")
    print(markdown.split("\n## Per dataset")[0].rstrip())  # the headline table; the rest is in the files
    return 0
