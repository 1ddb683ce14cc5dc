"""`mmkd eval --protocol authors`: zero-shot scored as the MMKD-CLIP authors' src/clipeval/eval_zeroshot.py
(wangshansong1/MMKD-CLIP @ 127544c) scores it, checked against transcriptions of that file written here:
scikit-learn for every metric, their bootstrap loop seeded as theirs (default_rng(42), one image per class
then a uniform fill, one generator per metric)."""

import numpy as np
import pytest
from scipy.special import softmax
from sklearn import metrics as skm

from mmkd.evaluation.authors_protocol import authors_bootstrap_indices, authors_classification


def _their_indices(targets, n_iter, seed=42):
    """eval_zeroshot.py:219-228 and 273-287: the resamples their loop draws, in order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_iter):
        idxs = []
        for cls in np.unique(targets):
            idxs.append(rng.choice(np.where(targets == cls)[0]))
        idxs.extend(rng.integers(0, len(targets), size=len(targets) - len(np.unique(targets))))
        out.append(np.array(idxs))
    return out


def _their_metrics(outputs, targets):
    """eval_zeroshot.py:155-192 on cosine logits: softmax, then scikit-learn."""
    probs = softmax(outputs, axis=1)
    average = "binary" if len(np.unique(targets)) == 2 else "macro"
    preds = probs.argmax(1)
    auc = (skm.roc_auc_score(targets, probs[:, 1] - probs[:, 0]) if average == "binary"
           else skm.roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
    return {"accuracy": skm.accuracy_score(targets, preds), "auroc": auc,
            "f1": skm.f1_score(targets, preds, average=average, zero_division=0),
            "precision": skm.precision_score(targets, preds, average=average, zero_division=0),
            "recall": skm.recall_score(targets, preds, average=average, zero_division=0)}


def _cosines(n, c, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    y[:c] = np.arange(c)
    cos = np.clip(rng.normal(0.2, 0.15, size=(n, c)) + 0.12 * np.eye(c)[y], -1, 1)
    return y, cos


def test_bootstrap_indices_are_theirs():
    y, _ = _cosines(37, 3, 0)
    want = np.stack(_their_indices(y, 50))
    got = authors_bootstrap_indices(y, 50)
    np.testing.assert_array_equal(got, want)
    # each resample opens with one image of every class, in class order
    assert (y[got[:, :3]] == np.arange(3)).all()


@pytest.mark.parametrize("num_classes", [2, 4])
def test_point_estimates_and_cis_are_theirs(num_classes):
    y, cos = _cosines(60, num_classes, num_classes)
    metrics, ci, probs = authors_classification(y, cos, num_bootstrap=100)
    np.testing.assert_allclose(probs, softmax(cos, axis=1), rtol=1e-12)
    want = _their_metrics(cos, y)
    for k, v in want.items():
        assert metrics[k] == pytest.approx(v, abs=1e-12), k
    values = {k: [] for k in want}
    for idx in _their_indices(y, 100):
        for k, v in _their_metrics(cos[idx], y[idx]).items():
            values[k].append(v)
    for k, v in values.items():
        assert ci[k] == pytest.approx(list(np.percentile(v, [2.5, 97.5])), abs=1e-12), k


def test_binary_f1_and_multiclass_auroc_differ_from_mmkd():
    """The two protocols really disagree where the authors' code says they should."""
    from mmkd.evaluation.metrics import classification_metrics

    y, cos = _cosines(80, 2, 5)
    theirs, _, _ = authors_classification(y, cos, num_bootstrap=0)
    mmkd = classification_metrics(y, softmax(100 * cos, axis=1))
    assert theirs["f1"] == pytest.approx(skm.f1_score(y, cos.argmax(1)), abs=1e-12)
    assert abs(theirs["f1"] - mmkd["f1"]) > 1e-3
    # binary AUROC ranks the cosine gap, whatever the scale (mmkd's 100 x cosine differs only where its
    # softmax saturates into ties)
    assert theirs["auroc"] == pytest.approx(skm.roc_auc_score(y, cos[:, 1] - cos[:, 0]), abs=1e-12)
    y, cos = _cosines(80, 5, 6)
    theirs, _, _ = authors_classification(y, cos, num_bootstrap=0)
    mmkd = classification_metrics(y, softmax(100 * cos, axis=1))
    assert abs(theirs["auroc"] - mmkd["auroc"]) > 1e-4


@pytest.mark.slow
def test_eval_protocol_authors_end_to_end_and_report_keeps_protocols_apart(tmp_path):
    """A tiny open_clip model evaluated both ways: two result files, each naming its protocol; the
    authors' AUROC equals scikit-learn on open_clip's own cosines; the report shows two columns."""
    import json

    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from helpers import save_noisy_colour
    from mmkd import load_model
    from mmkd.evaluation.report import collect_results
    from mmkd.evaluation.report_table import headline_table
    from mmkd.evaluation.runner import evaluate
    from mmkd.teachers.testing import make_open_clip_teacher

    classes = ["red", "green", "blue"]
    rng = np.random.default_rng(0)
    items = []
    for ci, name in enumerate(classes):
        (tmp_path / "colours" / "test" / name).mkdir(parents=True)
        items += [(save_noisy_colour(tmp_path / "colours" / "test" / name / f"{i}.png", name, rng, 40), ci)
                  for i in range(6)]
    model_dir = make_open_clip_teacher(tmp_path / "tiny", seed=3)
    catalog = {"datasets": {"colours": {"tasks": ["zero-shot"], "format": "imagefolder",
                                        "path": str(tmp_path / "colours"), "templates": ["a {} square"]}}}
    model = load_model(f"local-dir:{model_dir}", device="cpu", name="tiny")
    out = tmp_path / "results"
    for protocol in ("mmkd", "authors"):
        evaluate(model, catalog, ["zero-shot"], out, num_bootstrap=50, model_name="tiny", protocol=protocol)
    mine = json.loads((out / "tiny" / "colours__zero-shot__authors.json").read_text())
    ours = json.loads((out / "tiny" / "colours__zero-shot.json").read_text())
    assert (mine["protocol"], ours["protocol"]) == ("authors", "mmkd")
    assert mine["details"]["bootstrap_seed"] == 42 and mine["details"]["logit_scale"] == 1.0

    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    with torch.no_grad():
        img = F.normalize(oc.eval().encode_image(torch.stack([preprocess(Image.open(p).convert("RGB"))
                                                               for p, _ in items])), dim=-1)
        txt = F.normalize(oc.encode_text(tokenizer([f"a {c} square" for c in classes])), dim=-1)
    cos = (img @ txt.T).double().numpy()
    y = np.array([c for _, c in items])
    assert mine["metrics"]["auroc"] == pytest.approx(
        skm.roc_auc_score(y, softmax(cos, axis=1), multi_class="ovr", average="macro"), abs=1e-5)

    assert sorted(headline_table(collect_results(out)).models) == ["tiny", "tiny [authors protocol]"]
