"""Readers of the paper benchmark: the authors' `{split}.txt` layout, per-class prompt sentences,
`{c}` templates and CLIP_benchmark's classnames/templates JSON files (checked against open_clip's own
encoders), template slot errors, non-UTF-8 captions, multi-label zero-shot (against scikit-learn),
CLIP_benchmark metric names, `eval --datasets` absent listing and the report's coverage column."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import COLOURS, save_noisy_colour
from mmkd.errors import ConfigError, DataError, UsageError
from mmkd.evaluation.datasets import load_captions, load_classification, parse_list_line
from mmkd.evaluation.prompts import check_templates, fill
from mmkd.evaluation.runner import FeatureCache, evaluate, parse_catalog

def _write_images(root, per_class=3):
    rng = np.random.default_rng(0)
    return [(save_noisy_colour(root / f"{name}{i}.png", name, rng, 50), name)
            for name in COLOURS for i in range(per_class)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mmkd.teachers import load_teacher
    from mmkd.teachers.testing import make_open_clip_teacher

    tmp = tmp_path_factory.mktemp("readers")
    folder = make_open_clip_teacher(tmp / "tiny", seed=5)
    return tmp, folder, load_teacher(f"local-dir:{folder}", name="tiny")


def test_template_slots():
    assert fill("a {c} photo", "cat") == fill("a {} photo", "cat") == fill("a {classname} photo", "cat") == "a cat photo"
    assert fill("{{literal}} {c}", "x") == "{literal} x"
    assert check_templates(["a photo of {c}.", "{}"]) == ["a photo of {c}.", "{}"]
    for bad, match in (("a photo of {label}", "slot {label}"), ("a {c} and {classname}", "two different slots"),
                       ("no slot at all", "no class-name slot"), ("a {c photo", "malformed")):
        with pytest.raises(UsageError, match=match):
            check_templates([bad])


def test_list_lines():
    assert parse_list_line("lungaca1.jpeg lung_aca\n") == ("lungaca1.jpeg", "lung_aca")
    assert parse_list_line("a b/img 1.png\tclass two") == ("a b/img 1.png", "class two")
    assert parse_list_line("   ") is None
    with pytest.raises(ValueError):
        parse_list_line("lonely")


def test_authors_txt_layout_both_path_conventions(tmp_path):
    (tmp_path / "test").mkdir()
    items = _write_images(tmp_path / "test")
    # test.txt: bare names resolved in test/ (the authors' loader); train.txt: paths relative to the list, tabs
    (tmp_path / "test.txt").write_text("".join(f"{p.name} {c}\n" for p, c in items))
    (tmp_path / "train.txt").write_text("".join(f"test/{p.name}\t{c}\n" for p, c in items[:4]) + "\n")
    entry, = parse_catalog({"datasets": {"colours": {"tasks": ["zero-shot"], "format": "txt", "path": "."}}}, tmp_path)
    data = load_classification(entry)
    assert data.classnames == ["blue", "green", "red"]  # sorted label strings
    assert data.splits["test"].labels.tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]
    assert len(data.splits["train"]) == 4 and data.splits["train"].images.paths[0] == str(items[0][0])
    (tmp_path / "val.txt").write_text("missing.png red\n")
    with pytest.raises(DataError, match="val.txt: the first image 'missing.png'"):
        load_classification(entry)
    (tmp_path / "val.txt").write_text("onlyone\n")
    with pytest.raises(DataError, match="val.txt:1"):
        load_classification(entry)


_OPEN_CLIP = {}


def _open_clip_class_feats(folder, prompts_per_class):
    """(open_clip model, its preprocess, [C, D] prompt-ensemble class features) computed with open_clip alone."""
    import open_clip

    if folder not in _OPEN_CLIP:
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        _OPEN_CLIP[folder] = (model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}"))
    model, preprocess, tokenizer = _OPEN_CLIP[folder]
    with torch.no_grad():
        feats = [F.normalize(F.normalize(model.encode_text(tokenizer(p)), dim=-1).mean(0), dim=0)
                 for p in prompts_per_class]
    return model, preprocess, torch.stack(feats)


def test_per_class_prompts_and_clip_benchmark_files_match_open_clip(tiny, tmp_path):
    from PIL import Image

    tmp, folder, model = tiny
    (tmp_path / "test").mkdir()
    items = _write_images(tmp_path / "test")
    (tmp_path / "test.txt").write_text("".join(f"{p.name} {c}\n" for p, c in items))
    (tmp_path / "ints").mkdir()  # CLIP_benchmark's convention: integer labels indexing the classnames list
    (tmp_path / "ints" / "test.txt").write_text("".join(f"../test/{p.name} {['blue', 'green', 'red'].index(c)}\n"
                                                        for p, c in items))
    sentences = {"red": ["a red square", "crimson colour"], "green": ["a green square"],
                 "blue": ["a blue square", "navy", "the colour of the sea"]}
    (tmp_path / "en_classnames.json").write_text(json.dumps({"colours": ["blue thing", "green thing", "red thing"],
                                                             "other": ["x"]}))
    (tmp_path / "en_zeroshot_classification_templates.json").write_text(json.dumps(
        {"colours": ["a photo of {c}.", "{c}"], "cupl": {"blue thing": ["b1"], "green thing": ["g1"], "red thing": ["r1"]}}))
    catalog = {"datasets": {
        "sentences": {"tasks": ["zero-shot"], "format": "txt", "path": ".", "prompts": sentences},
        "colours": {"tasks": ["zero-shot"], "format": "txt", "path": "ints",
                    "classnames": "en_classnames.json", "templates": "en_zeroshot_classification_templates.json"},
        "cupl": {"tasks": ["zero-shot"], "format": "txt", "path": "ints", "classnames": "en_classnames.json#colours",
                 "templates": "en_zeroshot_classification_templates.json#cupl"},
    }}
    entries = parse_catalog(catalog, tmp_path)
    assert entries[1].classnames == ["blue thing", "green thing", "red thing"]
    assert entries[1].templates == ["a photo of {c}.", "{c}"] and entries[2].prompts == {
        "blue thing": ["b1"], "green thing": ["g1"], "red thing": ["r1"]}
    records = evaluate(model, entries, ["zero-shot"], None, num_bootstrap=0, cache=FeatureCache(None))
    labels = np.array([["blue", "green", "red"].index(c) for _, c in items])
    oc_model, preprocess, _ = _open_clip_class_feats(folder, [["x"]])
    with torch.no_grad():
        img = F.normalize(oc_model.encode_image(torch.stack([preprocess(Image.open(p).convert("RGB"))
                                                              for p, _ in items])), dim=-1)
    for record, per_class in zip(records, (
            [sentences["blue"], sentences["green"], sentences["red"]],
            [[f"a photo of {c}.", c] for c in ("blue thing", "green thing", "red thing")],
            [["b1"], ["g1"], ["r1"]])):
        _, _, class_feats = _open_clip_class_feats(folder, per_class)
        logits = (img @ class_feats.T).numpy()
        assert record["metrics"]["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()), abs=1e-9)
        assert record["clip_benchmark"]["acc1"] == record["metrics"]["accuracy"]
        assert record["clip_benchmark"]["mean_per_class_recall"] == record["metrics"]["balanced_accuracy"]
        assert record["clip_benchmark"]["acc5"] is None  # 3 classes < 5: CLIP_benchmark's NaN
        assert list(record["prompts"].values()) == per_class
    assert records[0]["details"]["prompt_source"] == "per-class sentences"


def test_catalog_prompt_problems_are_collected(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"a": ["{c}"], "b": ["{x} bad"]}))
    data = {"datasets": {
        "both": {"tasks": ["zero-shot"], "format": "txt", "path": ".", "templates": ["{}"], "prompts": {"a": ["x"]}},
        "b": {"tasks": ["zero-shot"], "format": "txt", "path": ".", "templates": "t.json"},
        "nokey": {"tasks": ["zero-shot"], "format": "txt", "path": ".", "templates": "t.json#zzz"},
        "empty": {"tasks": ["zero-shot"], "format": "txt", "path": ".", "prompts": {"a": []}},
        "slot": {"tasks": ["zero-shot"], "format": "txt", "path": ".", "templates": ["photo of {label}"]},
    }}
    with pytest.raises(ConfigError) as err:
        parse_catalog(data, tmp_path)
    msg = str(err.value)
    assert "not both" in msg and "{x}" in msg and "no entry 'zzz'" in msg and "non-empty list" in msg
    assert "{label}" in msg and len(err.value.problems) == 5


def test_prompts_must_cover_the_classes(tiny, tmp_path):
    _, _, model = tiny
    (tmp_path / "test").mkdir()
    items = _write_images(tmp_path / "test", per_class=1)
    (tmp_path / "test.txt").write_text("".join(f"{p.name} {c}\n" for p, c in items))
    entry, = parse_catalog({"datasets": {"c": {"tasks": ["zero-shot"], "format": "txt", "path": ".",
                                               "prompts": {"red": ["r"], "green": ["g"], "purple": ["p"]}}}}, tmp_path)
    with pytest.raises(UsageError, match="no sentences for 'blue'.*'purple' is not a class"):
        evaluate(model, [entry], ["zero-shot"], None, num_bootstrap=0, cache=FeatureCache(None))


def test_non_utf8_caption_is_named_or_decoded_as_told(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "caps.csv").write_bytes(b"image,caption\na.png,plain caption\na.png,caf\xe9 au lait\n")
    entry, = parse_catalog({"datasets": {"c": {"tasks": ["retrieval"], "format": "csv", "path": "caps.csv"}}}, tmp_path)
    with pytest.raises(DataError, match=r"1 caption\(s\) are not valid UTF-8 \(data row\(s\) 2.*encoding: cp1252"):
        load_captions(entry)
    entry, = parse_catalog({"datasets": {"c": {"tasks": ["retrieval"], "format": "csv", "path": "caps.csv",
                                               "encoding": "cp1252"}}}, tmp_path)
    _, split = load_captions(entry)
    assert split.captions == ["plain caption", "café au lait"]


def test_multilabel_metrics_match_scikit_learn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from mmkd.evaluation.multilabel import bootstrap_multilabel_ci, evaluate_multilabel

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (60, 4))
    labels[:5, 1] = -1  # unknown for label 1
    labels[:, 3] = 0  # no positive: AUROC and AP undefined
    scores = rng.normal(size=(60, 4)) + labels.clip(0) * 0.8
    result = evaluate_multilabel(labels, scores, ["a", "b", "c", "d"], num_bootstrap=200, seed=0)
    ref_auroc = [roc_auc_score(labels[labels[:, j] >= 0, j], scores[labels[:, j] >= 0, j]) for j in range(3)]
    ref_ap = [average_precision_score(labels[labels[:, j] >= 0, j], scores[labels[:, j] >= 0, j]) for j in range(3)]
    assert result["details"]["per_label_auroc"]["b"] == pytest.approx(ref_auroc[1])
    assert np.isnan(result["details"]["per_label_auroc"]["d"])
    assert result["metrics"]["auroc"] == pytest.approx(np.mean(ref_auroc))
    assert result["metrics"]["mean_average_precision"] == pytest.approx(np.mean(ref_ap))
    lo, hi = result["ci"]["auroc"]
    assert lo < result["metrics"]["auroc"] < hi
    # the batched bootstrap equals scikit-learn on the same resample (no ties in continuous scores)
    ci_one = bootstrap_multilabel_ci(labels[:, :3], scores[:, :3], num_bootstrap=1, seed=7)
    idx = np.random.default_rng(7).integers(0, 60, size=(1, 60))[0]
    ref = np.mean([roc_auc_score(labels[idx][labels[idx][:, j] >= 0, j], scores[idx][labels[idx][:, j] >= 0, j])
                   for j in range(3)])
    assert ci_one["auroc"][0] == pytest.approx(ref)


def test_multilabel_zero_shot_on_a_chestmnist_like_npz(tiny, tmp_path):
    tmp, folder, model = tiny
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (12, 14)).astype(np.uint8)
    np.savez(tmp_path / "chestmnist.npz", test_images=rng.integers(0, 255, (12, 28, 28), dtype=np.uint8),
             test_labels=labels, train_images=np.zeros((1, 28, 28), np.uint8), train_labels=labels[:1])
    entry, = parse_catalog({"datasets": {"chest": {"tasks": ["zero-shot"], "format": "medmnist",
                                                   "path": "chestmnist.npz", "templates": ["a chest x-ray with {c}"]}}},
                           tmp_path)
    record, = evaluate(model, [entry], ["zero-shot"], None, num_bootstrap=50, cache=FeatureCache(None))
    assert set(record["metrics"]) == {"auroc", "mean_average_precision"}
    assert record["clip_benchmark"] == {"mean_average_precision": record["metrics"]["mean_average_precision"]}
    from sklearn.metrics import average_precision_score

    data = load_classification(entry)
    oc_model, preprocess, class_feats = _open_clip_class_feats(folder, [[f"a chest x-ray with {c}"]
                                                                        for c in data.classnames])
    images = data.splits["test"].images
    with torch.no_grad():
        img = F.normalize(oc_model.encode_image(torch.stack([preprocess(images.load(i)) for i in range(12)])), dim=-1)
    scores = (img @ class_feats.T).numpy()
    ref = np.mean([average_precision_score(labels[:, j], scores[:, j]) for j in range(14) if labels[:, j].any()])
    assert record["metrics"]["mean_average_precision"] == pytest.approx(ref, abs=1e-6)


def test_eval_paper_like_catalog_lists_absent_and_report_shows_coverage(tiny, tmp_path, capsys):
    tmp, folder, _ = tiny
    (tmp_path / "data" / "present" / "test").mkdir(parents=True)
    items = _write_images(tmp_path / "data" / "present" / "test", per_class=2)
    (tmp_path / "data" / "present" / "test.txt").write_text("".join(f"{p.name} {c}\n" for p, c in items))
    (tmp_path / "cat.yaml").write_text(
        "datasets:\n"
        "  present: {tasks: [zero-shot], format: txt, path: data/present, templates: ['{c}']}\n"
        "  absent_a: {tasks: [zero-shot], format: txt, path: data/a, source: https://example.org/a,\n"
        "             prepare: {layout: class_folders, files: '**/{label}/*.png', labels: [x]}}\n"
        "  absent_b: {tasks: [zero-shot, linear-probe], format: txt, path: data/b}\n")
    from mmkd.cli import main

    out = tmp_path / "results"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["eval", "--model", f"local-dir:{folder}", "--name", "tiny", "--datasets", str(tmp_path / "cat.yaml"),
                     "--tasks", "all", "--out", str(out), "--num-bootstrap", "0"]) == 0
    stdout = capsys.readouterr().out
    assert "absent (2 of 3 dataset(s)" in stdout
    assert "absent_a: mmkd datasets prepare absent_a --from DOWNLOAD (download: https://example.org/a)" in stdout
    record = json.loads((out / "tiny" / "present__zero-shot.json").read_text())
    assert record["catalog"] == {"name": "cat", "listed": ["absent_a", "absent_b", "present"]}
    assert main(["report", str(out)]) == 0
    md = (out / "report" / "results.md").read_text()
    assert "1/3" in md  # the zero-shot mean covers 1 of the 3 datasets the catalog lists
    import pandas as pd

    head = pd.read_csv(out / "report" / "headline.csv")
    row = head[(head.model == "tiny") & (head.column == "zero-shot")].iloc[0]
    assert (row.datasets_run, row.datasets_listed) == (1, 3)
