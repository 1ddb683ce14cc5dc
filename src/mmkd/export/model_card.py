"""The model card (README.md) of an exported student: facts gathered from the checkpoint, then rendered.

`gather_facts` reads what a run leaves behind and returns plain JSON (also stored in
mmkd_export.json); `render_card` turns it into Markdown with a Hugging Face front matter.

Sources, all optional except the checkpoint's open_clip_config.json:
- `train_state.json`: "step"; "config" (the resolved run config: data, model, optim, train,
  distill sections); "distill" (for distilled students: "teachers" as a list of dicts or names, or
  a mapping name -> dict, each with spec, dims and "licence"/"license", optionally "data_licence";
  any other keys are distillation facts shown as they are).
- `RUN/summary.json`: samples seen, steps, final loss.
- evaluation records (`RUN/eval/**/*.json`, or files/folders given): each with a "metrics" mapping,
  optionally "ci", "dataset", "task", "modality" (the layout `mmkd eval` writes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmkd.export.folder import CONFIG_FILE, WEIGHTS_FILE, SourceCheckpoint, is_hf_text
from mmkd.export.licences import RANK_LABELS, licence_known, licence_rank, most_restrictive

MAX_EVAL_ROWS = 60
# Licence ids the Hugging Face Hub accepts in `license:` (the common ones); anything else is `other`.
HUB_LICENCE_ID = re.compile(r"^(mit|apache-2\.0|bsd(-[23]-clause)?|cc0-1\.0|cc-by(-nc)?(-sa|-nd)?-[234]\.0|"
                            r"[al]?gpl-[23]\.0|mpl-2\.0|unlicense|openrail(\+\+)?|bigscience-openrail-m|creativeml-openrail-m)$")


def _licence_of(entry: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        if entry.get(key):
            return str(entry[key])
    return None


def registry_licence(name: str) -> str | None:
    """The licence mmkd's teacher registry records for a known teacher name (case-insensitive), if any."""
    try:
        from mmkd.teachers.registry import KNOWN_TEACHERS
    except ImportError:
        return None
    for key, info in KNOWN_TEACHERS.items():
        if key.lower() == name.lower():
            return f"{info.licence} (from mmkd's teacher registry)"
    return None


