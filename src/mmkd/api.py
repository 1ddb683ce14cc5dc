"""`mmkd.load_model(spec)`: one front door for every model mmkd can encode with.

SPEC is an mmkd checkpoint or run directory, or anything `mmkd.load_teacher` accepts
(open_clip `local-dir:`/`hf-hub:`/name+weights, transformers `hf:` folders, ...).
Returns a `ClipEncoder` (see mmkd.models.adapter).
"""

from __future__ import annotations

from pathlib import Path

from mmkd.models.adapter import ClipEncoder, OpenClipEncoder


def is_mmkd_checkpoint(path: Path) -> bool:
    from mmkd.models.student import CHECKPOINT_CONFIG

    if (path / CHECKPOINT_CONFIG).is_file():
        return True
    if (path / "checkpoints").is_dir():
        from mmkd.utils.runs import latest_checkpoint

        return latest_checkpoint(path) is not None
    return False


def load_model(spec: str, device: str = "cpu", name: str | None = None) -> ClipEncoder:
    path = Path(spec)
    if path.is_dir() and is_mmkd_checkpoint(path):
        from mmkd.models.student import create_student
        from mmkd.utils.runs import read_newest_checkpoint

        # never a silent random init (require_weights); a run still training may prune the checkpoint mid-read
        student = read_newest_checkpoint(path, lambda ckpt: create_student(str(ckpt)), "--model")
        return OpenClipEncoder(student.model, student.eval_transform, student.tokenizer,
                               name=name or path.name, provenance={"spec": spec, **student.source}, device=device)
    from mmkd.teachers import load_teacher

    return load_teacher(spec, device=device, name=name)
