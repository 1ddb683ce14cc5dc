"""`mmkd report`: the headline table (checked against a plain loop over the result files), the CSV,
markdown and plots, and the page as a person sees it, rendered by headless Chromium."""

import csv
import html as html_lib
import json
import math
import os
import re
import shutil
import subprocess
from collections import defaultdict

import numpy as np
import pytest

from conftest import run_cli
from mmkd.evaluation.runner import CLASSIFICATION_METRICS, RETRIEVAL_METRICS, DatasetEntry, evaluate

# The headline number of each task, as the report documents it (mean of the listed metrics).
HEADLINE = {"zero-shot": ["balanced_accuracy"], "linear-probe": ["balanced_accuracy"],
            "retrieval": ["i2t_recall@5", "t2i_recall@5"], "vqa": ["accuracy"], "mil-classification": ["auroc"],
            "survival": ["c_index"]}
TASK_METRICS = {"zero-shot": CLASSIFICATION_METRICS, "linear-probe": CLASSIFICATION_METRICS,
                "retrieval": RETRIEVAL_METRICS, "vqa": ("accuracy", "closed_accuracy", "open_accuracy"),
                "mil-classification": CLASSIFICATION_METRICS, "survival": ("c_index",)}


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """Two real (tiny, random) open_clip models evaluated on two zero-shot datasets and one retrieval set."""
    import csv as csv_mod

    from PIL import Image

    from mmkd.teachers import load_teacher
    from mmkd.teachers.testing import make_open_clip_teacher

    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    rows = []
    for name, rgb in {"red": (200, 30, 30), "blue": (20, 40, 210)}.items():
        (tmp / "data" / "test" / name).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(rgb) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp / "data" / "test" / name / f"{i}.png")
            rows.append({"image": f"test/{name}/{i}.png", "caption": f"{name} square {i}"})
    with open(tmp / "data" / "captions.csv", "w", newline="") as f:
        writer = csv_mod.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    entries = [
        DatasetEntry("squares", ["zero-shot"], "imagefolder", tmp / "data", templates=["a {} square"]),
        DatasetEntry("squares_b", ["zero-shot"], "imagefolder", tmp / "data", templates=["{}"]),
        DatasetEntry("square_captions", ["retrieval"], "csv", tmp / "data" / "captions.csv"),
    ]
    out = tmp / "results"
    for seed, name in ((1, "model_a"), (2, "model_b")):
        model = load_teacher(f"local-dir:{make_open_clip_teacher(tmp / name, seed=seed)}", name=name)
        evaluate(model, entries, ["zero-shot", "retrieval"], out, num_bootstrap=100)
    return out


def write_result(root, model, dataset, task, rng, level, listed=None):
    """A result file as the runner writes it: metrics near `level`, a bootstrap-like CI around each;
    `listed`: the datasets its catalog lists for the task."""
    metrics = {m: float(np.clip(level + rng.normal(0, 0.05), 0.02, 0.99)) for m in TASK_METRICS[task]}
    ci = {m: [v - float(rng.uniform(0.01, 0.06)), v + float(rng.uniform(0.01, 0.06))] for m, v in metrics.items()}
    (root / model).mkdir(parents=True, exist_ok=True)
    record = {"model": model, "dataset": dataset, "task": task, "metrics": metrics, "ci": ci, "seed": 0,
              "num_bootstrap": 1000, "split_sizes": {"test": 200}, "model_provenance": {"kind": "synthetic"}}
    if listed is not None:
        record["catalog"] = {"name": "paper-like", "listed": listed}
    (root / model / f"{dataset}__{task}.json").write_text(json.dumps(record))


ZERO_SHOT_ABSENT = "zero_dataset_not_on_disk"


