"""Copy what `mmkd demo` wrote into docs/results/ and refresh the copied blocks of README.md and
docs/DISTILLATION.md (`make docs-results RUN=runs/evidence`).

A block sits between `<!-- copied verbatim from docs/results/NAME.md ... -->` and
`<!-- end of docs/results/NAME.md -->`. It becomes the whole file, or, when its opening comment
says `from "### A" to "### B"`, the file's text from heading A up to heading B. Nothing is typed
by hand: tests/test_docs_results.py checks every block against its file.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COPIES = {"comparison-val.md": "demo-val.md", "comparison.md": "demo-test.md", "selection.json": "selection.json"}
PAGES = ("README.md", "docs/DISTILLATION.md")
BLOCK = re.compile(r"(<!-- copied verbatim from (docs/results/[\w.-]+\.md)([^>]*)-->\n)(.*?)(\n<!-- end of \2 -->)",
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
        if not (run / written).is_file():
            sys.exit(f"{run / written} does not exist: run the demo's selection and test comparison first "
                     f"(docs/DISTILLATION.md, 'Reproduce')")
        shutil.copyfile(run / written, REPO / "docs" / "results" / name)
    for page in PAGES:
        path = REPO / page
        text = BLOCK.sub(lambda m: m.group(1) + excerpt((REPO / m.group(2)).read_text(), m.group(3)) + m.group(5),
                         path.read_text())
        path.write_text(text)
        print(f"refreshed {page}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/evidence"))
