"""Run every benchmark in bench/ (`bench_*.py`), print one line per benchmark, write bench/RESULTS.md.

Each benchmark is a standalone script that measures its own baseline in the same run and
prints `RATIO <name>: <ratio> (target <op> <bound>...)` (and optional `FIGURE <name>: <value>` lines),
<op> one of <=, <, >=, >. This runner checks every ratio against its stated target: a missed
target (or a ratio that states none) is marked `below target` in the console and in RESULTS.md.
This runner starts each in a fresh process (so memory and threads do not leak between
them), collects those lines, and writes bench/RESULTS.md with the machine (CPU model, cores,
torch version, GPU), the date, every ratio and figure, and the raw output of each script.

A benchmark that cannot run (a missing comparison environment, say) prints `CANNOT RUN: <why>` and exits
non-zero; that is a failure, reported with its reason, never a pass or a skip.

Usage: python bench/run_all.py [--only SUBSTRING] [--timeout SECONDS] [--results PATH] [--bench-dir DIR]
Exit code 1 when a benchmark fails, cannot run, prints no RATIO line, or misses a target (so `make bench` fails).
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_info  # noqa: E402

LINE_RE = re.compile(r"^(RATIO|FIGURE) ([\w.\-/]+): (.*)$")
CANNOT_RE = re.compile(r"^CANNOT RUN: (.*)$", re.M)
VALUE_RE = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
TARGET_RE = re.compile(r"target\s*(<=|>=|<|>|≤|≥)\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
_OPS = {"<=": lambda v, b: v <= b, "≤": lambda v, b: v <= b, "<": lambda v, b: v < b,
        ">=": lambda v, b: v >= b, "≥": lambda v, b: v >= b, ">": lambda v, b: v > b}


def check_target(text: str) -> tuple[bool, str]:
    """(met, explanation) of one RATIO line's text, e.g. `1.23x (target <= 1.10: ...)` -> (False, ...)."""
    value, target = VALUE_RE.match(text), TARGET_RE.search(text)
    if value is None or target is None:
        return False, "below target (no value or no `target <op> <bound>` to check)"
    v, op, bound = float(value.group(1)), target.group(1), float(target.group(2))
    if _OPS[op](v, bound):
        return True, f"ok ({v:g} {op} {bound:g})"
    return False, f"below target ({v:g} is not {op} {bound:g})"


def run_one(script: Path, timeout: int) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-u", str(script)], capture_output=True, text=True, timeout=timeout,
                              cwd=HERE.parent)
        output, code = proc.stdout + (("\n[stderr]\n" + proc.stderr[-4000:]) if proc.returncode else ""), proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        output, code = output + f"\n[timed out after {timeout} s]", 124
    lines = [m.groups() for m in map(LINE_RE.match, output.splitlines()) if m]
    ratios = [(n, v) for k, n, v in lines if k == "RATIO"]
    return {"name": script.stem, "code": code, "seconds": time.perf_counter() - start, "output": output,
            "failure": failure_reason(code, output, bool(ratios)),
            "ratios": ratios, "checks": [check_target(v) for _, v in ratios],
            "figures": [(n, v) for k, n, v in lines if k == "FIGURE"]}


def failure_reason(code: int, output: str, has_ratio: bool) -> str:
    """Why a benchmark failed, in one line ("" when it ran): its CANNOT RUN line, else its exit and last error."""
    cannot = CANNOT_RE.search(output)
    if cannot:
        return f"cannot run: {cannot.group(1)}"
    if code != 0:
        last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
        return f"exit {code}" + (f": {last[:200]}" if last else "")
    return "" if has_ratio else "no RATIO line"


def passed(r: dict) -> bool:
    return r["code"] == 0 and bool(r["ratios"]) and all(met for met, _ in r["checks"])


def write_results(path: Path, results: list[dict], info: dict, started: str) -> None:
    md = ["# Benchmark results", "",
          f"Date: {started} (written by `make bench` / `bench/run_all.py`; each ratio is measured against its",
          "baseline in the same run — see docs/PERFORMANCE.md for what each one means).", "",
          f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} (intra-op threads per benchmark: "
          f"MMKD_BENCH_THREADS, default 1); Python {info['python']}; GPU: {info['gpu']}.", "",
          "| benchmark | ratio | value | wall s | status |", "|---|---|---|---|---|"]
    for r in results:
        if r["failure"]:
            md.append(f"| {r['name']} | - | - | {r['seconds']:.0f} | FAILED ({r['failure'].replace('|', '/')}) |")
            continue
        for (name, value), (_, status) in zip(r["ratios"], r["checks"]):
            md.append(f"| {r['name']} | {name} | {value} | {r['seconds']:.0f} | {status} |")
    figures = [(r["name"], n, v) for r in results for n, v in r["figures"]]
    if figures:
        md += ["", "| benchmark | figure | value |", "|---|---|---|"]
        md += [f"| {b} | {n} | {v} |" for b, n, v in figures]
    md += ["", "## Raw output", ""]
    for r in results:
        md += [f"### {r['name']}", "", "```", r["output"].strip()[-6000:], "```", ""]
    path.write_text("\n".join(md))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run only benchmarks whose file name contains this")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per benchmark")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"), help="where to write the results")
    parser.add_argument("--bench-dir", default=str(HERE), help="folder of the bench_*.py scripts (default: bench/)")
    args = parser.parse_args()
    scripts = sorted(p for p in Path(args.bench_dir).glob("bench_*.py") if args.only in p.name)
    if not scripts:
        print(f"no benchmark matches {args.only!r}", file=sys.stderr)
        return 1
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, GPU {info['gpu']}", flush=True)
    results = []
    for script in scripts:
        r = run_one(script, args.timeout)
        results.append(r)
        ratios = "; ".join(f"{n}: {v}  [{why}]" for (n, v), (_, why) in zip(r["ratios"], r["checks"])) \
            or "no RATIO line"
        status = f"  [FAILED: {r['failure']}]" if r["failure"] else ""
        print(f"{r['name']:<28} {ratios}  ({r['seconds']:.0f} s){status}", flush=True)
        write_results(Path(args.results), results, info, started)  # keep what is done if a later one hangs
    print(f"results written to {args.results}")
    missed = [f"{r['name']}: {n}" for r in results for (n, _), (met, _) in zip(r["ratios"], r["checks"]) if not met]
    if missed:
        print(f"below target: {', '.join(missed)}", flush=True)
    failed = [f"{r['name']} ({r['failure']})" for r in results if r["failure"]]
    if failed:
        print(f"failed: {'; '.join(failed)}", flush=True)
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
