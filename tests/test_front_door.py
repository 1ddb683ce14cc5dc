"""What a person meets at the command line: help with defaults, a closing summary, only our warnings,
one line for an internal error (the traceback with --debug)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import run_cli
from helpers import make_pairs

TESTS = Path(__file__).resolve().parent


def _help(name: str, capsys) -> str:
    from mmkd.cli import main

    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _option_blocks(text: str) -> dict[str, str]:
    """'--flag' -> its help entry as one line (the option line and its indented continuation lines)."""
    blocks: dict[str, str] = {}
    keys: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            keys = re.findall(r"(?<![\w-])--?\w[\w.\-]*", invocation)
            for key in keys:
                blocks[key] = line.strip()
        elif keys and line.startswith("    "):
            for key in keys:  # argparse wraps after hyphens too: "random-" / "available"
                blocks[key] += ("" if blocks[key].endswith("-") else " ") + line.strip()
        else:
            keys = []
    return blocks


def test_python_m_mmkd_help_lists_every_command_and_the_global_flags():
    from mmkd.cli import COMMANDS

    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\b", r.stdout, re.M), name
    assert "--verbose" in r.stdout and "--debug" in r.stdout


@pytest.mark.parametrize("name", ["pretrain", "teachers", "extract", "import-features", "align", "distill", "eval",
                                  "report", "export", "predict", "synth", "demo"])
def test_every_option_with_a_default_shows_it(name, capsys):
    from mmkd.cli import _command_parser

    blocks = _option_blocks(_help(name, capsys))
    _, parser = _command_parser(name)
    # (pretrain and distill take their defaults from the config, not argparse: see the next test)
    for action in parser._actions:
        default = action.default
        if (not action.option_strings or action.required or isinstance(default, bool)
                or default in (None, "", [], argparse.SUPPRESS)):
            continue
        flag = action.option_strings[-1]
        assert "default" in blocks[flag].lower(), f"mmkd {name} {flag}: {blocks[flag]!r}"
        assert str(default) in blocks[flag] or "default" in (action.help or ""), blocks[flag]


def _shown_default(block: str) -> str:
    found = re.findall(r"default: ([^)]*)\)", block)
    assert found, block
    return found[-1]


def _same(shown: str, actual) -> bool:
    if isinstance(actual, bool):
        return shown == str(actual).lower()
    if isinstance(actual, (int, float)):
        return float(shown) == pytest.approx(float(actual))
    if actual in ("", [], {}):
        return shown == "none"
    return shown == str(actual)


@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_training_help_lists_every_config_field_with_the_default_a_run_gets(stage, capsys):
    from mmkd.cli import _command_parser
    from mmkd.config import FLAG_ALIASES, Config
    from mmkd.training.cli_common import config_from_args

    text = _help(stage, capsys)
    blocks = _option_blocks(text)
    # the config a run gets when nothing is set but what validation needs
    module, parser = _command_parser(stage)
    args, rest = parser.parse_known_args(["--data", "x.csv", "--store", "s"])
    cfg = config_from_args(args, rest, stage=stage, base=getattr(module, "BASE_DEFAULTS", None))
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), section.name)):
            key = f"{section.name}.{f.name}"
            assert f"--{key}" in blocks, f"mmkd {stage} --help lacks --{key}"
            actual = getattr(getattr(cfg, section.name), f.name)
            if key in ("data.path", "distill.store"):
                continue  # set above
            if actual in ("", [], {}) and "(default: none)" not in blocks[f"--{key}"]:
                # unset, and the field's own description says what happens then ("default: STORE/...")
                assert "default" in blocks[f"--{key}"].lower(), blocks[f"--{key}"]
                continue
            assert _same(_shown_default(blocks[f"--{key}"]), actual), (key, blocks[f"--{key}"], actual)
    for flag, key in FLAG_ALIASES.items():  # the short forms show the same default
        if key not in ("data.path", "distill.store"):
            section, name = key.split(".")
            assert _same(_shown_default(blocks[f"--{flag}"]), getattr(getattr(cfg, section), name)), blocks[f"--{flag}"]
    expected = {"pretrain": ("5e-5", "2000", "runs/pretrain"), "distill": ("1e-6", "0", "runs/distill")}[stage]
    assert _shown_default(blocks["--lr"]) == expected[0]
    assert _shown_default(blocks["--optim.warmup_steps"]) == expected[1]
    assert _shown_default(blocks["--out"]) == expected[2]


def test_each_field_is_described_once_beside_its_definition(capsys):
    """The help text of a config field is the comment written beside it in mmkd/config.py."""
    import mmkd.config as config

    source = inspect.getsource(config)
    text = _help("pretrain", capsys)
    blocks = _option_blocks(text)
    for section in dataclasses.fields(config.Config):
        for f in dataclasses.fields(getattr(config.Config(), section.name)):
            line = re.search(rf"^    {f.name}: [^\n]*?  # ([^\n]+)$", source, re.M)
            assert line, f"{section.name}.{f.name} has no comment in mmkd/config.py saying what it is"
            assert " ".join(line.group(1).split()) in " ".join(blocks[f"--{section.name}.{f.name}"].split())


def test_dotted_options_keep_command_line_order_and_parse_like_the_config(tmp_path):
    from mmkd.cli import _command_parser
    from mmkd.training.cli_common import config_from_args

    _, parser = _command_parser("pretrain")
    args, rest = parser.parse_known_args(["--data", "x.csv", "--optim.lr", "1e-3", "--train.compile",
                                          "--optim.lr=2e-3", "--optim.warmup-steps", "7"])
    cfg = config_from_args(args, rest, stage="pretrain")
    assert cfg.optim.lr == pytest.approx(2e-3) and cfg.train.compile is True and cfg.optim.warmup_steps == 7


def test_training_ends_with_a_human_summary_on_stderr_and_json_on_stdout(tmp_path, capsys):
    from mmkd.cli import main

    pairs = make_pairs(tmp_path / "toy", n=24)
    for i in (1, 5, 9, 13):
        (pairs.parent / "img" / f"{i:05d}.png").unlink()
    rc = main(["pretrain", "--data", str(pairs), "--out", str(tmp_path / "run"), "--max-steps", "2",
               "--batch-size", "8", "--train.progress", "false"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])  # stdout: the JSON, as before
    skipped = result["num_skipped_samples"]["missing_file"]
    seen = result["num_samples_seen"]
    assert skipped >= 1 and seen + skipped == 16
    err_lines = err.splitlines()
    start = [i for i, line in enumerate(err_lines) if line.startswith("mmkd pretrain: finished in ")]
    assert len(start) == 1, err  # the summary closes the output (notes of the run may come before it)
    lines = dict(line.strip().split(": ", 1) for line in err_lines[start[0] + 1:])
    assert all(line.startswith("  ") for line in err_lines[start[0] + 1:])
    assert lines["run folder"] == str(tmp_path / "run")
    assert Path(lines["checkpoint"]).is_dir() and Path(lines["checkpoint"]).parent.parent == tmp_path / "run"
    assert lines["steps"].strip() == "2 of 2"
    share = round(100 * skipped / (skipped + seen))
    assert lines["samples"].strip() == (f"{seen} seen; {share} % of samples were skipped ({skipped} of "
                                        f"{skipped + seen}): missing file {skipped}")


# --- warnings, third-party noise, internal errors: commands registered for the test ------------------------------

def add_arguments(parser):
    parser.add_argument("--what", default="noise")


def run(args):
    """A command that behaves like a library call deep inside mmkd: our warning twice, third-party noise."""
    if args.what == "boom":
        raise RuntimeError("the index is\nbroken")
    if args.what == "usage":
        from mmkd.errors import UsageError

        raise UsageError("--what: 'usage' is a test")
    from mmkd.training.telemetry import MetricsLogger

    for _ in range(2):  # mmkd's own warning, raised twice: shown once
        MetricsLogger(Path(os.environ["MMKD_TEST_NOT_A_DIR"]), enabled=True).log(0, {"x": 1.0})
    warnings.warn("a third-party notice", UserWarning, stacklevel=1)  # raised from a file outside mmkd
    warnings.warn("a third-party deprecation", FutureWarning, stacklevel=1)
    logging.getLogger("transformers.modeling_utils").warning("transformers log line")
    logging.warning("a root log line, as open_clip writes them")
    from huggingface_hub.utils import tqdm as hub_tqdm

    for _ in hub_tqdm(range(3), desc="hub-bar"):
        pass
    return 0


def _registered(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from mmkd import cli\n"
            "cli.COMMANDS['noisy'] = ('test_front_door', 'a test command')\n"
            f"sys.exit(cli.main({argv!r}))")
    env = {**os.environ, "MMKD_TEST_NOT_A_DIR": str(not_a_dir)}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_only_our_warnings_show_once_without_source_lines(tmp_path):
    quiet = _registered(["noisy"], tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    ours = [line for line in quiet.stderr.splitlines() if "cannot append to" in line]
    assert len(ours) == 1 and ours[0].startswith("mmkd noisy: warning: cannot append to"), quiet.stderr
    assert quiet.stderr.strip() == ours[0], quiet.stderr  # nothing else: no source line, no third-party noise


def test_verbose_shows_third_party_warnings_logs_and_bars(tmp_path):
    loud = _registered(["noisy", "--verbose"], tmp_path)
    assert loud.returncode == 0, loud.stderr
    for text in ("a third-party notice", "a third-party deprecation", "transformers log line", "hub-bar"):
        assert text in loud.stderr, (text, loud.stderr)
    assert loud.stderr.count("cannot append to") == 1


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from mmkd import cli

    monkeypatch.setitem(cli.COMMANDS, "noisy", ("test_front_door", "a test command"))
    assert cli.main(["noisy", "--what", "boom"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["mmkd noisy: internal error: RuntimeError: the index is broken",
                                "  rerun with `--debug` for the traceback"]
    with pytest.raises(RuntimeError, match="broken"):
        cli.main(["noisy", "--what", "boom", "--debug"])
    assert cli.main(["noisy", "--what", "usage"]) == 2
    assert capsys.readouterr().err == "mmkd noisy: error: --what: 'usage' is a test\n"
    shown = _registered(["--debug", "noisy", "--what", "boom"], tmp_path)
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "RuntimeError: the index is" in shown.stderr
