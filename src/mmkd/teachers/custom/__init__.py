"""Teachers that need their own architecture code: PMC-CLIP, MedCLIP, UniMed-CLIP.

Each module rebuilds the published architecture from open_clip / transformers / torchvision
building blocks (writing only what differs), loads the released checkpoint as published (its
container, key names and prefixes) strictly with `torch.load(weights_only=True)`, and exposes

    load(path: str, device: str = "cpu", name: str | None = None) -> ClipEncoder

which `mmkd.load_teacher` calls for the specs `pmc-clip:PATH`, `medclip:PATH` and
`unimed-clip:PATH`. PATH is a folder holding the released checkpoint and, in `text/`, the
Hugging Face folder of the text model (config.json + tokenizer files); options follow a `?`:
`tokenizer=DIR` (text model folder elsewhere), `weights=FILE`, `config=JSON` (architecture
variant), and for MedCLIP `vision=swin|resnet50`, `vision_config=DIR`. Each module's docstring
gives its folder layout; `mmkd.teachers.custom.published` writes folders in those layouts.

Importing this package is cheap: torch/transformers are imported by the modules themselves.
"""

ADAPTERS = {
    "pmc-clip": "mmkd.teachers.custom.pmc_clip",
    "medclip": "mmkd.teachers.custom.medclip",
    "unimed-clip": "mmkd.teachers.custom.unimed_clip",
}


def load_custom(prefix: str, path: str, device: str = "cpu", name: str | None = None):
    """Dispatch `prefix:path` to its adapter module's `load` (prefix in ADAPTERS)."""
    import importlib

    from mmkd.errors import UsageError

    if prefix not in ADAPTERS:
        raise UsageError(f"unknown custom teacher {prefix!r}; known: {', '.join(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[prefix]).load(path, device=device, name=name)
