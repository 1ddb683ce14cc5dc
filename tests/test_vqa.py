"""VQA: reading VQA-RAD/SLAKE-style tables, the fusion head beats the majority baseline, runner output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import COLORS, SHAPES, draw


@pytest.fixture(scope="module")
def tiny_model():
    from mmkd.models.adapter import OpenClipEncoder
    from mmkd.models.student import create_student

    s = create_student("mmkd-tiny-vit", seed=0)
    return OpenClipEncoder(s.model, s.eval_transform, s.tokenizer, name="tiny")


def make_vqa(root: Path, num_train_images: int = 48, num_test_images: int = 24, seed: int = 0,
             fmt: str = "jsonl") -> Path:
    """Images of coloured shapes; every image gets a colour question (open), a yes/no question
    about red (closed) and a shape question (open). The answers can only come from the image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_train_images + num_test_images):
        color, shape = list(COLORS)[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))]
        name = f"images/{i:04d}.png"
        Image.fromarray(draw(color, shape, rng)).save(root / name)
        split = "train" if i < num_train_images else "test"
        rows += [
            {"image": name, "question": "What color is the object?", "answer": color.capitalize() + ".",
             "answer_type": "OPEN", "split": split},
            {"image": name, "question": "Is the object red?", "answer": "yes" if color == "red" else "no",
             "answer_type": "CLOSED", "split": split},
            {"image": name, "question": "What shape is shown?", "answer": shape, "split": split},
        ]
    path = root / f"vqa.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image", "question", "answer", "answer_type", "split"])
            writer.writeheader()
            writer.writerows(rows)
    return path


def test_read_rows_normalises_answers_and_types(tmp_path):
    from mmkd.evaluation.vqa import read_vqa_rows

    rows = read_vqa_rows(make_vqa(tmp_path, 4, 2, fmt="csv"))
    assert len(rows) == 18
    colour = rows[0]
    assert colour.answer in COLORS and colour.answer_type == "open"  # "Red." -> "red"
    assert rows[1].answer in ("yes", "no") and rows[1].answer_type == "closed"
    assert rows[2].answer_type == "open"  # no type given, not yes/no
    assert Path(colour.image).is_absolute() and Path(colour.image).is_file()
    assert {r.split for r in rows} == {"train", "test"}


def test_missing_image_is_reported(tmp_path):
    from mmkd.errors import DataError
    from mmkd.evaluation.vqa import read_vqa_rows

    path = make_vqa(tmp_path, 2, 1)
    (tmp_path / "images" / "0001.png").unlink()
    with pytest.raises(DataError, match="0001.png"):
        read_vqa_rows(path)


def test_head_beats_majority_baseline(tmp_path, tiny_model):
    from mmkd.evaluation.runner import FeatureCache
    from mmkd.evaluation.vqa import evaluate_vqa, read_vqa_rows

    rows = read_vqa_rows(make_vqa(tmp_path))
    result = evaluate_vqa(tiny_model, rows, seed=0, cache=FeatureCache(None), num_bootstrap=200)
    m = result["metrics"]
    # Majority answer ("no") is right on ~3/4 of the red questions only: about a quarter of all rows.
    assert m["majority_accuracy"] < 0.35
    assert m["accuracy"] > m["majority_accuracy"] + 0.25, m
    assert m["open_accuracy"] > 0.4 and m["closed_accuracy"] > 0.6, m
    # overall accuracy is the row-weighted mean of the two types
    d = result["details"]
    expected = (m["closed_accuracy"] * d["num_closed"] + m["open_accuracy"] * d["num_open"]) / (d["num_closed"] + d["num_open"])
    assert m["accuracy"] == pytest.approx(expected)
    lo, hi = result["ci"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and hi < 1.0 + 1e-9
    assert d["majority_answer"] == "no" and d["split_sizes"] == {"train": 144, "test": 72}


def test_shuffled_answers_fall_to_chance(tmp_path, tiny_model):
    """Control: when answers no longer depend on the image, the head cannot beat the baseline by much."""
    from mmkd.evaluation.runner import FeatureCache
    from mmkd.evaluation.vqa import evaluate_vqa, read_vqa_rows

    rows = read_vqa_rows(make_vqa(tmp_path))
    rng = np.random.default_rng(0)
    for question in {r.question for r in rows}:  # shuffle answers within each question across images
        group = [r for r in rows if r.question == question]
        answers = [group[i].answer for i in rng.permutation(len(group))]
        for r, a in zip(group, answers):
            r.answer = a
    result = evaluate_vqa(tiny_model, rows, seed=0, cache=FeatureCache(None))
    per_question_chance = 0.25 * (1 / 3) + 0.75 * (1 / 3) + 0.5 * (1 / 3)  # colour, red?, shape (best guesses)
    assert result["metrics"]["accuracy"] < per_question_chance + 0.15, result["metrics"]
    # The image-blind baseline: each test question answered by its most frequent training answer (naive loop).
    train, test = [r for r in rows if r.split == "train"], [r for r in rows if r.split == "test"]
    hits = []
    for r in test:
        answers = sorted(a.answer for a in train if a.question == r.question)
        best = max(sorted(set(answers)), key=answers.count)  # first of the most frequent, by name
        hits.append(best == r.answer)
    assert result["metrics"]["question_only_accuracy"] == pytest.approx(np.mean(hits))
    assert abs(result["metrics"]["question_only_accuracy"] - per_question_chance) < 0.15


def test_runner_writes_vqa_result(tmp_path, tiny_model):
    from mmkd.evaluation.runner import FeatureCache, evaluate

    make_vqa(tmp_path / "data", 16, 8)
    catalog = {"datasets": {"toy-vqa": {"tasks": ["vqa"], "format": "vqa", "path": str(tmp_path / "data" / "vqa.jsonl"),
                                        "vqa_epochs": 10}}}
    cache = FeatureCache(tmp_path / "cache")
    [record] = evaluate(tiny_model, catalog, ["vqa"], tmp_path / "out", num_bootstrap=50, cache=cache)
    saved = json.loads((tmp_path / "out" / "tiny" / "toy-vqa__vqa.json").read_text())
    assert saved["task"] == "vqa" and saved["metrics"] == record["metrics"]
    assert set(saved["metrics"]) == {"accuracy", "closed_accuracy", "open_accuracy", "majority_accuracy",
                                     "question_only_accuracy"}
    assert saved["split_sizes"] == {"train": 48, "test": 24}
    assert saved["details"]["train_config"]["epochs"] == 10
    misses = cache.misses
    evaluate(tiny_model, catalog, ["vqa"], None, num_bootstrap=0, cache=cache)
    assert cache.misses == misses  # second run encodes nothing


def test_bad_option_names_the_key(tmp_path, tiny_model):
    from mmkd.errors import UsageError
    from mmkd.evaluation.runner import FeatureCache, evaluate

    make_vqa(tmp_path, 4, 2)
    catalog = {"datasets": {"v": {"tasks": ["vqa"], "format": "vqa", "path": str(tmp_path / "vqa.jsonl"),
                                  "vqa_epochs": "many"}}}
    with pytest.raises(UsageError, match="vqa_epochs"):
        evaluate(tiny_model, catalog, ["vqa"], None, num_bootstrap=0, cache=FeatureCache(None))
