"""`mmkd eval` end to end on a tiny open_clip model and datasets the test writes: its zero-shot
accuracy and retrieval recall@k equal a direct computation with open_clip's own encoders."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from helpers import save_noisy_colour

CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {} square.", "{} colour"]


def _write_images(root, rng, per_class=5):
    """ImageFolder test split of noisy coloured squares; returns [(path, class index)]."""
    items = []
    for ci, name in enumerate(CLASSES):
        folder = root / "test" / name
        folder.mkdir(parents=True)
        items += [(save_noisy_colour(folder / f"{name}_{i}.png", name, rng, 40), ci) for i in range(per_class)]
    return items


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mmkd.teachers.testing import make_open_clip_teacher

    tmp = tmp_path_factory.mktemp("evalcli")
    rng = np.random.default_rng(0)
    model_dir = make_open_clip_teacher(tmp / "tiny_clip", seed=3)
    items = _write_images(tmp / "colours", rng)
    # Retrieval table: two captions per image, written with paths relative to the CSV.
    rows = []
    for j, (path, ci) in enumerate(items):
        rel = path.relative_to(tmp / "colours")
        rows += [{"image": str(rel), "caption": f"a {CLASSES[ci]} square, sample {j}"},
                 {"image": str(rel), "caption": f"noise number {j} on {CLASSES[ci]}"}]
    with open(tmp / "colours" / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp / "catalog.yaml").write_text(
        "datasets:\n"
        "  colours:\n    tasks: [zero-shot]\n    format: imagefolder\n    path: colours\n"
        f"    templates: {json.dumps(TEMPLATES)}\n"
        "  colour_captions:\n    tasks: [retrieval]\n    format: csv\n    path: colours/captions.csv\n")
    return {"tmp": tmp, "model_dir": model_dir, "items": items, "rows": rows}


def _open_clip(model_dir):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{model_dir}")


@torch.no_grad()
def _direct_image_feats(model, preprocess, paths):
    from PIL import Image

    pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    return F.normalize(model.encode_image(pixels), dim=-1)


def test_eval_cli_matches_open_clip(setup):
    out = setup["tmp"] / "results"
    proc = run_cli("eval", "--model", f"local-dir:{setup['model_dir']}", "--name", "tiny",
                   "--tasks", "zero-shot,retrieval", "--datasets", str(setup["tmp"] / "catalog.yaml"),
                   "--out", str(out), "--num-bootstrap", "200")
    assert proc.returncode == 0, proc.stderr
    zs = json.loads((out / "tiny" / "colours__zero-shot.json").read_text())
    ret = json.loads((out / "tiny" / "colour_captions__retrieval.json").read_text())

    model, preprocess, tokenizer = _open_clip(setup["model_dir"])
    paths = [p for p, _ in setup["items"]]
    labels = np.array([c for _, c in setup["items"]])
    image_feats = _direct_image_feats(model, preprocess, paths)
    with torch.no_grad():
        class_feats = []
        for name in CLASSES:
            prompt_feats = F.normalize(model.encode_text(tokenizer([t.format(name) for t in TEMPLATES])), dim=-1)
            class_feats.append(F.normalize(prompt_feats.mean(0), dim=-1))
        class_feats = torch.stack(class_feats)
    pred = (image_feats @ class_feats.T).argmax(1).numpy()
    assert zs["metrics"]["accuracy"] == pytest.approx(float((pred == labels).mean()), abs=1e-9)
    assert zs["prompts"]["red"] == ["a photo of a red square.", "red colour"]
    assert zs["split_sizes"] == {"test": 15}
    assert zs["seed"] == 0 and zs["model_provenance"]
    for name, (lo, hi) in zs["ci"].items():
        assert lo - 1e-9 <= zs["metrics"][name] <= hi + 1e-9, name

    # Retrieval: naive recall@k by sorting, several captions per image.
    captions = [r["caption"] for r in setup["rows"]]
    caption_image = np.repeat(np.arange(len(paths)), 2)
    with torch.no_grad():
        text_feats = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    sim = (image_feats @ text_feats.T).numpy()
    for k in (1, 5, 10):
        i2t = np.mean([bool(set(np.argsort(-sim[i])[:k]) & set(np.flatnonzero(caption_image == i)))
                       for i in range(len(paths))])
        t2i = np.mean([caption_image[j] in np.argsort(-sim[:, j])[:k] for j in range(len(captions))])
        assert ret["metrics"][f"i2t_recall@{k}"] == pytest.approx(i2t, abs=1e-9)
        assert ret["metrics"][f"t2i_recall@{k}"] == pytest.approx(t2i, abs=1e-9)
    assert ret["details"]["num_captions"] == 30 and ret["details"]["num_images"] == 15

    # the second run of the same command reads every feature from the cache (tested in-process in
    # test_eval_linear_probe.py); here the cache files exist
    assert list((out / ".feature_cache").rglob("*.safetensors"))


def test_eval_cli_usage_errors(setup, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  a:\n    tasks: [zero-shoot]\n    format: folder\n")
    proc = run_cli("eval", "--model", f"local-dir:{setup['model_dir']}", "--datasets", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    # every problem at once, each naming the key
    assert "datasets.a.tasks" in proc.stderr and "datasets.a.format" in proc.stderr and "datasets.a.path" in proc.stderr
