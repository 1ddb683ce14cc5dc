"""Numbers in README.md and docs/DISTILLATION.md are copies of files `mmkd demo` wrote, never typed by hand.

A copied block sits between `<!-- copied verbatim from docs/results/NAME.md ... -->` and
`<!-- end of docs/results/NAME.md -->`; it must equal that file (or the part its opening comment
names, `from "### A" to "### B"`) exactly, and the file must name the command that wrote it.

Every result number quoted in the prose around the blocks (three decimals; a mean with its CI,
`+0.070 [+0.050, +0.089]`, as a whole) must be one the results files hold: the JSON twin of a
results file (docs/results/*.json), or, for the earlier protocol's test comparison, whose JSON was
not kept, the markdown file it wrote. A results file's tables must agree with its JSON (rows,
paired differences) and with the selection file; a new-protocol selection file must hash to the
hash it records, and the test comparison must name that hash.

The functions take texts, so the cases at the end check that each edit of the kind these checks
exist for (a headline changed in prose, a row deleted everywhere, a block truncated) is caught.
"""

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
PAGES = ("README.md", "docs/DISTILLATION.md")
BLOCK = re.compile(r"<!-- copied verbatim from (docs/results/[\w./-]+\.md)([^>]*)-->\n(.*?)\n<!-- end of \1 -->", re.S)
NUMBER = r"[+\-]?\d+\.\d{3}"
TRIPLE = re.compile(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\]")
LONE = re.compile(rf"(?<![\d.≈~])(?<!≈ )({NUMBER})(?![\d])")


