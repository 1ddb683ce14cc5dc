"""README.md's quick start: every command in it is a real command with options that parse (fast), and
the whole block runs offline from an empty folder (slow; `python bench/quickstart.py` times it)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from quickstart import quickstart_commands  # noqa: E402


def test_the_quick_start_runs_every_command_but_two_with_options_that_parse():
    from mmkd.cli import COMMANDS, _command_parser
    from mmkd.training.cli_common import config_from_args

    commands = quickstart_commands()
    used = set()
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "mmkd", line
        name, rest = argv[1], argv[2:]
        used.add(name)
        module, parser = _command_parser(name)
        if getattr(module, "ACCEPTS_OVERRIDES", False):
            args, unknown = parser.parse_known_args(rest)
            config_from_args(args, unknown, stage=name, base=getattr(module, "BASE_DEFAULTS", None))  # validates
        else:
            parser.parse_args(rest)
    # import-features needs the authors' data and demo is the larger run: the README says so
    assert set(COMMANDS) - used == {"import-features", "demo"}


@pytest.mark.slow  # about a dozen trainings and evaluations of tiny models
def test_the_quick_start_runs_offline_from_an_empty_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quickstart.py"), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert (tmp_path / "runs" / "qs" / "export" / "open_clip_config.json").is_file()
    assert (tmp_path / "runs" / "qs" / "eval" / "report" / "report.html").is_file()
