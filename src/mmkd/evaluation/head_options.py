"""Training settings of the small trainable heads (MIL, survival, VQA) from catalog options."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def head_config(cls: type[T], options: dict, key_of: Callable[[str], str], where: str) -> T:
    """`cls(**values)` with every field whose key (`key_of(field)`) is in `options`.

    Values must be positive (dropout: in [0, 1)); all bad values are reported at once.
    A field defaulting to None takes an int.
    """
    from mmkd.errors import ConfigError

    values, problems = {}, []
    for name, default in vars(cls()).items():
        key = key_of(name)
        if key not in options:
            continue
        raw = options[key]
        kind = type(default) if default is not None else int
        try:
            value = kind(raw)
            ok = value > 0 if name != "dropout" else 0 <= value < 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"{where}.{key}: {raw!r} is not allowed; give a positive {kind.__name__} "
                            f"(default {default})")
        else:
            values[name] = value
    if problems:
        raise ConfigError(problems)
    return cls(**values)