def teachers_of(train_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The teachers recorded for a distilled student, as dicts with at least "name" and "licence"."""
    teachers = (train_state.get("distill") or {}).get("teachers") or []
    if isinstance(teachers, dict):
        teachers = [{"name": k, **(v if isinstance(v, dict) else {"spec": v})} for k, v in teachers.items()]
    out = []
    for t in teachers:
        t = {"name": t} if isinstance(t, str) else dict(t)
        t.setdefault("name", t.get("id") or t.get("spec") or "?")
        t["licence"] = _licence_of(t, "licence", "license", "weights_licence", "weights_license") \
            or registry_licence(str(t["name"]))
        t["data_licence"] = _licence_of(t, "data_licence", "data_license")
        out.append(t)
    return out


def read_eval_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Evaluation records (JSON files with a "metrics" mapping) from files or folders (searched recursively)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(p.rglob("*.json"))
        elif p.is_file():
            files.append(p)
    records = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            data.setdefault("dataset", f.stem.split("__")[0])
            data.setdefault("task", f.stem.split("__")[1] if "__" in f.stem else "")
            records.append(data)
    return records


def _num_params(weights: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            numel = 1
            for dim in f.get_slice(key).get_shape():
                numel *= dim
            total += numel
    return total


def _architecture(model_cfg: dict[str, Any], hf_config: dict[str, Any] | None) -> dict[str, Any]:
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if vision.get("timm_model_name"):
        image_tower = f"timm {vision['timm_model_name']}"
    elif isinstance(vision.get("layers"), (list, tuple)):
        image_tower = f"ModifiedResNet layers={vision['layers']} width={vision.get('width')}"
    else:
        image_tower = (f"ViT patch {vision.get('patch_size')}, width {vision.get('width')}, "
                       f"{vision.get('layers')} layers")
    if is_hf_text(model_cfg):
        hf = hf_config or {}
        text_tower = (f"Hugging Face {hf.get('model_type', '?')} (hidden {hf.get('hidden_size', '?')}, "
                      f"{hf.get('num_hidden_layers', '?')} layers, vocab {hf.get('vocab_size', '?')}), "
                      f"{text.get('hf_pooler_type', 'mean_pooler')}, {text.get('hf_proj_type', 'mlp')} projection")
    else:
        text_tower = (f"open_clip transformer width {text.get('width')}, {text.get('layers')} layers, "
                      f"{text.get('heads')} heads, vocab {text.get('vocab_size')}")
    return {
        "class": "CustomTextCLIP" if (is_hf_text(model_cfg) or model_cfg.get("custom_text")) else "CLIP",
        "embed_dim": model_cfg.get("embed_dim"),
        "image_tower": image_tower,
        "image_size": vision.get("image_size", 224),
        "text_tower": text_tower,
        "context_length": text.get("context_length", 77),
        "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
    }


def gather_facts(source: SourceCheckpoint, name: str, eval_paths: list[Path] | None = None,
                 hf_folder: Path | None = None, data_licence: str = "", model_licence: str = "") -> dict[str, Any]:
    """Everything the card states, as JSON-able data (see module doc for the sources)."""
    config = json.loads((source.checkpoint / CONFIG_FILE).read_text())
    model_cfg = config["model_cfg"]
    hf_config = None
    if hf_folder is not None and (hf_folder / "config.json").is_file():
        hf_config = json.loads((hf_folder / "config.json").read_text())
    state = source.train_state
    run_cfg = state.get("config") or {}
    summary = {}
    if source.run_dir is not None and (source.run_dir / "summary.json").is_file():
        summary = json.loads((source.run_dir / "summary.json").read_text())
    teachers = teachers_of(state)
    distill_extra = {k: v for k, v in (state.get("distill") or {}).items() if k != "teachers"}
    distilled = bool(teachers) or bool(state.get("distill"))
    data_cfg = run_cfg.get("data") or {}
    data_licence = data_licence or state.get("data_licence") or state.get("data_license") or ""
    licences: dict[str, str | None] = {}
    for t in teachers:
        licences[f"teacher {t['name']}"] = t["licence"]
        if t["data_licence"]:
            licences[f"teacher {t['name']} training data"] = t["data_licence"]
    if data_licence:
        licences["training data"] = data_licence
    # The card states only licences that are known; the others are listed as unknown, never as "None".
    unknown = [source for source, licence in licences.items() if not licence_known(licence)]
    rank, strictest = most_restrictive({s: lic for s, lic in licences.items() if s not in unknown})
    if eval_paths is None:
        eval_paths = [source.run_dir / "eval"] if source.run_dir is not None else []
    return {
        "name": name,
        "stage": "distill" if distilled else "pretrain",
        "architecture": {**_architecture(model_cfg, hf_config),
                         "num_params": _num_params(source.checkpoint / WEIGHTS_FILE)},
        "preprocess": config.get("preprocess_cfg", {}),
        "training": {
            "step": state.get("step"),
            "data": data_cfg.get("path"),
            "data_format": data_cfg.get("format"),
            "image_only_data": data_cfg.get("image_only_path") or None,
            "data_licence": data_licence or None,
            "init": ((state.get("inputs") or {}).get("init") or {}).get("path")
            or (run_cfg.get("model") or {}).get("init") or None,
            "optim": run_cfg.get("optim") or {},
            "train": {k: (run_cfg.get("train") or {}).get(k) for k in ("epochs", "max_steps", "batch_size", "seed",
                                                                           "precision")},
            "summary": {k: summary.get(k) for k in ("num_steps", "num_samples_seen", "completed", "final_loss")
                        if k in summary},
        },
        "teachers": teachers,
        "distill_config": (run_cfg.get("distill") or {}) if distilled else {},
        "distill_facts": distill_extra,
        "licences": licences,
        "most_restrictive": {"rank": rank, "meaning": RANK_LABELS.get(rank, ""), "sources": strictest,
                             "licences": sorted({str(licences[s]) for s in strictest})},
        "unknown_licences": unknown,
        "model_licence": model_licence or None,
        "evaluation": read_eval_records(eval_paths),
        "source_checkpoint": str(source.checkpoint),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None or value == "":
        return "—"
    if isinstance(value, (list, dict)):
        return "`" + json.dumps(value) + "`"
    return str(value)


def _front_matter(facts: dict[str, Any]) -> str:
    """Hugging Face metadata; `license` is a hub licence id when the stated licence is one, else `other`."""
    ms = facts["most_restrictive"]
    licence = facts["model_licence"] or "; ".join(ms["licences"])
    hub_id = re.sub(r"[\s_]+", "-", licence.strip().lower())
    lines = ["---", "library_name: open_clip"]
    if not licence:
        pass  # no known licence: no `license` key rather than a made-up one (the card's Licences section says so)
    elif HUB_LICENCE_ID.match(hub_id):
        lines.append(f"license: {hub_id}")
    else:
        lines += ["license: other", f"license_name: {json.dumps(licence)}"]
    stage_tag = "knowledge-distillation" if facts["stage"] == "distill" else "contrastive-pretraining"
    lines += ["pipeline_tag: zero-shot-image-classification", "tags:", "  - clip", "  - biomedical", "  - mmkd",
              f"  - {stage_tag}", "---", ""]
    return "\n".join(lines)


def _licence_section(facts: dict[str, Any]) -> list[str]:
    ms, lines = facts["most_restrictive"], ["## Licences", ""]
    unknown = facts.get("unknown_licences") or []
    if ms["rank"] < 0 and not unknown:
        lines += ["No teacher or data licence was recorded with this checkpoint. The weights' terms follow from the "
                  "student's initial weights and its training data: check them before use.", ""]
        return lines
    if ms["rank"] >= 0:
        lines += [f"> **Most restrictive licence: {', '.join(ms['licences'])}** ({ms['meaning']}), from "
                  f"{', '.join(ms['sources'])}. A model distilled from a teacher or trained on data is, "
                  f"conservatively, bound by the strictest of their terms; use these weights only as that licence "
                  f"allows.", ""]
    if unknown:
        them = "it" if len(unknown) == 1 else "them"
        lines += [f"> **Licence unknown for {', '.join(unknown)}.** No licence was recorded for {them}, so this "
                  f"card and its metadata name none for {them}. Unknown terms grant nothing: check them before "
                  f"using or sharing these weights.", ""]
    lines += ["| source | licence | restrictiveness |", "|---|---|---|"]
    for source, licence in facts["licences"].items():
        lines.append(f"| {source} | {licence or 'not stated'} | {RANK_LABELS[licence_rank(licence)]} |")
    return lines + [""]


def _eval_section(records: list[dict[str, Any]]) -> list[str]:
    lines = ["## Evaluation", ""]
    if not records:
        return lines + ["No evaluation results were found with this checkpoint (`mmkd eval` writes them).", ""]
    lines += ["| dataset | task | modality | metrics |", "|---|---|---|---|"]
    for rec in records[:MAX_EVAL_ROWS]:
        ci = rec.get("ci") or {}
        parts = []
        for key, value in rec["metrics"].items():
            text = f"{key} {_fmt(value)}"
            if key in ci and value is not None:
                text += f" [{_fmt(ci[key][0])}, {_fmt(ci[key][1])}]"
            parts.append(text)
        lines.append(f"| {rec.get('dataset', '')} | {rec.get('task', '')} | {rec.get('modality') or '—'} | "
                     f"{'; '.join(parts)} |")
    if len(records) > MAX_EVAL_ROWS:
        lines.append(f"\n({len(records) - MAX_EVAL_ROWS} more results in mmkd_export.json)")
    return lines + ["", "Brackets: 95 % bootstrap confidence intervals, where computed.", ""]


def render_card(facts: dict[str, Any]) -> str:
    """Markdown model card from `gather_facts` output."""
    arch, train, pp = facts["architecture"], facts["training"], facts["preprocess"]
    kind = "distilled from several CLIP teachers" if facts["stage"] == "distill" else "CLIP-pretrained (stage 1)"
    lines = [_front_matter(facts), f"# {facts['name']}", "",
             f"A biomedical CLIP student {kind} with [mmkd](https://arxiv.org/abs/2506.22567) "
             f"(MMKD-CLIP method), exported for open_clip.", ""]
    lines += _licence_section(facts)
    lines += ["## Use", "", "```python", "import open_clip, torch", "",
              'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH/TO/THIS/FOLDER")',
              'tokenizer = open_clip.get_tokenizer("local-dir:PATH/TO/THIS/FOLDER")',
              "with torch.no_grad():",
              "    image = model.encode_image(preprocess(pil_image)[None], normalize=True)",
              '    text = model.encode_text(tokenizer(["a chest x-ray", "a fundus photograph"]), normalize=True)',
              "    probs = (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)", "```", "",
              'or `mmkd predict --model PATH/TO/THIS/FOLDER --image x.png --labels "pneumonia;normal"`.', ""]
    if arch["class"] == "CustomTextCLIP" and "Hugging Face" in arch["text_tower"]:
        lines += ["The text tower is a Hugging Face model: `hf_model_name` in `open_clip_config.json` names where "
                  "its `config.json` is read from (this folder's absolute path when exported, or a hub id). "
                  "After moving the folder run `mmkd export --relink NEW/PATH` (or edit `hf_model_name`).", ""]
    lines += ["## Architecture", "", "| | |", "|---|---|",
              f"| model class | open_clip `{arch['class']}` |",
              f"| image tower | {arch['image_tower']}, {arch['image_size']} px input |",
              f"| text tower | {arch['text_tower']}, context {arch['context_length']} tokens |",
              f"| embedding dim | {arch['embed_dim']} |",
              f"| QuickGELU | {arch['quick_gelu']} |",
              f"| parameters | {arch['num_params']:,} |",
              f"| preprocessing | resize {pp.get('size')} ({pp.get('resize_mode', 'shortest')}, "
              f"{pp.get('interpolation', 'bicubic')}), mean {_fmt(pp.get('mean'))}, std {_fmt(pp.get('std'))} |", ""]
    lines += ["## Training data", "", "| | |", "|---|---|",
              f"| image-text pairs | {_fmt(train['data'])} ({_fmt(train['data_format'])}) |",
              f"| image-only data (stage 2) | {_fmt(train['image_only_data'])} |",
              f"| data licence | {train['data_licence'] or 'not recorded: check the terms of the data source'} |",
              f"| initial weights | {_fmt(train['init'])} |",
              f"| steps at this checkpoint | {_fmt(train['step'])} |"]
    for key, value in train["summary"].items():
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(value)} |")
    for key, value in train["train"].items():
        if value is not None:
            lines.append(f"| {key.replace('_', ' ')} | {_fmt(value)} |")
    optim = train["optim"]
    if optim:
        lines.append(f"| optimiser | AdamW lr {_fmt(optim.get('lr'))}, betas ({_fmt(optim.get('beta1'))}, "
                     f"{_fmt(optim.get('beta2'))}), weight decay {_fmt(optim.get('weight_decay'))}, warm-up "
                     f"{_fmt(optim.get('warmup_steps'))} steps, {_fmt(optim.get('schedule'))} schedule |")
    lines.append("")
    lines += _teacher_section(facts)
    lines += _eval_section(facts["evaluation"])
    lines += ["## Provenance", "", f"Exported by mmkd from `{facts['source_checkpoint']}`; checksums, library versions "
              "and the open_clip parity check are in `mmkd_export.json`.", ""]
    return "\n".join(lines)


def _teacher_section(facts: dict[str, Any]) -> list[str]:
    lines = ["## Teachers and distillation", ""]
    if facts["stage"] != "distill":
        return lines + ["Not distilled: this checkpoint comes from stage 1 (CLIP pretraining only).", ""]
    teachers = facts["teachers"]
    if teachers:
        lines += ["| teacher | spec | embedding dim | licence | training-data licence |", "|---|---|---|---|---|"]
        for t in teachers:
            dim = t.get("embed_dim") or t.get("dim")
            lines.append(f"| {t['name']} | {_fmt(t.get('spec'))} | {_fmt(dim)} | {t['licence'] or 'not stated'} | "
                         f"{t['data_licence'] or '—'} |")
        lines.append("")
    else:
        lines += ["The checkpoint records a distillation but no teacher list.", ""]
    settings = {**facts["distill_config"], **facts["distill_facts"]}
    if settings:
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in settings.items() if v not in ("", [], {}, None)]
        lines.append("")
    return lines
