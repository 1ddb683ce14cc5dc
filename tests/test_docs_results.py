"""Numbers in README.md and docs/DISTILLATION.md are copies of files `mmkd demo` wrote, never typed by hand.

A copied block sits between `<!-- copied verbatim from docs/results/NAME.md ... -->` and
`<!-- end of docs/results/NAME.md -->`; its text must occur, unchanged, in that file, and the file
must name the command that wrote it.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- copied verbatim from (docs/results/[\w.-]+\.md)[^>]*-->\n(.*?)\n<!-- end of \1 -->", re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/DISTILLATION.md"])
def test_copied_result_blocks_match_the_files_the_demo_wrote(page):
    text = (REPO / page).read_text()
    blocks = BLOCK.findall(text)
    assert blocks, f"{page} copies no results file"
    for source, copied in blocks:
        written = (REPO / source).read_text()
        assert written.startswith("Written by `mmkd demo "), source
        assert copied.strip() and copied.strip() in written, f"{page}: the block from {source} differs from it"


def test_the_test_comparison_is_copied_whole_into_distillation_md():
    text = (REPO / "docs" / "DISTILLATION.md").read_text()
    copies = dict(BLOCK.findall(text))
    for name in ("docs/results/demo-test.md", "docs/results/demo-val.md"):
        assert copies.get(name, "").strip() == (REPO / name).read_text().strip(), name
    test = (REPO / "docs" / "results" / "demo-test.md").read_text()
    assert "--eval-split test" in test and "disjoint" in test and "not disjoint" not in test
