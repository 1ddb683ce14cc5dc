"""ONNX export of both towers of an exported folder, checked against PyTorch with onnxruntime.

Legend: B batch, L context length (tokens), D embedding dim.

    OUT/onnx/image_encoder.onnx   pixels float32 [B, 3, H, W] (already preprocessed) -> embedding [B, D]
    OUT/onnx/text_encoder.onnx    tokens int64 [B, L] (the folder's tokenizer output) -> embedding [B, D]
    OUT/onnx/onnx_export.json     inputs, preprocessing, context length, logit scale, the parity check

Embeddings are L2-normalised; B is dynamic, L is the model's context length (the tokenizer pads to it).
Needs the `onnx` extra (`pip install 'mmkd[onnx]'`: onnx + onnxruntime).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmkd.errors import UsageError

DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-5


class ImageTower(torch.nn.Module):
    """pixels [B, 3, H, W] -> normalised image embedding [B, D]."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(pixels), dim=-1)


class TextTower(torch.nn.Module):
    """tokens [B, L] -> normalised text embedding [B, D]."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)


def require_onnx() -> None:
    import importlib

    try:
        for module in ("onnx", "onnxruntime"):
            importlib.import_module(module)
    except ImportError as e:
        raise UsageError(f"--onnx: the ONNX export needs the `onnx` extra ({e.name} is not installed); "
                         f"run `pip install 'mmkd[onnx]'` or leave out --onnx") from None


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int) -> None:
    module = module.eval()  # the exporter restores the wrapper's mode afterwards; a new wrapper is in train mode
    kwargs = dict(input_names=[input_name], output_names=["embedding"], opset_version=opset,
                  dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}})
    # Grad mode on: under no_grad nn.MultiheadAttention takes a fused fast path with no ONNX symbolic.
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter needs no extra packages; newer torch may only have the dynamo one
            torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
        except TypeError:
            torch.onnx.export(module, (example,), str(path), **kwargs)


def _run(path: Path, input_name: str, value: torch.Tensor):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {input_name: value.numpy()})[0])


def export_onnx(folder: str | Path, opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Write `folder/onnx/` from the open_clip model in `folder` and check parity; returns the info dict.

    Parity uses a batch size different from the traced one, so the dynamic batch axis is checked too.
    Raises RuntimeError when onnxruntime's embeddings differ from PyTorch's by more than `tolerance`.
    """
    require_onnx()
    from mmkd.export.parity import PROBE_TEXTS, load_open_clip_folder

    folder = Path(folder)
    model, preprocess, tokenizer = load_open_clip_folder(folder)
    out = folder / "onnx"
    out.mkdir(exist_ok=True)
    size = model.visual.image_size
    height, width = size if isinstance(size, (tuple, list)) else (size, size)
    generator = torch.Generator().manual_seed(0)
    pixels_B3HW = torch.randn(3, 3, height, width, generator=generator)
    tokens_BL = tokenizer(list(PROBE_TEXTS)[:3]).long()

    image_path, text_path = out / "image_encoder.onnx", out / "text_encoder.onnx"
    _export(ImageTower(model), pixels_B3HW[:2], image_path, "pixels", opset)
    _export(TextTower(model), tokens_BL[:2], text_path, "tokens", opset)
    with torch.no_grad():
        image_ref_BD, text_ref_BD = ImageTower(model).eval()(pixels_B3HW), TextTower(model).eval()(tokens_BL)
    image_diff = float((_run(image_path, "pixels", pixels_B3HW) - image_ref_BD).abs().max())
    text_diff = float((_run(text_path, "tokens", tokens_BL) - text_ref_BD).abs().max())
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    info: dict[str, Any] = {
        "image_encoder": {"file": image_path.name, "input": "pixels", "shape": ["batch", 3, height, width],
                          "dtype": "float32"},
        "text_encoder": {"file": text_path.name, "input": "tokens", "shape": ["batch", int(tokens_BL.shape[1])],
                         "dtype": "int64"},
        "output": "embedding [batch, D], L2-normalised",
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in pp.items()},
        "logit_scale": float(model.logit_scale.detach().exp()),
        "opset": opset,
        "parity": {"image_max_abs_diff": image_diff, "text_max_abs_diff": text_diff, "tolerance": tolerance,
                   "passed": image_diff <= tolerance and text_diff <= tolerance},
    }
    (out / "onnx_export.json").write_text(json.dumps(info, indent=2) + "\n")
    if not info["parity"]["passed"]:
        raise RuntimeError(f"ONNX parity check failed: image {image_diff:.2e}, text {text_diff:.2e} > {tolerance:.0e}")
    return info
