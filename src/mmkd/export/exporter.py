"""`export(checkpoint, out)`: the library function behind `mmkd export` (see mmkd.export.folder for the layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def export(checkpoint: str | Path, out: str | Path, *, name: str = "", overwrite: bool = False,
           hf_text_path: str = "", hf_model_name: str = "", eval_paths: list[str] | None = None,
           data_licence: str = "", licence: str = "", onnx: bool = False, verify: bool = True) -> dict[str, Any]:
    """Export `checkpoint` (run dir or checkpoint folder) to `out`; returns the manifest written there.

    With `verify`, the folder is loaded back with open_clip and its embeddings compared with mmkd's
    own load of the checkpoint; a mismatch removes the folder and raises RuntimeError. Given the folder
    of a run still training, whose pruning removes the checkpoint while it is exported, the export
    starts again from the run's newest checkpoint (`mmkd.utils.runs.read_newest_checkpoint`).
    """
    from mmkd.errors import UsageError
    from mmkd.export import folder as fold

    out = Path(out).resolve()
    fold.check_out(out, overwrite)  # usage errors first, before the heavy imports
    fold.resolve_checkpoint(checkpoint)
    for path in eval_paths or []:
        if not Path(path).exists():
            raise UsageError(f"--eval: {str(path)!r} does not exist; give `mmkd eval` result files or their folder")
    if onnx:
        from mmkd.export.onnx import require_onnx

        require_onnx()
    from mmkd.utils.runs import read_newest_checkpoint

    def export_from(ckpt: Path) -> dict[str, Any]:
        return _export_from(fold.resolve_checkpoint(ckpt), out, name=name, overwrite=overwrite,
                            hf_text_path=hf_text_path, hf_model_name=hf_model_name, eval_paths=eval_paths,
                            data_licence=data_licence, licence=licence, onnx=onnx, verify=verify)

    # a run still training can remove the checkpoint being exported: then the export starts again from its newest
    return read_newest_checkpoint(checkpoint, export_from, option="--checkpoint")


def _export_from(source, out: Path, *, name: str, overwrite: bool, hf_text_path: str, hf_model_name: str,
                 eval_paths: list[str] | None, data_licence: str, licence: str, onnx: bool,
                 verify: bool) -> dict[str, Any]:
    """`export` of one resolved checkpoint. A folder that fails its parity check, or whose check stops (the
    checkpoint removed, an interrupt), is removed: nothing unverified is left as if it were an export."""
    import shutil

    import open_clip
    import torch

    from mmkd import __version__
    from mmkd.export import folder as fold
    from mmkd.export.model_card import gather_facts, render_card
    from mmkd.utils.io import sha256_file

    config = json.loads((source.checkpoint / fold.CONFIG_FILE).read_text())
    hf_folder = fold.find_hf_folder(source, config["model_cfg"], hf_text_path) if fold.is_hf_text(
        config["model_cfg"]) else None
    facts = gather_facts(source, name or out.name, [Path(p) for p in eval_paths] if eval_paths else None,
                         hf_folder, data_licence, licence)
    manifest = {
        "format": "open_clip local-dir",
        "source_checkpoint": str(source.checkpoint.resolve()),
        "weights_sha256": sha256_file(source.checkpoint / fold.WEIGHTS_FILE),
        "mmkd_version": __version__,
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
        "card": facts,
    }
    out = fold.write_export(source, out, str(hf_folder or ""), hf_model_name, overwrite, render_card(facts), manifest)
    if verify:
        try:
            parity = _verify(source, hf_folder, out)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        fold.update_manifest(out, parity=parity)
        if not parity["passed"]:
            shutil.rmtree(out, ignore_errors=True)
            raise RuntimeError(f"export parity check failed (open_clip vs mmkd): {parity}")
    if onnx:
        from mmkd.export.onnx import export_onnx

        fold.update_manifest(out, onnx=export_onnx(out))
    return json.loads((out / fold.MANIFEST_FILE).read_text())


def _verify(source, hf_folder: Path | None, out: Path) -> dict[str, Any]:
    from mmkd.export.parity import check_parity
    from mmkd.models.adapter import OpenClipEncoder
    from mmkd.models.student import create_student

    student = create_student(str(source.checkpoint), hf_text_path=str(hf_folder or ""))
    reference = OpenClipEncoder(student.model, student.eval_transform, student.tokenizer, name="source")
    return check_parity(reference, out)
