"""The shared evaluation runner: dataset catalog, feature cache, task registry, result files.

Every task (zero-shot, linear probe, retrieval, VQA, MIL, survival) is a function

    run(model: ClipEncoder, entry: DatasetEntry, *, seed: int, cache: FeatureCache,
        num_bootstrap: int) -> {"metrics": {name: float}, "ci": {name: [lo, hi]}, "details": {...}}

registered by dotted path in TASKS and imported only when it runs. The runner writes one JSON per
(model, dataset, task) to `OUT/<model>/<dataset>__<task>.json` with the metrics, their CIs, the
prompts, split sizes, seed and the model's provenance; `mmkd report OUT` reads them back.

Metric names are fixed across tasks (see METRIC_NAMES) so one table can hold every model.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import inspect
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from mmkd.errors import ConfigError, UsageError

TASKS: dict[str, str] = {
    "zero-shot": "mmkd.evaluation.zero_shot:run",
    "linear-probe": "mmkd.evaluation.linear_probe:run",
    "retrieval": "mmkd.evaluation.retrieval:run",
    "vqa": "mmkd.evaluation.vqa:run",
    "mil-classification": "mmkd.evaluation.mil:run",
    "survival": "mmkd.evaluation.survival:run",
}

FORMATS = ("imagefolder", "txt", "csv", "jsonl", "medmnist", "vqa", "slides")

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "auroc", "f1", "precision", "recall")
RETRIEVAL_METRICS = tuple(f"{d}_recall@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))
METRIC_NAMES = (*CLASSIFICATION_METRICS, *RETRIEVAL_METRICS, "c_index")

RESULT_VERSION = 1

if TYPE_CHECKING:  # torch is imported where features are handled, so catalog checks stay fast
    import torch


def load_task(task: str) -> Callable[..., dict]:
    """The task's run function, imported lazily from TASKS."""
    if task not in TASKS:
        raise UsageError(f"--tasks: {task!r} is not a task; choose from {', '.join(TASKS)}")
    module_name, attr = TASKS[task].split(":")
    return getattr(importlib.import_module(module_name), attr)


# ---------------------------------------------------------------------------------------------
# Catalog


@dataclass
class DatasetEntry:
    """One dataset of a catalog, with its path resolved against the catalog file's folder.

    `split`: the split a task evaluates on (e.g. "test"), or None for the format's default; when
    the catalog gives a mapping {split: file} it is kept, resolved, in `split_files`.
    `classnames`: class names in label order (list), or a mapping folder/label -> display name.
    `templates`: prompt templates (inline list, or read from a .txt/.yaml/.json file), or None.
    `prompts`: per-class prompt sentences {class name or label: [sentence, ...]}, or None
    (see evaluation.catalog_values for every accepted form).
    `raw`: the entry exactly as written in the catalog, for task-specific options.
    """

    name: str
    tasks: list[str]
    format: str
    path: Path
    split: str | None = None
    classnames: list[str] | dict[str, str] | None = None
    templates: list[str] | None = None
    modality: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    split_files: dict[str, Path] = field(default_factory=dict)
    catalog_dir: Path | None = None
    prompts: dict[str, list[str]] | None = None
    catalog_name: str | None = None

    def option(self, key: str, default: Any = None) -> Any:
        """A task-specific option from the raw catalog entry (e.g. `image_key`, `label_key`). An option whose
        default is a string (a column name, a mode) must be a string in the catalog too."""
        value = self.raw.get(key, default)
        if isinstance(default, str) and not isinstance(value, str):
            raise UsageError(f"datasets.{self.name}.{key}: {value!r} is not allowed; give a string (default "
                             f"{default!r})")
        return value


def resolve_data_path(value: str, base: Path) -> Path:
    """A catalog path: `~` and `${VAR}` expanded, absolute kept, relative joined to the catalog folder."""
    import os

    expanded = Path(os.path.expanduser(os.path.expandvars(value)))
    return (expanded if expanded.is_absolute() else base / expanded).resolve()


