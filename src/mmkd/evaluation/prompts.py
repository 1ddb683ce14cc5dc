"""Prompt templates and class text embeddings for zero-shot classification.

Legend: C classes, T templates, D embedding dim.

A class embedding is the mean of the L2-normalised embeddings of its T prompts
(`template.format(classname)`), renormalised to unit length — the usual CLIP prompt ensemble.
Templates are data: `prompts/*.txt` (one template per line, `#` comments) or `.yaml` lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mmkd.errors import UsageError

if TYPE_CHECKING:
    import torch

PROMPTS_DIR = Path(__file__).with_suffix("")  # the `prompts/` data folder beside this module


def read_templates(path: str | Path) -> list[str]:
    """Templates from a .txt (one per line, `#` comments, blanks ignored) or .yaml/.json list file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"templates: file {str(path)!r} does not exist; give an inline list or a .txt/.yaml file")
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("templates")
        templates = [str(t) for t in (data or [])]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        templates = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return check_templates(templates, where=str(path))


def check_templates(templates: list[str], where: str = "templates") -> list[str]:
    if not templates:
        raise UsageError(f"{where}: no prompt templates; give at least one, e.g. 'a photo of {{}}.'")
    bad = [t for t in templates if "{}" not in t and "{classname}" not in t]
    if bad:
        raise UsageError(f"{where}: template {bad[0]!r} has no '{{}}' placeholder for the class name")
    return list(templates)


def fill(template: str, classname: str) -> str:
    return template.replace("{classname}", "{}").format(classname)


DEFAULT_TEMPLATES: list[str] = read_templates(PROMPTS_DIR / "default.txt")


def class_prompts(classnames: list[str], templates: list[str]) -> list[list[str]]:
    """[C][T] prompt strings."""
    return [[fill(t, c) for t in templates] for c in classnames]


def class_embeddings(model, classnames: list[str], templates: list[str] | None = None,
                     batch_size: int = 64) -> torch.Tensor:
    """Class text embeddings [C, D], float32, unit norm: mean of normalised prompt embeddings.

    `model` is a ClipEncoder (its encode_text returns normalised [B, D]). Prompts of all classes
    are encoded in batches of `batch_size`.
    """
    import torch
    import torch.nn.functional as F

    templates = check_templates(list(templates or DEFAULT_TEMPLATES))
    if not classnames:
        raise UsageError("classnames: empty; a zero-shot task needs at least two class names")
    flat = [p for per_class in class_prompts(classnames, templates) for p in per_class]
    with torch.no_grad():
        chunks = [model.encode_text(flat[i:i + batch_size]).float().cpu() for i in range(0, len(flat), batch_size)]
    prompts_CTD = F.normalize(torch.cat(chunks), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(prompts_CTD.mean(dim=1), dim=-1)
