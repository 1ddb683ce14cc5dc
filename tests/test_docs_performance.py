"""Every figure docs/PERFORMANCE.md and README's performance paragraph quote is one a benchmark printed.

The sources are bench/RESULTS.md (written by `make bench`) and the raw outputs kept under
bench/results-*/. A figure in the text matches a printed number shown at the text's precision
(503 for 503.3 MiB, 1.02 for 1.020x) or a printed fraction as a percentage (3.2 % for 0.032).
A figure with a unit must have been printed with that unit, except one of three or more digits with a
decimal point (116.5 ms, printed in a line headed "ms:"). Not checked: inline code and code blocks
(commands, file names), dates and times, targets (≤ 1.10 ×), numbers that are part of a name (H200,
ViT-B/16, fp32), counts up to 10, and the sections a page marks with
`<!-- not measured: WHY -->` ... `<!-- end not measured -->` (arithmetic on quoted figures, the
paper's settings), whose reason must be given.
"""

import re
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w/.,-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w.]?\d)(?![A-Za-z_])")
SKIP = [re.compile(p, re.S) for p in (r"```.*?```", r"`[^`\n]*`", r"<!-- not measured: \S.*?<!-- end not measured -->",
                                       r"<!--.*?-->", r"\d{4}-\d\d-\d\d", r"\b\d\d:\d\d\b", r"\]\([^)]*\)",
                                       r"[≤≥<>]=? ?\d[\d,.]*")]  # targets are thresholds, not figures


# A figure's unit, as the text or a raw output writes it after the number; x and × are one unit.
UNIT = re.compile(r"\s?(MiB|GiB|GB|MB|kB|KiB|ms|µs|us/\w+|us|GFLOP|TFLOP/s|samples/s|rows/s|tokens|B/sample|B/record|"
                  r"bytes/sample|bytes/record|bytes per record|bytes per sample|%|×|x\b|s\b)")
SAME_UNIT = {"x": "×", "us": "µs", "us/record": "µs", "us/sample": "µs", "bytes/sample": "B/sample",
             "bytes per sample": "B/sample", "bytes/record": "B/record", "bytes per record": "B/record"}


def _unit(text: str, end: int) -> str:
    m = UNIT.match(text, end)
    return SAME_UNIT.get(m.group(1), m.group(1)) if m else ""


def printed_numbers() -> dict[str, set[Decimal]]:
    """unit -> the numbers printed with it ("" holds every printed number)."""
    files = [REPO / "bench" / "RESULTS.md", *sorted((REPO / "bench").glob("results-*/*"))]
    out: dict[str, set[Decimal]] = {"": set()}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?", text):
            value = Decimal(m.group(1).replace(",", "") + (m.group(2) or ""))
            out[""].add(value)
            out.setdefault(_unit(text, m.end()), set()).add(value)
    return out


def quoted_figures(text: str) -> list[tuple[str, str, int]]:
    """(figure as written, its unit, line) for the numbers a page states, outside what SKIP leaves out."""
    for pattern in SKIP:
        text = pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    out = []
    for m in NUMBER.finditer(text):
        figure = m.group(1) + (m.group(2) or "")
        if "." not in figure and int(figure.replace(",", "")) <= 10:
            continue
        out.append((figure, _unit(text, m.end()), text.count("\n", 0, m.start()) + 1))
    return out


def matches(figure: str, unit: str, printed: dict[str, set[Decimal]]) -> bool:
    """Printed with the same unit (any number when the text gives none) and equal at the text's precision."""
    value = Decimal(figure.replace(",", ""))
    step = Decimal(1).scaleb(value.as_tuple().exponent)
    candidates = printed.get(unit, set()) if unit else printed[""]
    if len(value.as_tuple().digits) >= 3 and value.as_tuple().exponent < 0:  # 116.5 ms: printed under "ms:"
        candidates = printed[""]
    if unit == "%":  # a share printed as a fraction
        candidates = candidates | {p * 100 for p in printed[""] if p < 1}
    return any(p.quantize(step) == value for p in candidates)


def _readme_performance() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Performance")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


@pytest.mark.parametrize("page", ["docs/PERFORMANCE.md", "README.md#performance"])
def test_every_quoted_figure_was_printed_by_a_benchmark(page):
    text = _readme_performance() if page.startswith("README") else (REPO / page).read_text(encoding="utf-8")
    printed = printed_numbers()
    figures = quoted_figures(text)
    assert len(figures) >= 5, f"{page}: found too few figures to check"
    missing = [f"line {line}: {figure} {unit}" for figure, unit, line in figures if not matches(figure, unit, printed)]
    assert not missing, f"{page} quotes figures that no raw output under bench/ prints:\n" + "\n".join(missing)


def test_unmeasured_sections_give_their_reason():
    text = (REPO / "docs" / "PERFORMANCE.md").read_text(encoding="utf-8")
    opened = re.findall(r"<!-- not measured: (.*?) -->", text)
    assert len(opened) == text.count("<!-- end not measured -->")
    assert all(len(reason.split()) >= 3 for reason in opened)


def test_a_changed_figure_is_found():
    printed = printed_numbers()
    assert matches("0.889", "×", printed) and matches("503", "MiB", printed) and matches("3.2", "%", printed)
    assert not matches("0.888", "×", printed) and not matches("489", "MiB", printed)
    assert not matches("503", "×", printed)  # the number is printed, but not as a ratio
    assert quoted_figures("peak `503 MiB` on 2026-11-26 with H200 and 3 cores: **1,196×**, 2.71 %") == \
        [("1,196", "×", 1), ("2.71", "%", 1)]
