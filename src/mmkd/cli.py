"""`mmkd <command>`: thin functions over the library.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
modules are imported only when their command runs, so `mmkd --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("mmkd.training.cli_pretrain", "stage 1: CLIP pretraining of the student on image-text pairs"),
    "teachers": ("mmkd.teachers.cli", "list the known teachers, or check which are present in a folder"),
    "extract": ("mmkd.teachers.cli_extract", "encode a dataset with several teachers into a feature store"),
    "import-features": ("mmkd.teachers.cli_import", "convert the MMKD-CLIP authors' per-sample features into a store"),
    "align": ("mmkd.training.cli_align", "train the teacher alignment autoencoder on a feature store"),
    "distill": ("mmkd.training.cli_distill", "stage 2: multi-teacher distillation into the student"),
    "eval": ("mmkd.evaluation.cli", "evaluate a model on a dataset catalog (six task types)"),
    "datasets": ("mmkd.evaluation.prepare.cli", "list, prepare (from the official downloads) and check evaluation datasets"),
    "report": ("mmkd.evaluation.cli_report", "turn a results folder into tables, plots and an HTML page"),
    "export": ("mmkd.export.cli", "export a checkpoint as an open_clip-loadable folder with a model card"),
    "predict": ("mmkd.export.cli_predict", "zero-shot prediction of labels for images"),
    "synth": ("mmkd.synth.cli", "write the synthetic multi-modality corpus and evaluation sets"),
    "data": ("mmkd.data.cli", "index a data source, and save metadata selections (e.g. BIOMEDICA subsets)"),
    "demo": ("mmkd.demo.cli", "the whole pipeline end to end on built-in data"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message short."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmkd",
        description="Distill several biomedical CLIP teachers into one student, and evaluate CLIP models "
        "on biomedical tasks.",
    )
    from mmkd import __version__

    parser.add_argument("--version", action="version", version=f"mmkd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_parser(name: str):
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("mmkd"):
            print(f"mmkd {name}: not available in this version ({e.name} is missing)", file=sys.stderr)
            sys.exit(2)
        raise
    parser = _Parser(prog=f"mmkd {name}", description=getattr(module, "DESCRIPTION", help_text),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    from mmkd.errors import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] == "--version":
        build_parser().parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        build_parser().error(f"unknown command {name!r}; choose from: {', '.join(COMMANDS)}")
    module, parser = _command_parser(name)
    if getattr(module, "ACCEPTS_OVERRIDES", False):  # dotted config overrides: --optim.lr 1e-4
        args, args._rest = parser.parse_known_args(rest)
    else:
        args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UsageError as e:
        print(f"mmkd {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"mmkd {name}: interrupted", file=sys.stderr)
        return 130