@pytest.fixture(scope="module")
def paper_results(tmp_path_factory):
    """Paper-scale shape: six task types, 2-14 datasets each, seven models with long names. `expert-blood`
    lacks one zero-shot dataset and is best on the others (partial: must not be ranked); `clip-only`
    has no survival result; the catalog lists a 15th zero-shot dataset that no model ran."""
    root = tmp_path_factory.mktemp("paper") / "results"
    rng = np.random.default_rng(7)
    sizes = {"zero-shot": 14, "linear-probe": 10, "retrieval": 4, "vqa": 3, "mil-classification": 3, "survival": 2}
    levels = {"student-stage2-decision": 0.72, "student-stage1": 0.66, "control-clip-only-300-steps": 0.64,
              "clip-only": 0.55, "expert-blood": 0.50,
              # names as long as `mmkd demo` gives its models, none of them a break opportunity for the browser
              "student-stage2-decision-gated+projection-modality:caption-vocab-s10": 0.60,
              "teacher_generalist_weak_10pct_of_every_modality_seed_0": 0.58}
    for model, level in levels.items():
        for task, n in sizes.items():
            for i in range(n):
                dataset = f"{task.split('-')[0]}_dataset_{i:02d}_with_a_long_name"
                if model == "clip-only" and task == "survival":
                    continue
                if model == "expert-blood" and task == "zero-shot" and i == 0:
                    continue
                expert = model == "expert-blood" and task == "zero-shot"
                listed = [ZERO_SHOT_ABSENT] + [f"zero_dataset_{j:02d}_with_a_long_name" for j in range(n)]
                write_result(root, model, dataset, task, rng, 0.97 if expert else level,
                             listed if task == "zero-shot" else None)
    return root


def naive_headline(folder):
    """(model, task) -> (mean over datasets, CI half-width, datasets), and overall, by plain loops."""
    per = defaultdict(list)
    for path in sorted(folder.glob("*/*.json")):
        if path.name.startswith("."):  # the report's own marker of what it wrote
            continue
        r = json.loads(path.read_text())
        names = HEADLINE[r["task"]]
        value = sum(r["metrics"][n] for n in names) / len(names)
        half = sum((r["ci"][n][1] - r["ci"][n][0]) / 2 for n in names) / len(names)
        per[(r["model"], r["task"])].append((value, half, r["dataset"]))
    out = {}
    for key, got in per.items():
        out[key] = (sum(v for v, _, _ in got) / len(got), math.sqrt(sum(h * h for _, h, _ in got)) / len(got),
                    {d for _, _, d in got})
    for model in {m for m, _ in per}:
        tasks = [out[(m, t)] for m, t in per if m == model]
        out[(model, "overall")] = (sum(v for v, _, _ in tasks) / len(tasks), sum(h for _, h, _ in tasks) / len(tasks),
                                   None)
    return out


def read_headline_csv(path):
    with open(path) as f:
        return {(r["model"], r["column"]): r for r in csv.DictReader(f)}


def test_report_writes_headline_tables_plots_and_html(results_dir):
    from PIL import Image

    proc = run_cli("report", str(results_dir))
    assert proc.returncode == 0, proc.stderr
    report = results_dir / "report"
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"model_a", "model_b"} and {r["task"] for r in rows} == {"zero-shot", "retrieval"}
    saved = json.loads((results_dir / "model_a" / "squares__zero-shot.json").read_text())
    value = next(float(r["value"]) for r in rows if (r["model"], r["dataset"], r["metric"]) == ("model_a", "squares", "accuracy"))
    assert value == pytest.approx(saved["metrics"]["accuracy"])

    expected = naive_headline(results_dir)
    headline = read_headline_csv(report / "headline.csv")
    assert set(headline) == {(m, c) for m in ("model_a", "model_b") for c in ("zero-shot", "retrieval", "overall")}
    for (model, column), row in headline.items():
        value, half, _ = expected[(model, column)]
        assert float(row["value"]) == pytest.approx(value, abs=1e-9)
        assert float(row["ci_half_width"]) == pytest.approx(half, abs=1e-9)
    for column in ("zero-shot", "retrieval", "overall"):
        winner = max(("model_a", "model_b"), key=lambda m: round(expected[(m, column)][0], 3))
        assert headline[(winner, column)]["best"] == "True"

    md = (report / "results.md").read_text()
    assert md.index("## Headline") < md.index("## Per dataset") < md.index("## Every metric")
    header = next(line for line in md.splitlines() if line.startswith("| model | zero-shot"))
    assert "zero-shot (2 datasets)" in header and "retrieval (1 dataset)" in header and "overall (2 task types)" in header
    line_a = next(line for line in md.splitlines() if line.startswith("| model_a |"))
    first = line_a.split("|")[2].strip().strip("*")
    assert first == f"{expected[('model_a', 'zero-shot')][0]:.3f} ± {expected[('model_a', 'zero-shot')][1]:.3f}"

    plots = sorted((report / "plots").glob("*.png"))
    assert [p.name for p in plots] == ["retrieval.png", "zero-shot.png"]
    for p in plots:
        with Image.open(p) as img:
            assert img.format == "PNG" and 400 <= img.width <= 640 and img.height >= 150
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots)
    assert "src='http" not in page and 'src="http' not in page and "<script" not in page  # self-contained
    assert page.index("id='headline'") < page.index("class='task-plot'") < page.index("id='per-dataset'")


