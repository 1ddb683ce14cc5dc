"""`mmkd export --onnx`: both towers as ONNX, equal to PyTorch under onnxruntime (the `onnx` extra, part of `test`)."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from test_export import build_tiny_bert, make_run

TOL = 1e-5


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_towers_against_open_clip(folder, texts):
    """Independent of the exporter's own check: fresh inputs, batch size 5 (traced with 2)."""
    from mmkd.export.parity import load_open_clip_folder, probe_image

    model, preprocess, tokenizer = load_open_clip_folder(folder)
    onnx.checker.check_model(str(folder / "onnx" / "image_encoder.onnx"))
    pixels = torch.stack([preprocess(probe_image(40 + 8 * i)) for i in range(5)])
    tokens = tokenizer(texts).long()
    with torch.no_grad():
        image_ref = model.encode_image(pixels, normalize=True)
        text_ref = model.encode_text(tokens, normalize=True)
    image_onnx = torch.from_numpy(_session(folder / "onnx" / "image_encoder.onnx").run(None, {"pixels": pixels.numpy()})[0])
    text_onnx = torch.from_numpy(_session(folder / "onnx" / "text_encoder.onnx").run(None, {"tokens": tokens.numpy()})[0])
    assert image_onnx.shape == (5, image_ref.shape[1]) and text_onnx.shape == (len(texts), text_ref.shape[1])
    assert float((image_onnx - image_ref).abs().max()) <= TOL
    assert float((text_onnx - text_ref).abs().max()) <= TOL
    # different texts give different embeddings (the tokenizer and mask really reach the graph)
    assert float((text_onnx[0] - text_onnx[1]).abs().max()) > 1e-3


TEXTS = ["a red square", "chest x-ray showing pneumonia", "normal", "a photo of a green disc", "fundus"]


def test_onnx_export_of_a_vit_student_matches_pytorch(tmp_path):
    from mmkd.export.exporter import export

    out = tmp_path / "export"
    manifest = export(make_run(tmp_path), out, onnx=True, verify=False)
    info = manifest["onnx"]
    assert info["parity"]["passed"] and info["parity"]["text_max_abs_diff"] <= TOL
    assert info["text_encoder"]["shape"] == ["batch", 32] and info["image_encoder"]["shape"] == ["batch", 3, 32, 32]
    assert json.loads((out / "onnx" / "onnx_export.json").read_text())["logit_scale"] == pytest.approx(
        info["logit_scale"])
    _check_towers_against_open_clip(out, TEXTS)


def test_onnx_export_of_an_hf_bert_student_matches_pytorch(tmp_path):
    from mmkd.export.exporter import export

    bert = build_tiny_bert(tmp_path / "tiny-bert")
    out = tmp_path / "export-hf"
    manifest = export(make_run(tmp_path, "mmkd-tiny-vit-hf", hf_text_path=bert), out, onnx=True, verify=False)
    assert manifest["onnx"]["parity"]["passed"]
    _check_towers_against_open_clip(out, TEXTS)


@pytest.mark.slow  # the same export as above, through a subprocess
def test_cli_export_onnx(tmp_path):
    from conftest import run_cli

    out = tmp_path / "cli"
    done = run_cli("export", "--checkpoint", str(make_run(tmp_path)), "--out", str(out), "--onnx", "--no-verify")
    assert done.returncode == 0, done.stderr
    assert "onnx parity" in done.stdout
    assert (out / "onnx" / "image_encoder.onnx").stat().st_size > 10_000
    assert (out / "onnx" / "text_encoder.onnx").stat().st_size > 10_000
