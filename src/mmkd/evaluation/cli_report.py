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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results.csv, results.md, report.html and plots/ in --out even when an earlier "
                             "`mmkd report` did not write them")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmkd.errors import UsageError
    from mmkd.evaluation.report import write_report

    if not Path(args.dir).is_dir():
        raise UsageError(f"DIR: {args.dir!r} is not a folder; give the --out folder of `mmkd eval`")
    out = Path(args.out) if args.out else Path(args.dir) / "report"
    _check_out(out, args.overwrite)
    written = write_report(args.dir, out)
    _claim(out, written)
    print(f"{written['num_results']} result(s) of {len(written['models'])} model(s): {', '.join(written['models'])}")
    for key in ("csv", "markdown", "html"):
        print(f"{key}: {written[key]}")
    for p in written["plots"]:
        print(f"plot: {p}")
    print()
    markdown = Path(written["markdown"]).read_text(encoding="utf-8")
    print(markdown.split("\n## Per dataset")[0].rstrip())  # the headline table; the rest is in the files
    return 0


# What `mmkd report` writes into --out, and the record that says so (so a rerun may replace them).
REPORT_FILES = ("results.csv", "results.md", "report.html")
OWNER_FILE = ".mmkd-report.json"


def _owned(out) -> set[str]:
    import json

    try:
        return set(json.loads((out / OWNER_FILE).read_text(encoding="utf-8")).get("files", []))
    except (OSError, ValueError, AttributeError):
        return set()


def _check_out(out, overwrite: bool) -> None:
    """--out must be a folder, and its report files ours (an earlier `mmkd report`) unless --overwrite."""
    from mmkd.utils.outputs import check_replaceable, refuse_file_as_folder

    refuse_file_as_folder(out, "--out")
    owned = _owned(out)
    targets = [out / name for name in REPORT_FILES]
    if (out / "plots").is_dir():
        targets += sorted(p for p in (out / "plots").glob("*.png"))
    check_replaceable(targets, lambda p: str(p.relative_to(out)) in owned, "--out",
                      "a report file", overwrite)


def _claim(out, written) -> None:
    from pathlib import Path

    from mmkd.utils.io import atomic_write_json

    files = [written["csv"], written["markdown"], written["html"], *written["plots"]]
    names = sorted(_owned(out) | {str(Path(f).relative_to(out)) for f in files})
    atomic_write_json(out / OWNER_FILE, {"command": "mmkd report", "files": names})