def test_headline_ranks_only_comparable_cells_and_shows_coverage(paper_results, tmp_path):
    from mmkd.evaluation.report import write_report

    written = write_report(paper_results, tmp_path / "report")
    expected = naive_headline(paper_results)
    headline = read_headline_csv(written["headline_csv"])
    run_by_anyone = defaultdict(set)
    for (_, task), (_, _, datasets) in expected.items():
        if datasets:
            run_by_anyone[task] |= datasets
    listed = {task: len(run_by_anyone[task]) + (task == "zero-shot") for task in run_by_anyone}
    for (model, column), row in headline.items():
        value, half, datasets = expected[(model, column)]
        assert float(row["value"]) == pytest.approx(value, abs=1e-9)
        assert float(row["ci_half_width"]) == pytest.approx(half, abs=1e-9)
        if column != "overall":
            assert (int(row["datasets_run"]), int(row["datasets_listed"])) == (len(datasets), listed[column])
            assert (row["ranked"] == "True") == (datasets == run_by_anyone[column])
    assert headline[("expert-blood", "zero-shot")]["ranked"] == "False"
    assert headline[("clip-only", "overall")]["ranked"] == "False" and ("clip-only", "survival") not in headline
    assert int(headline[("clip-only", "overall")]["datasets_listed"]) == sum(listed.values())
    for column in [*HEADLINE, "overall"]:
        ranked = [m for (m, c), row in headline.items() if c == column and row["ranked"] == "True"]
        top = max(round(float(headline[(m, column)]["value"]), 3) for m in ranked)
        marked = {m for (m, c), row in headline.items() if c == column and row["best"] == "True"}
        assert marked == {m for m in ranked if round(float(headline[(m, column)]["value"]), 3) == top}
    # the partial expert has the highest zero-shot mean, yet it is not the marked best
    assert float(headline[("expert-blood", "zero-shot")]["value"]) > float(
        headline[("student-stage2-decision", "zero-shot")]["value"])
    assert headline[("expert-blood", "zero-shot")]["best"] == "False"
    assert sorted(p.stem for p in written["plots"]) == sorted(HEADLINE)
    md = written["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "zero-shot (14 of 15 datasets run)" in header and "survival (2 datasets)" in header
    expert = next(line for line in md.splitlines() if line.startswith("| expert-blood |"))
    assert "(13/15) †" in expert.split("|")[2]


def test_report_on_empty_folder_is_a_usage_error(tmp_path):
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "no result files" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# The page as a person sees it

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW_WIDTH, FIRST_SCREEN = 1280, 900
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="headless Chromium is not installed: `apt-get install chromium` (or `make browser`, as CI does)")

# Injected into a copy of the page (the report itself has no script): the geometry a reader gets.
MEASURE = """<script>
window.addEventListener('load', () => {
  const box = e => { if (!e) return null; const r = e.getBoundingClientRect();
    return {left: r.left + scrollX, top: r.top + scrollY, right: r.right + scrollX, width: r.width, height: r.height}; };
  const table = document.getElementById('headline');
  document.body.setAttribute('data-geometry', JSON.stringify({
    innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
    scrollHeight: document.documentElement.scrollHeight,
    headline: table ? {...box(table), text: table.innerText,
                       fontSize: parseFloat(getComputedStyle(table.querySelector('td')).fontSize),
                       box: box(table.parentElement),
                       columns: [...table.querySelectorAll('thead th')].map(th => ({...box(th),
                         name: th.firstChild.textContent.trim()}))} : null,
    perDataset: box(document.getElementById('per-dataset')),
    plots: [...document.querySelectorAll('#plots img')].map(i => ({...box(i), complete: i.complete,
      naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, task: i.closest('figure')?.dataset.task})),
  }));
});
</script>"""


def chromium(profile, *args):
    assert CHROMIUM is not None, "CI=true but chromium is missing: .ci/run installs it with `make browser`"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             "--force-device-scale-factor=1", f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