def parse_catalog(data: dict[str, Any], base_dir: str | Path, catalog_name: str | None = None) -> list[DatasetEntry]:
    """Validate a catalog mapping and resolve it; every problem is reported at once (ConfigError)."""
    from mmkd.evaluation.catalog_values import resolve_classnames, resolve_prompts
    from mmkd.evaluation.prompts import PROMPTS_DIR

    base = Path(base_dir).resolve()
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict) or not data["datasets"]:
        raise ConfigError(["the catalog needs a top-level `datasets:` mapping from a dataset name to its entry"])
    entries = []
    for name, raw in data["datasets"].items():
        where = f"datasets.{name}"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping with tasks, format and path")
            continue
        n_before = len(problems)
        tasks = raw.get("tasks")
        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks or not isinstance(tasks, list):
            problems.append(f"{where}.tasks: missing; give a list from {', '.join(TASKS)}")
            tasks = []
        for t in tasks:
            if t not in TASKS:
                problems.append(f"{where}.tasks: {t!r} is not a task; choose from {', '.join(TASKS)}")
        fmt = raw.get("format")
        if fmt not in FORMATS:
            problems.append(f"{where}.format: {fmt!r} is not allowed; choose from {', '.join(FORMATS)}")
        if not isinstance(raw.get("path"), str):
            problems.append(f"{where}.path: missing; give the data's path relative to the catalog file")
        split = raw.get("split")
        split_files: dict[str, Path] = {}
        if isinstance(split, dict):
            split_files = {str(k): resolve_data_path(str(v), base) for k, v in split.items()}
            split = None
        elif split is not None and not isinstance(split, str):
            problems.append(f"{where}.split: expected a split name or a mapping split -> file")
            split = None
        classnames = resolve_classnames(raw.get("classnames"), base, str(name), f"{where}.classnames", problems)
        templates, prompts = resolve_prompts(raw.get("templates"), raw.get("prompts"), base, PROMPTS_DIR, str(name),
                                             where, problems)
        if len(problems) > n_before:
            continue
        entries.append(DatasetEntry(
            name=str(name), tasks=list(tasks), format=str(fmt), path=resolve_data_path(raw["path"], base), split=split,
            classnames=classnames, templates=templates, modality=raw.get("modality"), raw=dict(raw),
            split_files=split_files, catalog_dir=base, prompts=prompts, catalog_name=catalog_name))
    if problems:
        raise ConfigError(problems)
    return entries


