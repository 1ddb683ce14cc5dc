"""Class names, templates and per-class prompts of a catalog entry: inline values or data files.

Accepted forms (every problem is appended to `problems`, so a catalog reports all at once):
- `classnames`: a list (label order); a mapping label/folder -> display name; a .txt (one per
  line) / .yaml list file; or a CLIP_benchmark classnames JSON (`{dataset: [names]}`), whose
  entry is `file.json#dataset` or, without `#`, the catalog's dataset name.
- `templates`: an inline list; a .txt/.yaml file or built-in set name (`prompts/*.txt`); or a
  CLIP_benchmark templates JSON (`{dataset: [templates with {c}]}`). When that JSON entry is a
  mapping class -> sentences (CuPL form), it is taken as `prompts`.
- `prompts`: a mapping class -> [sentence, ...] (the authors' per-class prompt form), inline or
  from a JSON/YAML file (`file.json#dataset` for a keyed file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmkd.errors import UsageError


def _split_key(value: str) -> tuple[str, str | None]:
    path, sep, key = value.partition("#")
    return path, (key if sep else None)


def _find_file(value: str, base: Path, builtin_dir: Path | None) -> Path | None:
    candidates = [base / value]
    if builtin_dir is not None:
        candidates += [builtin_dir / value, builtin_dir / f"{value}.txt", builtin_dir / f"{value}.yaml"]
    return next((p for p in candidates if p.is_file()), None)


def _read_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _keyed(path: Path, key: str | None, dataset: str, where: str) -> Any:
    """The dataset's entry of a keyed JSON/YAML file (or the whole file when it is a plain list)."""
    if path.suffix == ".json":
        from mmkd.evaluation.prompts import read_keyed_json

        return read_keyed_json(path, key, [dataset, f"wds/{dataset}"], where)
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and key is not None:
        if key not in data:
            raise UsageError(f"{where}: {path} has no entry {key!r}; it has {', '.join(sorted(map(str, data)))}")
        return data[key]
    return data


def resolve_classnames(value: Any, base: Path, dataset: str, where: str, problems: list[str]):
    """list | dict label -> name | None (see the module doc)."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [str(v) for v in value]
    if not isinstance(value, str):
        problems.append(f"{where}: expected a list, a mapping or a file path, got {type(value).__name__}")
        return None
    name, key = _split_key(value)
    path = _find_file(name, base, None)
    if path is None:
        problems.append(f"{where}: {value!r} is neither an inline list nor an existing file (looked in {base})")
        return None
    try:
        if path.suffix in (".json", ".yaml", ".yml"):
            data = _keyed(path, key, dataset, where)
            if isinstance(data, dict) and key is None and path.suffix != ".json":
                data = next(iter(data.values()))  # a one-entry YAML such as `names: [...]`
            if isinstance(data, dict):
                return {str(k): str(v) for k, v in data.items()}
            return [str(v) for v in data or []]
        return _read_lines(path)
    except UsageError as e:
        problems.append(str(e))
        return None


def resolve_prompts(templates: Any, prompts: Any, base: Path, builtin_dir: Path, dataset: str, where: str,
                    problems: list[str]) -> tuple[list[str] | None, dict[str, list[str]] | None]:
    """(templates, per-class prompts); at most one of them is set (see the module doc)."""
    from mmkd.evaluation.prompts import check_prompt_sentences, check_templates

    out_templates = out_prompts = None
    try:
        if templates is not None:
            if isinstance(templates, list):
                out_templates = check_templates([str(t) if not isinstance(t, str) else t for t in templates],
                                                f"{where}.templates")
            elif isinstance(templates, str):
                name, key = _split_key(templates)
                path = _find_file(name, base, builtin_dir)
                if path is None:
                    problems.append(f"{where}.templates: {templates!r} is neither an inline list nor an existing "
                                    f"file (looked in {base} and the built-in sets)")
                elif path.suffix == ".json":
                    data = _keyed(path, key, dataset, f"{where}.templates")
                    if isinstance(data, dict):  # CuPL form: class -> sentences
                        out_prompts = check_prompt_sentences(data, f"{where}.templates")
                    else:
                        out_templates = check_templates(list(data or []), f"{where}.templates ({path.name})")
                else:
                    from mmkd.evaluation.prompts import read_templates

                    out_templates = read_templates(path)
            else:
                problems.append(f"{where}.templates: expected a list or a file path, got {type(templates).__name__}")
        if prompts is not None:
            if out_prompts is not None or out_templates is not None:
                problems.append(f"{where}: give `templates` or per-class `prompts`, not both (prompts are full "
                                f"sentences used as they are)")
            elif isinstance(prompts, str):
                name, key = _split_key(prompts)
                path = _find_file(name, base, None)
                if path is None:
                    problems.append(f"{where}.prompts: file {prompts!r} does not exist (looked in {base})")
                else:
                    out_prompts = check_prompt_sentences(_keyed(path, key, dataset, f"{where}.prompts"),
                                                         f"{where}.prompts")
            else:
                out_prompts = check_prompt_sentences(prompts, f"{where}.prompts")
    except UsageError as e:
        problems.append(str(e))
    return out_templates, out_prompts
