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
    "data": ("mmkd.data.cli", "index a data source, save metadata selections (e.g. BIOMEDICA subsets), pack them resized"),
    "demo": ("mmkd.demo.cli", "the whole pipeline end to end on built-in data"),
    "recipes": ("mmkd.recipe_files", "list the YAML recipes that ship with mmkd (names for --config)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on usage errors already; keep its message short."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default in its help line.

    An option whose help already states its default (the word "default") is left as it is; flags
    (store_true), required options and options without a value (None, "") show none.
    """

    @staticmethod
    def shows_default(action: argparse.Action) -> bool:
        default = action.default
        if action.required or not action.option_strings or "default" in (action.help or "").lower():
            return False
        return not (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                    or default in ("", []))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return f"{text} (default: %(default)s)" if self.shows_default(action) else text


GLOBAL_FLAGS = {"--verbose": "show third-party warnings, log lines and progress bars (hidden by default)",
                "--debug": "on an internal error, show the Python traceback (and show it for usage errors too)"}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mmkd",
        description="Distill several biomedical CLIP teachers into one student, and evaluate CLIP models "
        "on biomedical tasks.",
        epilog="Every command takes --verbose and --debug (before or after the command name); "
               "`mmkd COMMAND --help` shows its options and their defaults.",
    )
    from mmkd import __version__

    parser.add_argument("--version", action="version", version=f"mmkd {__version__}")
    for flag, help_text in GLOBAL_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=help_text)
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
    # Commands that take dotted config overrides must not accept abbreviations: `--optim.l` is a typo
    # for the config parser to report, not a prefix of `--optim.lr`.
    parser = _Parser(prog=f"mmkd {name}", description=getattr(module, "DESCRIPTION", help_text),
                     formatter_class=HelpFormatter, allow_abbrev=not getattr(module, "ACCEPTS_OVERRIDES", False))
    module.add_arguments(parser)
    for action in parser._actions:  # argparse prints no help line at all for an option without help text
        if not action.help and action.option_strings and HelpFormatter.shows_default(action):
            action.help = "default: %(default)s"
    group = parser.add_argument_group("general options")
    for flag, help_text in GLOBAL_FLAGS.items():
        group.add_argument(flag, action="store_true", dest=f"_{flag[2:]}", help=help_text)
    return module, parser


def _split_global_flags(argv: list[str]) -> tuple[set[str], list[str]]:
    """--verbose/--debug given before the command name."""
    flags = set()
    while argv and argv[0] in GLOBAL_FLAGS:
        flags.add(argv.pop(0))
    return flags, argv


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: list[str] | None = None) -> int:
    from mmkd.errors import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    flags, argv = _split_global_flags(argv)
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
    verbose = args._verbose or "--verbose" in flags
    debug = args._debug or "--debug" in flags
    from mmkd.utils.console import quiet_console

    try:
        with quiet_console(name, verbose=verbose):
            return int(module.run(args) or 0)
    except UsageError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"mmkd {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"mmkd {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns a bug into one readable line
        if debug:
            raise
        print(f"mmkd {name}: internal error: {type(e).__name__}: {_one_line(e)}\n"
              f"  rerun with `--debug` for the traceback", file=sys.stderr)
        return 1
