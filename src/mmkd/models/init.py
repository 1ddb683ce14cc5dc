"""Starting the student's towers from pretrained weights, non-strictly, with a report of what landed.

The paper's student starts its image tower from a MetaCLIP ViT-B/16 checkpoint (a whole CLIP: only
`visual.*` and `logit_scale` fit) and its text tower from pretrained BiomedBERT. Both loads are
partial by nature, so each one is reported per tower — tensors loaded, missing (left at their
initialisation), unexpected (in the file, not in the tower) and mismatched (same name, other shape)
— and an init that fills less than half of a tower's tensors is refused: a misspelt or foreign
file must never leave a silently random tower.

Image init specs (`--model.image_init SPEC`):
- a `.pt`/`.pth`/`.bin` (torch.load weights_only=True) or `.safetensors` file, a folder with an
  open_clip weights file, or `local-dir:PATH`;
- `hf-hub:ORG/NAME`: an open_clip repo in the local Hugging Face cache;
- `ARCH:TAG`: an open_clip pretrained tag (`ViT-B-16:metaclip_400m`), from open_clip's cache
  (downloaded only where the network allows).
Containers (`state_dict`, `model`) and `module.` prefixes are unwrapped (`weights.read_state_dict`).

Text init: the HF folder given as `--model.hf_text_path` (`model.safetensors`, `pytorch_model.bin`,
or their sharded `*.index.json` forms). A task-head checkpoint (BertForMaskedLM: `bert.*` plus
`cls.*`) loads into the base model as transformers does: the `bert.` prefix is stripped and the
head's tensors are unexpected. The projection head (`text.proj.*`) always starts fresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkd.errors import UsageError
from mmkd.models.weights import OPEN_CLIP_WEIGHT_NAMES, read_state_dict, unwrap_state_dict

HF_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
MIN_FRACTION = 0.5  # an init that fills less of a tower is refused
# Names only a whole CLIP's text side has: a file holding them is never a bare image tower.
_CLIP_TEXT_KEYS = ("token_embedding.", "text_projection", "ln_final.", "text.")


@dataclass
class TowerReport:
    """What a pretrained init put into one tower (names in the student's state-dict naming)."""

    tower: str                # image | text
    source: str               # the spec or folder given
    file: str = ""            # the weights file read
    sha256: str = ""
    num_tensors: int = 0      # the tower's tensors (buffers like position_ids excluded)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # tower tensors the file lacks: left as initialised
    unexpected: list[str] = field(default_factory=list)   # tensors of this tower in the file that the tower lacks
    mismatched: list[str] = field(default_factory=list)   # "name (file shape) vs (tower shape)"
    other_towers: int = 0     # tensors of other parts of the file (e.g. a CLIP text tower), ignored
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return len(self.loaded) / max(1, self.num_tensors)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_loaded"] = len(self.loaded)
        del d["loaded"]  # the tower's own names minus missing/mismatched; the count says enough
        return d


def _weights_only(key: str) -> bool:
    return not key.endswith("position_ids")  # buffers whose presence differs between library versions


def _match(report: TowerReport, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill the report's lists; returns the tensors to load (names of `own`)."""
    report.num_tensors = len(own)
    take = {}
    for k, v in own.items():
        if k not in state:
            report.missing.append(k)
        elif state[k].shape != v.shape:
            report.mismatched.append(f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}")
        else:
            take[k] = state[k]
            report.loaded.append(k)
    report.unexpected = [k for k in state if k not in own]
    return take


def _refuse_if_poor(report: TowerReport, option: str, fix: str) -> None:
    if report.fraction >= MIN_FRACTION:
        return
    reasons = []
    if report.mismatched:
        reasons.append(f"{len(report.mismatched)} have another shape ({'; '.join(report.mismatched[:3])})")
    if report.missing:
        reasons.append(f"{len(report.missing)} are not in the file (e.g. {', '.join(report.missing[:3])})")
    if report.unexpected:
        reasons.append(f"the file has {len(report.unexpected)} {report.tower}-tower tensors the student lacks "
                       f"(e.g. {', '.join(report.unexpected[:3])})")
    if report.other_towers:
        reasons.append(f"{report.other_towers} tensors of the file belong to other towers")
    raise UsageError(f"{option}: {report.source} fills only {len(report.loaded)} of the {report.tower} tower's "
                     f"{report.num_tensors} tensors (less than half), refused rather than training a mostly random "
                     f"tower: of the tower's tensors " + "; ".join(reasons) + f". {fix}")


# ----------------------------------------------------------------------------------------------- image

def resolve_image_init(spec: str) -> Path:
    """The weights file an image-init spec names (see the module doc)."""
    from mmkd.models.weights import find_weights

    spec = spec.strip()
    if spec.startswith("hf-hub:"):
        from mmkd.utils.hub import resolve_hub_repo

        folder = resolve_hub_repo(spec[len("hf-hub:"):], option="--model.image_init")
        return _open_clip_weights_in(folder, spec)
    if spec.startswith("local-dir:"):
        return _open_clip_weights_in(Path(spec[len("local-dir:"):]).expanduser(), spec)
    path = Path(spec).expanduser()
    if path.exists():
        return find_weights(path, "--model.image_init") if path.is_dir() else path
    if ":" in spec:
        return _open_clip_pretrained(spec)
    raise UsageError(f"--model.image_init: {spec!r} is neither a file, a folder, hf-hub:ORG/NAME, local-dir:PATH "
                     f"nor an open_clip ARCH:TAG (e.g. ViT-B-16:metaclip_400m)")


def _open_clip_weights_in(folder: Path, spec: str) -> Path:
    for name in OPEN_CLIP_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if len(found) == 1:
        return folder / found[0]
    raise UsageError(f"--model.image_init: {spec!r}: {folder} holds no open_clip weights file "
                     f"({' or '.join(OPEN_CLIP_WEIGHT_NAMES)})" + (f"; it holds {found}: name one" if found else ""))


def _open_clip_pretrained(spec: str) -> Path:
    import open_clip
    from open_clip.pretrained import download_pretrained

    arch, _, tag = spec.partition(":")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UsageError(f"--model.image_init: {spec!r}: open_clip knows no pretrained tag {tag!r} for {arch!r}"
                         + (f" (its tags: {', '.join(tags)})" if tags else " (no such architecture)"))
    try:
        return Path(download_pretrained(cfg))
    except Exception as e:  # offline and not cached, or the download failed
        raise UsageError(f"--model.image_init: {spec!r} is not in open_clip's cache and could not be downloaded "
                         f"({type(e).__name__}); download it where the network allows "
                         f"({cfg.get('hf_hub') or cfg.get('url')}) and pass the file") from None


def init_image_tower(model: torch.nn.Module, spec: str, logit_scale: bool = True) -> TowerReport:
    """Load the `visual.*` tensors (and `logit_scale` when asked) of `spec` into `model`; refuse below half."""
    from mmkd.utils.io import sha256_file

    file = resolve_image_init(spec)
    state = {k: v for k, v in read_state_dict(file).items() if _weights_only(k)}
    report = TowerReport("image", spec, str(file), sha256_file(file))
    own = {k: v for k, v in model.state_dict().items() if k.startswith("visual.") and _weights_only(k)}
    text_keys = sorted(k for k in state if k.startswith(_CLIP_TEXT_KEYS))
    if not any(k.startswith("visual.") for k in state) and text_keys:
        # a whole CLIP without its image tower: its text transformer has the image transformer's names
        raise UsageError(f"--model.image_init: {spec!r} ({file}) holds no visual.* tensors: it is a CLIP whose image "
                         f"tower is missing ({len(state)} tensors, e.g. {', '.join(text_keys[:3])}); give a "
                         f"checkpoint that has the image tower")
    if not any(k.startswith("visual.") for k in state) and any(k in state for k in (k[7:] for k in own)):
        state = {f"visual.{k}": v for k, v in state.items()}  # a bare image-tower state dict
        report.notes.append("the file is a bare image tower; its keys were read as visual.*")
    tower_state = {k: v for k, v in state.items() if k.startswith("visual.")}
    take = _match(report, own, tower_state)
    report.other_towers = len(state) - len(tower_state)
    _refuse_if_poor(report, "--model.image_init",
                    "Give an open_clip checkpoint of the student's image architecture (e.g. ViT-B-16:metaclip_400m "
                    "or MetaCLIP's b16_400m.pt for mmkd-b16)")
    if logit_scale and "logit_scale" in state and state["logit_scale"].numel() == model.logit_scale.numel():
        take["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        report.notes.append(f"logit_scale from the file: {float(take['logit_scale'].exp()):.2f} (exp)")
        report.other_towers -= 1
    model.load_state_dict(take, strict=False)
    return report


# ------------------------------------------------------------------------------------------------ text

def hf_weight_files(folder: str | Path) -> list[Path]:
    """The weights files of a Hugging Face model folder (sharded checkpoints through their index)."""
    folder = Path(folder)
    for name in HF_WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            return [folder / s for s in shards]
    return []


def init_text_tower(model: torch.nn.Module, folder: str | Path) -> TowerReport | None:
    """Load an HF folder's weights into the student's HF text tower; None when the folder holds none."""
    from mmkd.utils.io import sha256_file

    files = hf_weight_files(folder)
    text = getattr(model, "text", None)
    transformer = getattr(text, "transformer", None)
    if not files or text is None or transformer is None or not hasattr(transformer, "base_model_prefix"):
        return None
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_state_dict(f) if f.suffix != ".bin" else _read_bin(f))
    report = TowerReport("text", str(folder), ",".join(str(f) for f in files),
                         sha256_file(files[0]) if len(files) == 1 else "")
    state, head = _as_base_model(state, transformer, report)
    own = {f"text.{k}": v for k, v in text.state_dict().items() if _weights_only(k)}
    take = _match(report, own, {f"text.transformer.{k}": v for k, v in state.items() if _weights_only(k)})
    report.unexpected += head
    _refuse_if_poor(report, "--model.hf_text_path",
                    "Give the folder of the text model the student's config names (its config.json and weights), "
                    "or --model.text_pretrained false to start the text tower from random weights")
    model.load_state_dict(take, strict=False)
    return report


def _read_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"--model.hf_text_path: {file}: refused to load, not a plain tensor checkpoint "
                         f"({type(e).__name__}); mmkd opens .bin files with weights_only=True only") from None
    return unwrap_state_dict(obj, str(file))


def _as_base_model(state: dict[str, torch.Tensor], transformer,
                   report: TowerReport) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Names of a task-head checkpoint (BertForMaskedLM: `bert.*`, `cls.*`) as the base model's, as
    transformers' from_pretrained does, plus the head's tensor names (unused); legacy LayerNorm
    `gamma`/`beta` become `weight`/`bias`."""
    prefix = f"{transformer.base_model_prefix}."
    head: list[str] = []
    if any(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in transformer.state_dict()):
        head = [k for k in state if not k.startswith(prefix)]
        report.notes.append(f"a task-head checkpoint: stripped the {prefix!r} prefix"
                            + (f"; {len(head)} head tensors ({head[0].split('.')[0]}.*) are unused" if head else ""))
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    renamed = {}
    for k, v in state.items():
        if k.endswith(".gamma"):
            k = k[:-6] + ".weight"
        elif k.endswith(".beta"):
            k = k[:-5] + ".bias"
        renamed[k] = v
    return renamed, head