def load_catalog(path: str | Path) -> list[DatasetEntry]:
    """Read a catalog YAML file (see catalogs/README.md for the format)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        builtin = Path(__file__).parent / "catalogs" / f"{path.name}"
        for candidate in (builtin, builtin.with_suffix(".yaml")):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise UsageError(f"--datasets: catalog {str(path)!r} does not exist; give a YAML file or a built-in "
                             f"catalog name ({', '.join(builtin_catalogs())})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UsageError(f"--datasets: {path} is not valid YAML: {e}") from None
    return parse_catalog(data, path.parent, catalog_name=path.stem)


def builtin_catalogs() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "catalogs").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# Feature cache


def _module_of(model) -> torch.nn.Module | None:
    import torch

    if isinstance(model, torch.nn.Module):
        return model
    for value in vars(model).values():
        if isinstance(value, torch.nn.Module):
            return value
    return None


def model_fingerprint(model) -> str:
    """A short hash identifying a model's features: provenance, preprocessing and (when the
    encoder holds a torch module) its parameter values, so retrained weights never hit a stale cache."""
    h = hashlib.sha256()
    h.update(json.dumps({"name": getattr(model, "name", ""), "dim": getattr(model, "embed_dim", 0),
                         "provenance": getattr(model, "provenance", {}),
                         "preprocess": repr(getattr(model, "preprocess", None))},
                        sort_keys=True, default=str).encode())
    import torch

    module = _module_of(model)
    if module is not None:
        for key, tensor in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@=-]+", "_", str(part))[:120] or "_"


class FeatureCache:
    """Features per (model fingerprint, dataset, split) as safetensors files under `root`.

    `get_or_compute(key, fn)` returns the cached tensors for `key` (a tuple of strings) when the
    file exists and its stored `fingerprint` matches, else calls `fn() -> {name: Tensor}`, saves
    and returns it. `root=None` keeps everything in memory (nothing is written).
    `hits`/`misses` count lookups, so tests can check that a second run encodes nothing.
    """

    def __init__(self, root: str | Path | None, batch_size: int = 64, num_workers: int = 0):
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hits = 0
        self.misses = 0
        self._memory: dict[tuple, tuple[str, dict[str, torch.Tensor]]] = {}
        self._model_keys: dict[int, str] = {}

    def model_key(self, model) -> str:
        key = self._model_keys.get(id(model))
        if key is None:
            key = self._model_keys[id(model)] = f"{_safe(getattr(model, 'name', 'model'))}-{model_fingerprint(model)}"
        return key

    def path_for(self, key: Iterable[str]) -> Path | None:
        parts = [_safe(p) for p in key]
        if self.root is None:
            return None
        return self.root.joinpath(*parts[:-1], parts[-1] + ".safetensors")

    def get_or_compute(self, key: Iterable[str], fn: Callable[[], dict[str, torch.Tensor]],
                       fingerprint: str = "") -> dict[str, torch.Tensor]:
        key = tuple(str(k) for k in key)
        if key in self._memory and self._memory[key][0] == fingerprint:
            self.hits += 1
            return self._memory[key][1]
        path = self.path_for(key)
        if path is not None and path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("fingerprint", "") == fingerprint:
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
                    self.hits += 1
                    self._memory[key] = (fingerprint, tensors)
                    return tensors
        self.misses += 1
        tensors = fn()
        if path is not None:
            from mmkd.utils.io import atomic_save_safetensors

            atomic_save_safetensors(path, tensors, metadata={"fingerprint": fingerprint})
        self._memory[key] = (fingerprint, tensors)
        return tensors

    def image_features(self, model, dataset: str, split: str, images) -> torch.Tensor:
        """[N, D] normalised image features of an `ImageList` (see evaluation.datasets)."""
        from mmkd.evaluation.encode import encode_images

        key = (self.model_key(model), dataset, f"{split}.image")
        fn = lambda: {"features": encode_images(model, images, self.batch_size, self.num_workers, desc=f"{dataset}/{split}")}
        return self.get_or_compute(key, fn, fingerprint=images.fingerprint())["features"]

    def text_features(self, model, dataset: str, split: str, texts: list[str]) -> torch.Tensor:
        """[N, D] normalised text features of `texts` (in order)."""
        from mmkd.evaluation.encode import encode_texts, texts_fingerprint

        key = (self.model_key(model), dataset, f"{split}.text")
        fn = lambda: {"features": encode_texts(model, texts, self.batch_size)}
        return self.get_or_compute(key, fn, fingerprint=texts_fingerprint(texts))["features"]


# ---------------------------------------------------------------------------------------------
# Running


def result_path(out_dir: str | Path, model_name: str, dataset: str, task: str, protocol: str = "mmkd") -> Path:
    """OUT/<model>/<dataset>__<task>.json; a result of another scoring protocol gets __<protocol> before .json."""
    suffix = "" if protocol == "mmkd" else f"__{_safe(protocol)}"
    return Path(out_dir) / _safe(model_name) / f"{_safe(dataset)}__{_safe(task)}{suffix}.json"


def _check_result(task: str, result: dict) -> None:
    assert isinstance(result, dict) and isinstance(result.get("metrics"), dict), \
        f"task {task} must return a dict with a 'metrics' mapping"


def run_one(model, entry: DatasetEntry, task: str, *, seed: int, cache: FeatureCache, num_bootstrap: int,
            model_name: str, listed: list[str] | None = None, protocol: str = "mmkd") -> dict[str, Any]:
    """Run one task on one dataset; returns the full result record (not yet written).
    `listed`: the datasets of the catalog that list this task (the report's coverage denominator).
    `protocol`: the scoring protocol, passed to the tasks that have one (zero-shot); the record's
    `protocol` is the one its numbers were computed under."""
    from mmkd import __version__
    from mmkd.evaluation.clip_benchmark import clip_benchmark_metrics
    from mmkd.utils.io import finite_json

    fn = load_task(task)
    started = time.perf_counter()
    options = {"protocol": protocol} if "protocol" in inspect.signature(fn).parameters else {}
    result = fn(model, entry, seed=seed, cache=cache, num_bootstrap=num_bootstrap, **options)
    _check_result(task, result)
    details = dict(result.get("details") or {})
    return finite_json({  # undefined values (a label without positives) are null, never a bare NaN
        "result_version": RESULT_VERSION,
        "model": model_name,
        "dataset": entry.name,
        "task": task,
        "protocol": result.get("protocol", "mmkd"),
        "modality": entry.modality,
        "metrics": {k: (None if v is None else float(v)) for k, v in result["metrics"].items()},
        "clip_benchmark": clip_benchmark_metrics(task, result["metrics"]),
        "catalog": {"name": entry.catalog_name, "listed": sorted(listed) if listed is not None else [entry.name]},
        "ci": {k: [float(v[0]), float(v[1])] for k, v in (result.get("ci") or {}).items()},
        "prompts": result.get("prompts", details.pop("prompts", None)),
        "split_sizes": result.get("split_sizes", details.pop("split_sizes", None)),
        "details": details,
        "seed": seed,
        "num_bootstrap": num_bootstrap,
        "dataset_entry": {k: v for k, v in entry.raw.items()},
        "dataset_path": str(entry.path),
        "model_provenance": getattr(model, "provenance", {}),
        "model_fingerprint": cache.model_key(model),
        "mmkd_version": __version__,
        "seconds": round(time.perf_counter() - started, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })


def _as_entries(catalog) -> list[DatasetEntry]:
    if isinstance(catalog, (str, Path)):
        return load_catalog(catalog)
    if isinstance(catalog, dict):
        return parse_catalog(catalog, Path.cwd())
    return list(catalog)


def evaluate(model, catalog, tasks: Iterable[str], out_dir: str | Path | None, *, seed: int = 0,
             num_bootstrap: int = 1000, cache: FeatureCache | None = None, cache_dir: str | Path | None = None,
             model_name: str | None = None, only: Iterable[str] | None = None,
             overwrite: bool = False, protocol: str = "mmkd") -> list[dict[str, Any]]:
    """Evaluate one ClipEncoder on every (dataset, task) of `catalog` that `tasks` selects.

    `catalog`: a YAML path, a parsed mapping, or a list of DatasetEntry. A dataset runs each
    requested task it lists. Datasets whose files are missing are skipped with a warning.
    Writes `out_dir/<model>/<dataset>__<task>.json` (unless out_dir is None) and returns the records.
    Features are cached under `cache_dir` (default `out_dir/.feature_cache`). `protocol`: how zero-shot
    classification is scored, mmkd or authors (see mmkd.evaluation.authors_protocol); a result scored
    another way than mmkd's is written as `<dataset>__<task>__<protocol>.json`.
    """
    from mmkd.utils.io import atomic_write_json

    tasks = [t for t in tasks]
    for t in tasks:
        if t not in TASKS:
            raise UsageError(f"--tasks: {t!r} is not a task; choose from {', '.join(TASKS)}")
    entries = _as_entries(catalog)
    if only:
        wanted = set(only)
        unknown = wanted - {e.name for e in entries}
        if unknown:
            raise UsageError(f"--only: {sorted(unknown)} not in the catalog; it has {', '.join(e.name for e in entries)}")
        entries = [e for e in entries if e.name in wanted]
    if cache is None:
        root = cache_dir if cache_dir is not None else (Path(out_dir) / ".feature_cache" if out_dir else None)
        cache = FeatureCache(root)
    model_name = str(model_name or getattr(model, "name", "model"))
    jobs = [(e, t) for e in entries for t in tasks if t in e.tasks]
    if not jobs:
        raise UsageError(f"--tasks: no dataset of the catalog lists any of {', '.join(tasks)}; "
                         f"the catalog's datasets list: " + "; ".join(f"{e.name}: {','.join(e.tasks)}" for e in entries))
    if out_dir is not None:  # before any work: no result may replace a file that is not an earlier result
        from mmkd.utils.outputs import check_replaceable, json_with_keys

        check_replaceable([result_path(out_dir, model_name, e.name, t, _protocol_of(t, protocol)) for e, t in jobs],
                          json_with_keys("dataset", "task", "metrics"), "--out", "an evaluation result", overwrite)
    records, missing = [], []
    listed = {t: [e.name for e in entries if t in e.tasks] for t in tasks}
    for entry, task in jobs:
        if not entry.path.exists():
            missing.append(entry)
            continue
        record = run_one(model, entry, task, seed=seed, cache=cache, num_bootstrap=num_bootstrap, model_name=model_name,
                         listed=listed[task], protocol=_protocol_of(task, protocol))
        if out_dir is not None:
            atomic_write_json(result_path(out_dir, model_name, entry.name, task, record["protocol"]), record)
        records.append(record)
    absent = list({e.name: e for e in missing}.values())
    for entry in absent:
        warnings.warn(f"dataset {entry.name}: {entry.path} does not exist, skipped ({absent_hint(entry)})", stacklevel=2)
    if not records:
        hints = "\n".join(f"  - {e.name}: {absent_hint(e)}" for e in absent)
        raise UsageError(f"--datasets: none of the selected datasets exists on disk:\n{hints}\n"
                         "put the files where the catalog's `path` says (`mmkd datasets check` lists what is missing)")
    return records


def remove_results(folder: str | Path) -> list[str]:
    """Remove what `mmkd eval` and `mmkd report` wrote under `folder` and nothing else: result files, the
    `.model.json` of each model folder, the feature cache's `.safetensors`, the report files an
    `.mmkd-report.json` lists (and it). Emptied folders go too; returns the relative names removed (the
    feature cache as one entry)."""
    from mmkd.utils.outputs import json_with_keys

    folder = Path(folder)
    if not folder.is_dir():
        return []
    is_result = json_with_keys("dataset", "task", "metrics")
    doomed: list[Path] = []
    for owner in folder.rglob(".mmkd-report.json"):
        try:
            listed = json.loads(owner.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            continue
        doomed += [owner.parent / name for name in listed if isinstance(name, str) and ".." not in Path(name).parts]
        doomed.append(owner)
    cached = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        if ".feature_cache" in path.relative_to(folder).parts and path.suffix == ".safetensors":
            path.unlink()
            cached += 1
        elif path.name == ".model.json" or (path.suffix == ".json" and is_result(path)):
            doomed.append(path)
    removed = []
    for path in dict.fromkeys(doomed):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path.relative_to(folder).as_posix())
    if cached:
        removed.append(f".feature_cache ({cached} file(s))")
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()
    return removed


def _protocol_of(task: str, protocol: str) -> str:
    """The protocol a task is run under: `protocol` for the tasks that have one, mmkd for the others."""
    return protocol if "protocol" in inspect.signature(load_task(task)).parameters else "mmkd"


def absent_hint(entry: DatasetEntry) -> str:
    """How to get a dataset that is not on disk: its `prepare` command, else the catalog's layout comment."""
    prepare = entry.option("prepare")
    source = entry.option("source")
    if isinstance(prepare, dict):
        where = f" (download: {source})" if source else ""
        return f"mmkd datasets prepare {entry.name} --from DOWNLOAD{where}"
    if source:
        return f"download it from {source} and arrange it as the catalog entry says"
    return "see the catalog's comments for the expected layout"
