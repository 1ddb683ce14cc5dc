"""Prompt templates, per-class prompt sentences and class text embeddings for zero-shot classification.

Legend: C classes, T templates, D embedding dim.

A class embedding is the mean of the L2-normalised embeddings of the class's prompts,
renormalised to unit length — the usual CLIP prompt ensemble. A class's prompts are either its
name filled into every template, or its own list of full sentences (the MMKD-CLIP authors' and
CuPL's form: `prompts: {class: [sentence, ...]}`), used verbatim.

Templates hold one slot for the class name: `{}` (Python/mmkd), `{c}` (CLIP_benchmark) or
`{classname}`; `{{`/`}}` are literal braces. Any other slot, two different slots, or unbalanced
braces is a UsageError naming the template. Templates are data: `prompts/*.txt` (one template
per line, `#` comments), `.yaml` lists, or CLIP_benchmark's JSON files (see `read_keyed_json`).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmkd.errors import UsageError

if TYPE_CHECKING:
    import torch

PROMPTS_DIR = Path(__file__).with_suffix("")  # the `prompts/` data folder beside this module
CLASS_SLOTS = ("", "0", "c", "classname")  # `{}`, `{0}`, `{c}`, `{classname}` all mean the class name


def template_slot(template: str, where: str = "templates") -> str:
    """The one slot name of a template ("" for `{}`); UsageError for none, unknown or mixed slots."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # unbalanced braces, e.g. "a {c photo"
        raise UsageError(f"{where}: template {template!r} is malformed ({e}); write the class slot as {{c}} or {{}} "
                         f"and literal braces as {{{{ and }}}}") from None
    slots = sorted({f.split(".")[0].split("[")[0] for f in fields})
    unknown = [s for s in slots if s not in CLASS_SLOTS]
    if unknown:
        raise UsageError(f"{where}: template {template!r} has the slot {{{unknown[0]}}}, which is not a class-name "
                         f"slot; use {{c}} (CLIP_benchmark), {{classname}} or {{}}")
    if not slots:
        raise UsageError(f"{where}: template {template!r} has no class-name slot; add {{c}} or {{}}, e.g. "
                         f"'a photo of {{c}}.'")
    if len(slots) > 1:
        shown = " and ".join("{" + s + "}" for s in slots)
        raise UsageError(f"{where}: template {template!r} has two different slots ({shown}); use one of them")
    if fields.count("") > 1:  # "{} and {}" asks for two positional values; a template has one class name
        raise UsageError(f"{where}: template {template!r} has {fields.count('')} {{}} slots but names one class; "
                         f"write {{c}} wherever the class name goes (it may repeat)")
    return slots[0]


def check_templates(templates: list[str], where: str = "templates") -> list[str]:
    """The templates, each checked to hold exactly one class-name slot."""
    if not templates:
        raise UsageError(f"{where}: no prompt templates; give at least one, e.g. 'a photo of {{c}}.'")
    for t in templates:
        if not isinstance(t, str):
            raise UsageError(f"{where}: template {t!r} is not a string")
        template_slot(t, where)
    return list(templates)


def fill(template: str, classname: str) -> str:
    """The template with its class-name slot filled (any of the spellings in CLASS_SLOTS)."""
    return template.format(classname, c=classname, classname=classname)


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


def read_keyed_json(path: Path, key: str | None, candidates: list[str], where: str) -> Any:
    """One dataset's entry of a CLIP_benchmark-style JSON file `{dataset: value}`.

    `key` (from `file.json#key`) picks the entry; without it the first of `candidates` (the
    catalog's dataset name, `wds/<name>`) present is taken, or the only entry of a one-entry file.
    A plain JSON list is returned as it is (no dataset key needed).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{where}: {path} is not valid UTF-8 JSON ({e})") from None
    if isinstance(data, list) and key is None:
        return data
    if not isinstance(data, dict):
        raise UsageError(f"{where}: {path} holds a {type(data).__name__}; expected a list or a mapping "
                         f"dataset -> entries (CLIP_benchmark's classnames/templates files)")
    for name in ([key] if key else candidates):
        if name in data:
            return data[name]
    if key is None and len(data) == 1:
        return next(iter(data.values()))
    shown = ", ".join(sorted(data)[:12]) + (" ..." if len(data) > 12 else "")
    asked = repr(key) if key else " / ".join(repr(c) for c in candidates)
    raise UsageError(f"{where}: {path} has no entry {asked}; it has {shown}. Name the entry with "
                     f"`{path.name}#<dataset>`")


def check_prompt_sentences(prompts: Any, where: str = "prompts") -> dict[str, list[str]]:
    """A `{class: [sentence, ...]}` mapping, checked: every class has at least one non-empty sentence."""
    if not isinstance(prompts, dict) or not prompts:
        raise UsageError(f"{where}: expected a mapping class -> list of prompt sentences, got {type(prompts).__name__}")
    out, problems = {}, []
    for cls, sentences in prompts.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) and s.strip()
                                                                        for s in sentences):
            problems.append(f"class {cls!r} needs a non-empty list of sentences")
            continue
        out[str(cls)] = [s.strip() for s in sentences]
    if problems:
        raise UsageError(f"{where}: " + "; ".join(problems))
    return out


def prompts_for_classes(sentences: dict[str, list[str]], classnames: list[str], keys: list[str] | None,
                        where: str = "prompts") -> list[list[str]]:
    """[C][*] sentences in class order; a class is found by its display name or its label key."""
    out, missing = [], []
    for i, name in enumerate(classnames):
        key = keys[i] if keys else None
        found = sentences.get(name, sentences.get(key) if key is not None else None)
        if found is None:
            missing.append(name if key in (None, name) else f"{name} ({key})")
        out.append(found or [])
    known = set(classnames) | set(keys or [])
    extra = [k for k in sentences if k not in known]
    if missing or extra:
        parts = ([f"no sentences for {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"{', '.join(map(repr, extra))} is not a class of the data"] if extra else [])
        raise UsageError(f"{where}: {'; '.join(parts)}; the classes are {', '.join(map(repr, classnames))}")
    return out


DEFAULT_TEMPLATES: list[str] = read_templates(PROMPTS_DIR / "default.txt")


def class_prompts(classnames: list[str], templates: list[str]) -> list[list[str]]:
    """[C][T] prompt strings."""
    return [[fill(t, c) for t in templates] for c in classnames]


def prompt_embeddings(model, prompts: list[list[str]], batch_size: int = 64) -> torch.Tensor:
    """Class embeddings [C, D], float32, unit norm, from each class's own prompt list (any lengths):
    the mean of the normalised prompt embeddings, renormalised."""
    import torch
    import torch.nn.functional as F

    if not prompts or any(not p for p in prompts):
        raise UsageError("prompts: every class needs at least one prompt")
    flat = [p for per_class in prompts for p in per_class]
    with torch.no_grad():
        chunks = [model.encode_text(flat[i:i + batch_size]).float().cpu() for i in range(0, len(flat), batch_size)]
    feats_PD = F.normalize(torch.cat(chunks), dim=-1)
    bounds = torch.tensor([0] + [len(p) for p in prompts]).cumsum(0).tolist()
    means_CD = torch.stack([feats_PD[a:b].mean(dim=0) for a, b in zip(bounds[:-1], bounds[1:])])
    return F.normalize(means_CD, dim=-1)


def class_embeddings(model, classnames: list[str], templates: list[str] | None = None,
                     batch_size: int = 64) -> torch.Tensor:
    """Class text embeddings [C, D], float32, unit norm: mean of normalised prompt embeddings.

    `model` is a ClipEncoder (its encode_text returns normalised [B, D]). Prompts of all classes
    are encoded in batches of `batch_size`.
    """
    templates = check_templates(list(templates or DEFAULT_TEMPLATES))
    if not classnames:
        raise UsageError("classnames: empty; a zero-shot task needs at least two class names")
    return prompt_embeddings(model, class_prompts(classnames, templates), batch_size)
