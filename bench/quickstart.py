"""Run README.md's quick start exactly as written, in a fresh folder, and time every command.

The block between `<!-- quickstart:begin -->` and `<!-- quickstart:end -->` is read from
README.md; each `mmkd ...` line runs with this interpreter's mmkd (a shim on PATH), in an
empty working folder that holds nothing but what the commands write, offline
(HF_HUB_OFFLINE=1). Prints one line per command and the total, `FIGURE quickstart_minutes: X`
for the README, and the machine's load so a slow measurement can be read for what it is.

Usage: python bench/quickstart.py [--workdir DIR] [--keep]
Exit code 1 when a command fails (its output is shown).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_commands(readme: Path = README) -> list[str]:
    """The shell commands of the README's quick start block (comments and blank lines left out)."""
    text = readme.read_text(encoding="utf-8")
    match = re.search(r"<!-- quickstart:begin -->(.*?)<!-- quickstart:end -->", text, re.S)
    if match is None:
        raise SystemExit(f"{readme}: no quick start block (<!-- quickstart:begin --> ... <!-- quickstart:end -->)")
    code = "\n".join(re.findall(r"```bash\n(.*?)```", match.group(1), re.S))
    code = code.replace("\\\n", " ")
    return [line.strip() for line in code.splitlines() if line.strip() and not line.strip().startswith("#")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="", help="folder to run in (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmkd-quickstart-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shim = workdir / ".bin"
    shim.mkdir(exist_ok=True)
    (shim / "mmkd").write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mmkd \"$@\"\n")
    (shim / "mmkd").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    commands = quickstart_commands()
    print(f"quick start: {len(commands)} commands in {workdir} (load average at start: {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs)")
    total = time.perf_counter()
    for command in commands:
        started = time.perf_counter()
        proc = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        print(f"{seconds:7.1f} s  {command[:110]}", flush=True)
        if proc.returncode:
            print(f"failed with exit code {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            return 1
    minutes = (time.perf_counter() - total) / 60
    print(f"total: {minutes:.1f} min (load average at the end: {os.getloadavg()[0]:.1f})")
    print(f"FIGURE quickstart_minutes: {minutes:.2f}")
    if not args.workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