def render(page, tmp_path):
    """(geometry from the DOM at a 1280 px window, full-page screenshot as an RGB array)."""
    from PIL import Image

    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    proc = chromium(tmp_path / "profile", f"--window-size={WINDOW_WIDTH},{FIRST_SCREEN}", "--virtual-time-budget=5000",
                    "--dump-dom", measured.as_uri())
    found = re.search(r'data-geometry="([^"]*)"', proc.stdout)
    assert found, f"chromium gave no geometry (rc {proc.returncode}): {proc.stderr[-2000:]}"
    geometry = json.loads(html_lib.unescape(found.group(1)))
    shot = tmp_path / "page.png"
    proc = chromium(tmp_path / "profile", f"--window-size={WINDOW_WIDTH},{geometry['scrollHeight']}",
                    f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as img:
        return geometry, np.asarray(img.convert("RGB")).astype(np.int16)


def crop(pixels, rect):
    top, left = int(rect["top"]), int(rect["left"])
    return pixels[top:top + int(rect["height"]), left:left + int(rect["width"])]


@needs_chromium
@pytest.mark.parametrize("which", ["results_dir", "paper_results"])
def test_page_opens_with_the_headline_and_every_plot_is_readable(which, request, tmp_path):
    from mmkd.evaluation.report import write_report

    folder = request.getfixturevalue(which)
    written = write_report(folder, tmp_path / "report")
    geometry, pixels = render(written["html"], tmp_path)
    models = written["models"]

    # no sideways scrolling at a normal window width
    assert geometry["innerWidth"] == WINDOW_WIDTH
    assert geometry["scrollWidth"] <= WINDOW_WIDTH, f"the page is {geometry['scrollWidth']} px wide: it scrolls sideways"
    # the headline table opens the page: on the first screen, whole, every model in it, normal text size
    head = geometry["headline"]
    assert head is not None, "the page has no headline table"
    assert head["top"] < FIRST_SCREEN / 2 and head["top"] + head["height"] <= FIRST_SCREEN + 200
    assert head["left"] >= 0 and head["right"] <= WINDOW_WIDTH
    assert all(m in head["text"] for m in models) and "±" in head["text"]
    assert head["fontSize"] >= 13
    table = crop(pixels, head)
    assert (table.sum(axis=2) < 200).mean() > 0.01, "the headline table rendered no text"
    # every column of the headline in view without scrolling its box: the page's width is capped (max-width), so
    # what fits here fits every wider window (1,400 px included); in the screenshot each column header has text
    names = [c["name"] for c in head["columns"]]
    assert names[:2] == ["model", "overall"]
    assert sorted(names[1:]) == sorted({c for _, c in read_headline_csv(written["headline_csv"])})
    for col in head["columns"]:
        assert col["left"] >= head["box"]["left"] - 1 and col["right"] <= head["box"]["right"] + 1, \
            f"headline column {col['name']!r} ends at {col['right']:.0f} px, out of view (its box ends at " \
            f"{head['box']['right']:.0f} px)"
        header = crop(pixels, col)
        assert (header.sum(axis=2) < 300).mean() > 0.01, f"headline column {col['name']!r}: no text in the screenshot"

    # one plot per task, after the table and before the per-dataset detail, each at (near) natural size
    assert geometry["perDataset"] is not None, "the page has no per-dataset section"
    plots = geometry["plots"]
    assert sorted(p["task"] for p in plots) == sorted(p.stem for p in written["plots"])
    for plot in plots:
        assert plot["complete"] and plot["naturalWidth"] > 0, f"{plot['task']}: the image did not load"
        assert head["top"] + head["height"] < plot["top"] < geometry["perDataset"]["top"]
        assert plot["left"] >= 0 and plot["right"] <= WINDOW_WIDTH, f"{plot['task']}: outside the window"
        scale = plot["width"] / plot["naturalWidth"]
        assert scale >= 0.9 and plot["width"] >= 400, f"{plot['task']}: shown at {scale:.0%}, text would be unreadable"
        region = crop(pixels, plot)
        assert region.shape[0] >= 0.95 * plot["height"]
        assert region.std() > 20 and (region.sum(axis=2) < 600).mean() > 0.02, f"{plot['task']}: nothing painted"
    if len(plots) >= 2:  # small multiples: plots share rows rather than stacking one per screen
        assert len({round(p["top"]) for p in plots}) < len(plots)
