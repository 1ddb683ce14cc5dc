"""What a command shows a person on stderr: our warnings (once, no source lines), no third-party
noise unless asked for, and a short human summary at the end.

`quiet_console(command, verbose)` is entered by `mmkd.cli.main` around every command:
- warnings raised by mmkd's own code print as `mmkd COMMAND: warning: MESSAGE`, once per message;
- warnings from other libraries (torch, transformers, open_clip, ...) and their log lines and
  progress bars are hidden, unless `verbose`, where warnings print once with their origin.
mmkd's own progress bars (training steps, extraction chunks) stay.

`Summary` collects the lines of a command's closing summary and prints them with the elapsed time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Iterator

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
# Third-party loggers that speak at WARNING level in normal use (weights loading, tokenizer notices).
_LOGGERS = ("transformers", "huggingface_hub", "open_clip", "timm", "torch", "PIL", "matplotlib", "urllib3")
# Read by transformers and huggingface_hub when they are imported; a value the user set wins.
_QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


def _raiser() -> str:
    """The file whose code called warnings.warn, seen from inside showwarning.

    The warning's own `filename` is where its `stacklevel` points (often the caller of the
    function that warns), so it cannot tell mmkd's warnings from a library's: the stack can.
    """
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename == __file__
                                 or os.path.basename(frame.f_code.co_filename) == "warnings.py"):
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else ""


def is_ours(filename: str, raiser: str = "") -> bool:
    """A warning is mmkd's when mmkd's code raised it (or, with no raiser known, when it points into mmkd)."""
    return _in_package(raiser) if raiser else _in_package(filename)


@contextlib.contextmanager
def quiet_console(command: str, verbose: bool = False) -> Iterator[None]:
    """Show only our warnings (each once) and silence third-party logs and progress bars unless `verbose`."""
    shown: set[tuple[str, str]] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        ours = is_ours(filename, _raiser())
        if not (ours or verbose):
            return
        key = (category.__name__, str(message))
        if key in shown:
            return
        shown.add(key)
        text = f"mmkd {command}: warning: {message}" if ours else \
            f"mmkd {command}: {category.__name__} from {_short_path(filename)}:{lineno}: {message}"
        try:
            print(text, file=sys.stderr if file is None else file, flush=True)
        except (OSError, ValueError):  # a closed stream must not turn a warning into an error
            pass

    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    saved_levels = {name: logging.getLogger(name).level for name in ("", *_LOGGERS)}
    with warnings.catch_warnings():
        # "always" hands every warning to `show`, which decides and keeps the once-per-message rule itself
        # (the default filters would show a message once per source line, i.e. many times).
        warnings.simplefilter("always")
        warnings.showwarning = show
        if not verbose:
            for key, quiet in _QUIET_ENV.items():
                os.environ.setdefault(key, quiet)
            for name in ("", *_LOGGERS):  # "" is the root logger, which open_clip logs through
                logging.getLogger(name).setLevel(logging.ERROR)
            _quiet_loaded_libraries()
        try:
            yield
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)


def _quiet_loaded_libraries() -> None:
    """Libraries imported before the command ran read no environment any more; tell them directly."""
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    hub_tqdm = sys.modules.get("huggingface_hub.utils.tqdm")
    if hub_tqdm is not None:
        hub_tqdm.disable_progress_bars()


def _short_path(filename: str) -> str:
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    return filename


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '2 h 4 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def skipped_line(skipped: dict[str, int], num_used: int, what: str = "samples") -> str:
    """'35 % of samples were skipped (700 of 2,000): missing_file 500, unreadable_image 200' or 'no samples ...'."""
    num_skipped = sum(int(n) for n in skipped.values())
    if num_skipped == 0:
        return f"no {what} were skipped"
    total = num_skipped + max(0, int(num_used))
    share = 100.0 * num_skipped / total if total else 100.0
    by_count = sorted(skipped.items(), key=lambda kv: -kv[1])
    reasons = ", ".join(f"{reason.replace('_', ' ')} {n:,}" for reason, n in by_count if n)
    share_text = f"{share:.0f} %" if share >= 1 else f"{share:.1g} %"
    return f"{share_text} of {what} were skipped ({num_skipped:,} of {total:,}): {reasons}"


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a plain process: the one that prints summaries."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class Summary:
    """The closing summary of a command on stderr: a title line with the elapsed time, then `key: value` lines.

    Created when the command starts (it keeps the start time); `emit()` prints it once, on rank 0 only.
    stdout is left to the command's machine-readable output (JSON, tables).
    """

    def __init__(self, command: str):
        self.command = command
        self.started = time.perf_counter()
        self.lines: list[tuple[str, str]] = []

    def add(self, key: str, value: object) -> Summary:
        self.lines.append((key, str(value)))
        return self

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def text(self, headline: str = "done") -> str:
        width = max((len(k) for k, _ in self.lines), default=0)
        out = [f"mmkd {self.command}: {headline} in {format_duration(self.elapsed())}"]
        out += [f"  {k + ':':<{width + 1}} {v}" for k, v in self.lines]
        return "\n".join(out)

    def emit(self, headline: str = "done") -> None:
        if is_main_process():
            sys.stdout.flush()  # the command's own output first, when both go to one terminal
            print(self.text(headline), file=sys.stderr, flush=True)
