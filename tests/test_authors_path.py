"""The authors' path as `make paper-dry-run` runs it (pretrain-paper.yaml validated and keeping its best,
`align --arch authors`, distill-paper.yaml from RUN:best with that alignment, `eval --protocol authors`),
here on a tiny student so it runs in the slow suite; the recipes' values are kept except what a tiny
student cannot take (its own model, no MetaCLIP file, its context length)."""

import json
from pathlib import Path

import pytest

from conftest import run_cli
from helpers import make_pairs, write_store

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "mmkd-tiny-vit", "--model.context_length", "0", "--batch-size", "8", "--max-steps", "2",
        "--epochs", "1", "--device", "cpu", "--train.precision", "fp32", "--train.progress", "false",
        "--train.log_every", "1", "--data.num_workers", "0", "--data.format", "csv", "--train.save_every", "0"]


@pytest.mark.slow
def test_the_authors_path_on_a_tiny_student(tmp_path):
    pairs = make_pairs(tmp_path / "data", n=32)
    store = write_store(pairs, tmp_path / "store", dims=(24, 40))
    s1 = tmp_path / "s1-paper"
    r = run_cli("pretrain", "--config", str(ROOT / "configs" / "mmkd_b16" / "pretrain-paper.yaml"), "--data", str(pairs),
                *TINY, "--model.image_init", "", "--out", str(s1), "--train.batch_size_per_process", "8",
                "--val.data", str(pairs), "--val.encode_batch_size", "16", "--val.keep_best", "val/clip_loss")
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((s1 / "best" / "best.json").read_text())
    assert saved["metric"] == "val/clip_loss" and saved["step"] == 2
    cfg = (s1 / "config.yaml").read_text()
    assert "local: true" in cfg and "gather_with_grad: false" in cfg and "precision: fp32" in cfg

    alignment = store / "alignment-authors.safetensors"
    r = run_cli("align", "--store", str(store), "--latent-dim", "64", "--steps", "5", "--batch-size", "16",
                "--arch", "authors", "--out", str(alignment), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(alignment.with_suffix(".json").read_text())["arch"] == "authors"

    s2 = tmp_path / "s2-paper"
    r = run_cli("distill", "--config", str(ROOT / "configs" / "mmkd_b16" / "distill-paper.yaml"), "--data", str(pairs),
                *TINY, "--model", "", "--store", str(store), "--init", f"{s1}:best", "--out", str(s2),
                "--distill.alignment", str(alignment))
    assert r.returncode == 0, r.stderr[-3000:]
    init = json.loads((s2 / "summary.json").read_text())["init"]["init"]
    assert init["path"] == str(s1 / "best" / "open_clip_model.safetensors")

    r = run_cli("eval", "--model", str(s2), "--tasks", "zero-shot", "--datasets", "real_mini", "--only", "breastmnist",
                "--protocol", "authors", "--out", str(tmp_path / "eval"), "--num-bootstrap", "20", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "eval" / "s2-paper" / "breastmnist__zero-shot__authors.json").read_text())
    assert result["protocol"] == "authors" and result["details"]["averaging"] == "binary"
