"""Copy what `mmkd demo` wrote into docs/results/ and refresh the copied blocks of README.md and
docs/DISTILLATION.md (`make docs-results RUN=runs/evidence`).

The selection (validation) run's files and the test run's, each markdown file with its JSON twin:
every number the pages quote is checked against them by tests/test_docs_results.py. The earlier
protocol's files stay in docs/results/old-protocol/ (docs/DISTILLATION.md, "History"); they are
never overwritten.

A block sits between `<!-- copied verbatim from docs/results/NAME.md ... -->` and
`<!-- end of docs/results/NAME.md -->`. It becomes the whole file, or, when its opening comment
says `from "### A" to "### B"`, the file's text from heading A up to heading B. Nothing is typed
by hand: tests/test_docs_results.py checks every block against its file.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIES = {"comparison-val.md": "demo-val.md", "comparison-val.json": "demo-val.json", "comparison.md": "demo-test.md",
          "comparison.json": "demo-test.json", "selection.json": "selection.json"}
PAGES = ("README.md", "docs/DISTILLATION.md")
BLOCK = re.compile(r"(<!-- copied verbatim from (docs/results/[\w./-]+\.md)([^>]*)-->\n)(.*?)(\n<!-- end of \2 -->)",
                   re.S)
RANGE = re.compile(r'from "([^"]+)" to "([^"]+)"')


def excerpt(text: str, spec: str) -> str:
    found = RANGE.search(spec)
    if not found:
        return text.strip()
    start, end = text.index(found.group(1) + "\n"), text.index(found.group(2) + "\n")
    return text[start:end].strip()


def main(run: Path) -> None:
    for written, name in COPIES.items():
        if not (run / written).is_file():  # nothing is copied unless every file is there
            sys.exit(f"{run / written} does not exist: run the demo's selection and test comparison first "
                     f"(docs/DISTILLATION.md, 'Reproduce')")
    selection = json.loads((run / "selection.json").read_text())
    test = json.loads((run / "comparison.json").read_text())["meta"]
    if test.get("selection_hash") != selection.get("hash"):
        sys.exit(f"{run / 'comparison.json'} was not run with {run / 'selection.json'} (hash "
                 f"{test.get('selection_hash')} against {selection.get('hash')}): rerun the test comparison with "
                 f"--selection {run / 'selection.json'}")
    for written, name in COPIES.items():
        shutil.copyfile(run / written, REPO / "docs" / "results" / name)
    for page in PAGES:
        path = REPO / page
        text = BLOCK.sub(lambda m: m.group(1) + excerpt((REPO / m.group(2)).read_text(), m.group(3)) + m.group(5),
                         path.read_text())
        path.write_text(text)
        print(f"refreshed {page}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence"))
