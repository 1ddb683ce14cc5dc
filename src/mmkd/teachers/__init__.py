"""Teachers: `load_teacher(spec)` turns a spec into a `ClipEncoder` (see mmkd.models.adapter).

Accepted specs:
- `local-dir:PATH` — an open_clip folder (open_clip_config.json + weights);
- `hf-hub:ORG/NAME` — an open_clip repo on the Hugging Face Hub, used from the local cache;
- `ARCH@WEIGHTS_FILE` — an open_clip built-in architecture plus a weights file
  (e.g. `ViT-B-16@/models/biomedclip.safetensors`);
- `hf:PATH_OR_ID` — a transformers CLIPModel/SiglipModel folder or Hub id;
- `pmc-clip:PATH`, `medclip:PATH`, `unimed-clip:PATH` — teachers that need their own code,
  through the adapters in `mmkd.teachers.custom`;
- a known teacher's name (`BiomedCLIP`, `PLIP`, ...; see `mmkd teachers`): its default spec;
- a plain folder: open_clip if it holds open_clip_config.json, transformers if config.json.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mmkd.errors import UsageError
from mmkd.models.adapter import ClipEncoder

CUSTOM_PREFIXES = {
    "pmc-clip:": "mmkd.teachers.custom.pmc_clip",
    "medclip:": "mmkd.teachers.custom.medclip",
    "unimed-clip:": "mmkd.teachers.custom.unimed_clip",
}

SPEC_FORMS = ("local-dir:PATH, hf-hub:ORG/NAME, ARCH@WEIGHTS_FILE, hf:PATH_OR_ID, pmc-clip:PATH, medclip:PATH, "
              "unimed-clip:PATH, a folder, or a known teacher name (see `mmkd teachers`)")


def load_teacher(spec: str, device: str = "cpu", name: str | None = None) -> ClipEncoder:
    """Load a frozen teacher in eval mode. Raises UsageError with the fix when it cannot."""
    from mmkd.teachers.registry import find_known

    spec = spec.strip()
    if not spec:
        raise UsageError(f"--teacher: empty spec; give one of: {SPEC_FORMS}")
    for prefix, module_name in CUSTOM_PREFIXES.items():
        if spec.startswith(prefix):
            return _load_custom(module_name, spec[len(prefix):], spec, device, name)
    if spec.startswith("local-dir:"):
        from mmkd.teachers.open_clip_adapter import load_open_clip_dir

        folder = Path(spec[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise UsageError(f"--teacher: {spec!r}: folder {str(folder)!r} does not exist")
        return load_open_clip_dir(folder, spec, device=device, name=name)
    if spec.startswith("hf-hub:"):
        from mmkd.teachers.open_clip_adapter import load_open_clip_hub

        repo = spec[len("hf-hub:"):]
        known = _known_by_hub(repo)
        return load_open_clip_hub(repo, spec, device=device, name=name,
                                  how_to_get=_how_to_get(known) if known else "")
    if spec.startswith("hf:"):
        from mmkd.teachers.hf_adapter import load_hf_clip

        target = spec[len("hf:"):]
        known = _known_by_hub(target)
        return load_hf_clip(target, spec, device=device, name=name, how_to_get=_how_to_get(known) if known else "")
    if "@" in spec and not Path(spec).exists():
        from mmkd.teachers.open_clip_adapter import load_open_clip_arch

        arch, _, weights = spec.partition("@")
        return load_open_clip_arch(arch, weights, spec, device=device, name=name)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return load_teacher(f"local-dir:{path}", device=device, name=name)
        if (path / "config.json").is_file():
            return load_teacher(f"hf:{path}", device=device, name=name)
        raise UsageError(f"--teacher: folder {spec!r} holds neither open_clip_config.json (open_clip) nor "
                         f"config.json (transformers)")
    known = find_known(spec)
    if known is not None:
        if not known.spec:
            raise UsageError(f"--teacher: {known.name} has no download location mmkd can use; "
                             f"{known.obtain}; then pass {known.name}={known.spec_template.format(path='PATH')}")
        return load_teacher(known.spec, device=device, name=name or known.name)
    raise UsageError(f"--teacher: cannot load {spec!r}; give one of: {SPEC_FORMS}")


def _known_by_hub(repo: str):
    from mmkd.teachers.registry import KNOWN_TEACHERS

    return next((t for t in KNOWN_TEACHERS.values() if t.hub_id and t.hub_id == repo), None)


def _how_to_get(info) -> str:
    return (f"To get {info.name}: {info.obtain}. Or point mmkd at a local copy: "
            f"--teacher {info.name}={info.spec_template.format(path='PATH')}")


def _load_custom(module_name: str, path: str, spec: str, device: str, name: str | None) -> ClipEncoder:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name)):
            raise UsageError(f"--teacher: {spec!r} needs the adapter module {module_name}, which this installation "
                             f"lacks; update mmkd, or export the teacher as an open_clip folder (local-dir:PATH)"
                             ) from None
        raise UsageError(f"--teacher: {spec!r}: the adapter {module_name} needs the package {e.name!r}; "
                         f"pip install it") from None
    if not path:
        raise UsageError(f"--teacher: {spec!r}: give the weights path after the prefix")
    return module.load(path, device, name)


__all__ = ["load_teacher", "ClipEncoder"]
