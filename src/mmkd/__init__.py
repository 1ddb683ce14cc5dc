"""mmkd — multi-teacher knowledge distillation of biomedical CLIP models, and their evaluation.

`import mmkd` is cheap: heavy backends (torch, open_clip, transformers) load on first use of
the public functions below.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_model": "mmkd.api:load_model",
    "load_teacher": "mmkd.teachers:load_teacher",
    "create_student": "mmkd.models.student:create_student",
    "FeatureStore": "mmkd.data.feature_store:FeatureStore",
    "zero_shot": "mmkd.export.inference:zero_shot",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name].split(":")
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmkd' has no attribute {name!r}")
