"""`mmkd report` on two models' results: CSV, markdown table with mean, PNG plots, self-contained HTML."""

import csv
import json

import numpy as np
import pytest

from conftest import run_cli
from mmkd.evaluation.runner import DatasetEntry, evaluate


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
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
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
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


def test_report_writes_table_plots_and_html(results_dir):
    from PIL import Image

    proc = run_cli("report", str(results_dir))
    assert proc.returncode == 0, proc.stderr
    report = results_dir / "report"
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"model_a", "model_b"}
    assert {r["task"] for r in rows} == {"zero-shot", "retrieval"}
    acc = {(r["model"], r["dataset"]): float(r["value"]) for r in rows
           if r["task"] == "zero-shot" and r["metric"] == "accuracy"}
    saved = json.loads((results_dir / "model_a" / "squares__zero-shot.json").read_text())
    assert acc[("model_a", "squares")] == pytest.approx(saved["metrics"]["accuracy"])

    md = (report / "results.md").read_text()
    assert "## zero-shot — accuracy" in md and "## retrieval — i2t_recall@1" in md
    header = next(line for line in md.splitlines() if line.startswith("| model | squares"))
    assert header.rstrip().endswith("| mean |")
    line_a = next(line for line in md.splitlines()[md.splitlines().index(header):] if line.startswith("| model_a |"))
    cells = [float(c) for c in line_a.strip("| \n").split("|")[1:]]
    expected_mean = np.mean([acc[("model_a", "squares")], acc[("model_a", "squares_b")]])
    assert cells[-1] == pytest.approx(expected_mean, abs=1e-3)
    assert "| model_b |" in md

    plots = sorted((report / "plots").glob("*.png"))
    assert {p.name for p in plots} >= {"bar_zero-shot_accuracy.png", "bar_retrieval_i2t_recallat1.png", "radar.png"}
    for p in plots:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100

    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots)
    assert "src='http" not in page and 'src="http' not in page  # self-contained
    assert "model_a" in page and "model_b" in page and "<table>" in page


def test_report_on_empty_folder_is_a_usage_error(tmp_path):
    proc = run_cli("report", str(tmp_path))
    assert proc.returncode == 2 and "no result files" in proc.stderr and "Traceback" not in proc.stderr