def _publish():
    spec = importlib.util.spec_from_file_location("publish", RESULTS / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain(text: str) -> str:
    return text.replace("−", "-")


def block_problems(page_text: str, files: dict[str, str]) -> list[str]:
    """Every copied block equals its source (whole file or the named range), exactly."""
    excerpt = _publish().excerpt
    problems = []
    blocks = BLOCK.findall(page_text)
    if not blocks:
        problems.append("copies no results file")
    for source, spec, copied in blocks:
        written = files.get(source)
        if written is None:
            problems.append(f"{source} does not exist")
            continue
        if not written.startswith("Written by `mmkd demo "):
            problems.append(f"{source} does not name the command that wrote it")
        if copied != excerpt(written, spec):
            problems.append(f"the block from {source} differs from it")
    return problems


def demo_part(page: str, page_text: str) -> str:
    """The part of `page` that speaks of the demo's results: README's "Demo results" section (its other
    sections quote benchmarks, checked by tests/test_docs_performance.py), the whole of other pages."""
    if page != "README.md":
        return page_text
    start = page_text.index("\n## Demo results")
    end = page_text.find("\n## ", start + 1)
    return page_text[start:end if end >= 0 else len(page_text)]


def prose(page_text: str) -> str:
    """The page without its copied blocks, code blocks and comments."""
    text = BLOCK.sub("", page_text)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return _plain(re.sub(r"<!--.*?-->", "", text, flags=re.S))


def _numbers_of(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers_of(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers_of(v)]
    return []


def _triples_of(value) -> list[tuple[float, float, float]]:
    """(mean, low, high) of every {mean, ci95} in a JSON document."""
    out = []
    if isinstance(value, dict):
        ci = value.get("ci95")
        if isinstance(value.get("mean"), (int, float)) and isinstance(ci, list) and len(ci) == 2:
            out.append((value["mean"], ci[0], ci[1]))
        for v in value.values():
            out += _triples_of(v)
    elif isinstance(value, list):
        for v in value:
            out += _triples_of(v)
    return out


def quotable(jsons: list, markdowns: list[str]) -> tuple[set[str], set[tuple[str, str, str]]]:
    """The numbers (3 decimals, unsigned) and mean-with-CI triples (signed) that prose may quote."""
    numbers, triples = set(), set()
    for doc in jsons:
        numbers |= {f"{abs(x):.3f}" for x in _numbers_of(doc)}
        triples |= {tuple(f"{x:+.3f}" for x in t) for t in _triples_of(doc)}
    for text in markdowns:
        text = _plain(text)
        numbers |= {n.lstrip("+-") for n in re.findall(NUMBER, text)}
        triples |= set(TRIPLE.findall(text))
    return numbers, triples


def prose_problems(page_text: str, numbers: set[str], triples: set[tuple[str, str, str]]) -> list[str]:
    text = prose(page_text)
    problems = [f"prose quotes {m} [{lo}, {hi}], which no results file holds"
                for m, lo, hi in TRIPLE.findall(text) if (_signed(m), _signed(lo), _signed(hi)) not in triples]
    problems += [f"prose quotes {n}, which no results file holds" for n in LONE.findall(TRIPLE.sub("", text))
                 if n.lstrip("+-") not in numbers]
    return problems


def _signed(n: str) -> str:
    return n if n[0] in "+-" else f"+{n}"


def ranking_problems(selection: dict, val_md: str) -> list[str]:
    """Each ranked candidate's paired row in the validation table, rebuilt from the selection file."""
    problems = []
    for r in selection["ranking"]:
        lo, hi = r["ci95"]
        row = (f"| `{r['variant']}` − control | " + " | ".join(f"{x:+.3f}" for x in r["per_seed"])
               + f" | {r['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['wins']} of {len(r['per_seed'])} |")
        if row not in val_md.splitlines():
            problems.append(f"no row {row!r}")
    return problems


def table_problems(md: str, doc: dict | None = None) -> list[str]:
    """Rows of 'Every model' and of the paired table agree with each other (and with the JSON, if kept)."""
    section = md.split("### Every model", 1)[1].split("\n### ", 1)[0]
    models = [line.split(" | ")[0][2:] for line in section.splitlines() if line.startswith("| ")][1:]
    variants = [m[len("student after stage 2 ("):-1] for m in models if m.startswith("student after stage 2 (")]
    paired = md.split("### Paired differences in `overall`", 1)[1].split("\n### ", 1)[0]
    rows = [line.split(" | ")[0][2:] for line in paired.splitlines() if line.startswith("| `")]
    problems = [f"`{v}` has no paired row" for v in variants if f"`{v}` − control" not in rows]
    problems += [f"{r} has no model row" for r in rows if r.endswith(" − control") and r[1:-len("` − control")]
                 not in variants and r != "`self-distill` − control"]
    if doc is not None:
        labels = [r["label"] for r in doc["rows"]]
        if models != labels:
            problems.append(f"model rows {models} differ from the JSON's {labels}")
        expected = [p["label"] for p in doc["paired"].values()]
        if [r for r in rows] != expected[:len(rows)] or len(rows) != len(expected):
            problems.append(f"paired rows {rows} differ from the JSON's {expected}")
    return problems


def _files() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in RESULTS.rglob("*.md")}


def _jsons() -> list:
    return [json.loads(p.read_text()) for p in RESULTS.rglob("*.json")]


@pytest.mark.parametrize("page", PAGES)
def test_copied_result_blocks_equal_the_files_the_demo_wrote(page):
    assert block_problems((REPO / page).read_text(), _files()) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_number_quoted_in_prose_is_in_the_results_it_comes_from(page):
    numbers, triples = quotable(_jsons(), list(_files().values()))
    text = demo_part(page, (REPO / page).read_text())
    assert TRIPLE.findall(prose(text)), f"{page} quotes no result"  # the check is not vacuous
    assert prose_problems(text, numbers, triples) == []


def test_the_comparison_tables_agree_with_their_selection_and_json():
    old = RESULTS / "old-protocol"
    assert ranking_problems(json.loads((old / "selection.json").read_text()), (old / "demo-val.md").read_text()) == []
    for name in ("demo-val.md", "demo-test.md"):
        assert table_problems((old / name).read_text()) == [], name
    for name in ("demo-val", "demo-test"):  # the frozen protocol's runs, once they exist
        if (RESULTS / f"{name}.md").is_file():
            doc = json.loads((RESULTS / f"{name}.json").read_text())
            assert table_problems((RESULTS / f"{name}.md").read_text(), doc) == [], name


def test_the_test_comparison_names_the_hash_of_the_selection_it_ran_with():
    test = (RESULTS / "old-protocol" / "demo-test.md").read_text()
    assert "--eval-split test" in test and "disjoint" in test and "not disjoint" not in test
    path = RESULTS / "selection.json"
    if not (RESULTS / "demo-test.md").is_file():
        assert not path.exists() or "hash" in json.loads(path.read_text())
        return
    selection = json.loads(path.read_text())
    body = {k: v for k, v in selection.items() if k != "hash"}
    assert hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == \
        selection["hash"]
    assert f"protocol hash `{selection['hash']}`" in (RESULTS / "demo-test.md").read_text()
    assert json.loads((RESULTS / "demo-test.json").read_text())["meta"]["selection_hash"] == selection["hash"]
    assert ranking_problems(selection, (RESULTS / "demo-val.md").read_text()) == []


# The edits these checks exist for, each made to the real pages and files.

def test_a_headline_changed_in_prose_is_caught():
    page = (REPO / "docs" / "DISTILLATION.md").read_text()
    numbers, triples = quotable(_jsons(), list(_files().values()))
    blocks = [m.span() for m in BLOCK.finditer(page)]
    found = next(m for m in TRIPLE.finditer(_plain(page)) if not any(a <= m.start() < b for a, b in blocks))
    headline = f"{float(found.group(1)) + 0.004:+.3f}"
    edited = page[:found.start()] + headline + page[found.start() + len(found.group(1)):]
    assert prose_problems(page, numbers, triples) == []
    assert any(headline in p for p in prose_problems(edited, numbers, triples))
    lone = next(m for m in LONE.finditer(_plain(page)) if not any(a <= m.start() < b for a, b in blocks))
    edited = page[:lone.start()] + "9.999" + page[lone.end():]
    assert any("9.999" in p for p in prose_problems(edited, numbers, triples))


def test_a_row_deleted_everywhere_is_caught():
    files = _files()
    page = (REPO / "docs" / "DISTILLATION.md").read_text()
    for name, row in (("docs/results/old-protocol/demo-test.md", "| student after stage 2 (self-label) |"),
                      ("docs/results/old-protocol/demo-val.md", "| `projection` − control |")):
        line = next(x for x in files[name].splitlines() if x.startswith(row))
        cut_files = {k: v.replace(line + "\n", "") for k, v in files.items()}  # every file holding the row
        cut_file = cut_files[name]
        cut_page = page.replace(line + "\n", "")
        assert cut_page != page and block_problems(cut_page, cut_files) == []  # copies still agree
        selection = json.loads((RESULTS / "old-protocol" / "selection.json").read_text())
        assert table_problems(cut_file) or ranking_problems(selection, cut_file), row


def test_a_truncated_readme_block_is_caught():
    readme = (REPO / "README.md").read_text()
    source, spec, copied = BLOCK.findall(readme)[0]
    truncated = readme.replace(copied, copied.rsplit("\n", 2)[0])
    assert truncated != readme
    assert block_problems(readme, _files()) == [] and block_problems(truncated, _files())


def test_docs_results_copies_only_a_test_run_made_with_the_selection_it_copies(tmp_path, monkeypatch):
    publish = _publish()
    repo, run = tmp_path / "repo", tmp_path / "run"
    (repo / "docs" / "results").mkdir(parents=True)
    run.mkdir()
    for page, name in (("README.md", "demo-test"), ("docs/DISTILLATION.md", "demo-val")):
        (repo / page).write_text(f"text\n<!-- copied verbatim from docs/results/{name}.md -->\nold\n"
                                 f"<!-- end of docs/results/{name}.md -->\nmore\n")
    (run / "comparison-val.md").write_text("Written by `mmkd demo --eval-split val`\n\nvalidation table\n")
    (run / "comparison.md").write_text("Written by `mmkd demo --eval-split test`\n\ntest table\n")
    (run / "comparison-val.json").write_text("{}")
    (run / "comparison.json").write_text(json.dumps({"meta": {"selection_hash": "h1"}}))
    (run / "selection.json").write_text(json.dumps({"hash": "h2"}))
    monkeypatch.setattr(publish, "REPO", repo)
    with pytest.raises(SystemExit, match="was not run with"):
        publish.main(run)
    assert not list((repo / "docs" / "results").iterdir())  # nothing copied
    (run / "selection.json").write_text(json.dumps({"hash": "h1"}))
    publish.main(run)
    assert sorted(p.name for p in (repo / "docs" / "results").iterdir()) == [
        "demo-test.json", "demo-test.md", "demo-val.json", "demo-val.md", "selection.json"]
    readme = (repo / "README.md").read_text()
    assert readme == ("text\n<!-- copied verbatim from docs/results/demo-test.md -->\n"
                      "Written by `mmkd demo --eval-split test`\n\ntest table\n<!-- end of docs/results/demo-test.md -->\n"
                      "more\n")
