"""Typed configuration: dataclasses, YAML recipes, dotted command-line overrides, one validation pass.

A run's configuration is built in three layers, each overriding the one before:
defaults (the dataclasses below) -> a YAML recipe (`--config FILE` or a packaged name) -> command-line flags
(`--optim.lr 1e-4`, or the short forms such as `--lr`). `validate()` then reports every
problem at once, each naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import io
import tokenize
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmkd.errors import ConfigError, UsageError


MAX_OPEN_SHARDS = 64  # shard files a loader process keeps open (mmkd.data.pairs); data.open_shards is at most this


@dataclass
class DataConfig:
    path: str = ""  # CSV/JSONL file, or webdataset shards (a .tar, a folder of .tar, a glob, a {000..009} pattern)
    format: str = "auto"  # format of data.path: auto (from the name) | csv | jsonl | webdataset
    image_key: str = "image"  # column / json key holding the image path (CSV/JSONL)
    caption_key: str = "caption"  # column / json key holding the caption; webdataset: the default reads a sample's
    # .txt member when it has one (BIOMEDICA), another name always reads that key of the sample's .json
    id_key: str = "sample_id"  # optional column with a stable sample id (defaults to the row number / tar key)
    modality_key: str = "modality"  # optional column naming the sample's modality
    num_workers: int = 0  # DataLoader worker processes per rank
    order: str = "auto"  # auto (shards for webdataset, random for CSV/JSONL) | shards (each worker reads whole shards
    # in sequence, shuffled within a buffer) | random (one global permutation per epoch)
    shuffle_buffer: int = 2048  # order shards: samples shuffled together within a worker's stream of shards
    open_shards: int = 16  # order shards: shards each loader worker reads at once, their samples interleaved
    # (BIOMEDICA writes shards cluster by cluster: 1 would fill a batch from one or two clusters)
    decode: str = "cpu"  # cpu (PIL in the loader workers) | gpu (JPEG decoding on the GPU, nvJPEG; needs CUDA)
    max_image_pixels: int = 64_000_000  # larger images are skipped as decompression bombs
    max_skipped_fraction: float = 0.5  # stop the run when more than this share of samples is unreadable
    image_only_path: str = ""  # stage 2 only: images without captions (folder or CSV) for decision distillation
    augment: str = "random-resized-crop"  # random-resized-crop (the authors': scale crop_scale_min..1, bicubic) | none
    crop_scale_min: float = 0.9  # smallest crop area fraction of RandomResizedCrop (the authors': 0.9)
    select: list[str] = field(default_factory=list)  # FIELD=V1,V2 metadata clauses (repeatable, ANDed) or YAML files
    license: str = ""  # "" (all) | commercial | noncommercial: keep samples whose licence allows that use
    index_dir: str = ""  # where the persistent index lives (default: $MMKD_CACHE/index/..., ~/.cache/mmkd/index/...)
    index_fields: list[str] = field(default_factory=list)  # more JSON keys / columns to index for selection
    index_workers: int = 0  # processes that build the index (0: the cores, shared by the ranks of a node)
    index_check: str = "stat"  # stat (size + mtime of each shard) | full (also re-list every shard's headers)


@dataclass
class ModelConfig:
    name: str = "mmkd-tiny-vit"  # open_clip model name, a model-config JSON file, or an mmkd built-in tiny config
    init: str = ""  # initial weights: a checkpoint/run dir, .safetensors, or .pt/.bin (opened with weights_only=True)
    image_init: str = ""  # image tower only: open_clip ARCH:TAG, hf-hub:/local-dir: spec, or a .pt/.bin/.safetensors
    image_init_logit_scale: bool = True  # also take logit_scale from the image_init file (as the authors' strict=False)
    hf_text_path: str = ""  # local folder of the HF text model (config + tokenizer [+ weights]) for HF text towers
    text_pretrained: bool = True  # load the HF text tower's weights from hf_text_path when it holds them
    context_length: int = 0  # 0 keeps the model config's context length
    grad_checkpointing: bool = False  # recompute activations in the backward pass to save memory
    pad_to_longest: bool = True  # pad each text batch to its longest caption instead of the full context


@dataclass
class OptimConfig:
    lr: float = 5e-5  # peak learning rate, reached after the warm-up
    weight_decay: float = 0.2  # AdamW weight decay (not applied to 1-D parameters: gains, biases, logit scale)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.98  # AdamW beta2
    eps: float = 1e-6  # AdamW epsilon
    warmup_steps: int = 2000  # steps of linear warm-up from 0 to lr
    schedule: str = "cosine"  # learning rate after the warm-up: cosine | constant
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    fused: bool = False  # fused AdamW (CUDA only)


@dataclass
class TrainConfig:
    out: str = "runs/pretrain"  # run folder: config.yaml, metrics.jsonl, checkpoints/, summary.json
    epochs: int = 1  # passes over the data
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    batch_size: int = 32  # global batch size (all ranks, all accumulation micro-steps)
    batch_size_per_process: int = 0  # per-process batch (the authors' convention); set, it replaces batch_size
    accum_steps: int = 1  # micro-batches per optimiser step; every loss stays over the whole batch (accumulate.py)
    seed: int = 0  # seed of initialisation, data order and augmentation
    device: str = "auto"  # where to train: auto (cuda when present) | cpu | cuda
    precision: str = "auto"  # autocast precision: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    log_every: int = 10  # steps between metric lines
    save_every: int = 0  # steps between checkpoints (0: only at the end of each epoch and of the run)
    keep_checkpoints: int = 2  # how many step checkpoints to keep
    resume: str = ""  # continue a run: latest, or a checkpoint folder ("" starts afresh)
    overwrite: bool = False  # start over in an --out folder that holds a run (removes only mmkd's own files)
    compile: bool = False  # torch.compile the model
    max_bad_steps: int = 5  # stop after this many consecutive non-finite losses (saving first)
    progress: bool = True  # show a progress bar


@dataclass
class DistillConfig:
    store: str = ""  # feature store directory
    alignment: str = ""  # alignment weights (default: STORE/alignment.safetensors)
    target_space: str = "projection"  # what the student is matched to: projection | adaptor | relational | decision
    policy: str = "random-available"  # who teaches: random-available | mean-available | score-weighted | modality
    exclude_teachers: list[str] = field(default_factory=list)  # teachers left out (leave-one-teacher-out ablations)
    lambda_fd: float = 50.0  # weight of the feature-distillation (FD) term
    lambda_icl: float = 1.0  # weight of the interactive contrastive (ICL) term
    lambda_kl: float = 0.0  # weight of the relational KL term
    lambda_decision: float = 0.0  # weight of decision distillation on image-only samples
    normalize_targets: bool = True  # L2-normalise the FD targets (the paper's released code does not)
    learnable_icl_temperature: bool = True  # learn the ICL temperature (the paper fixes it)
    icl_temperature: float = 0.07  # temperature of the ICL logits (its start value when learnable)
    # paper: one ICL similarity matrix over the whole (gathered) batch, each row's targets from its own
    # teacher (the authors' code); mmkd: each teacher's InfoNCE over its own rows only
    icl_form: str = "mmkd"  # how ICL is formed: mmkd (per teacher, its own rows) | paper (one matrix, all rows)
    # linear (the authors' per-teacher projection, `clips_project_output`) or linear+mlp (+ the modality MLP)
    projection: str = "linear+mlp"  # projection-space targets: linear | linear+mlp
    kl_temperature: float = 0.05  # temperature of the relational KL similarity distributions
    modality_routes: dict[str, list[str]] = field(default_factory=dict)  # modality -> teachers (policy=modality)
    decision_vocab: str = ""  # YAML: modality -> {classnames, templates}, for decision distillation
    decision_temperature: float = 0.05  # tau of teacher and student class distributions
    decision_batch_size: int = 0  # image-only samples per micro-batch (0: same as the pair micro-batch)
    decision_teachers: dict[str, str] = field(default_factory=dict)  # teacher -> spec (default: store provenance)
    check_data: str = "sample"  # sample | full | off: compare the data's content digests with the store's rows


@dataclass
class LossConfig:
    local: bool = False  # CLIP loss over this process's rows x all columns (the authors' stage 1: true)
    gather_with_grad: bool = True  # other processes' features carry gradient (the authors' stage 1: false)


@dataclass
class ValConfig:
    data: str = ""  # held-out pairs (CSV/JSONL/shards, keys as data.*): CLIP loss and recall@1 on them
    datasets: str = ""  # evaluation catalog (YAML or built-in name): zero-shot on its zero-shot datasets
    only: list[str] = field(default_factory=list)  # names of the catalog's datasets to validate on (default: all)
    every: int = 0  # steps between validations (0: at the end of every epoch and of the run)
    encode_batch_size: int = 64  # pairs per loss chunk and per encoder call
    keep_best: str = ""  # keep RUN/best by this metric (val/clip_loss, zero-shot/mean_accuracy, ...); --init RUN:best


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    val: ValConfig = field(default_factory=ValConfig)


# Short flags for the options people set most.
FLAG_ALIASES: dict[str, str] = {
    "data": "data.path",
    "model": "model.name",
    "init": "model.init",
    "out": "train.out",
    "epochs": "train.epochs",
    "batch-size": "train.batch_size",
    "lr": "optim.lr",
    "resume": "train.resume",
    "seed": "train.seed",
    "max-steps": "train.max_steps",
    "store": "distill.store",
    "device": "train.device",
}

# Keys whose flag may be given several times (the values accumulate) and whose values are never split
# at commas: each `--data.select FIELD=V1,V2` is one clause.
REPEATABLE = ("data.select",)

CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("auto", "csv", "jsonl", "webdataset", "selection"),
    "data.license": ("", "commercial", "noncommercial"),
    "data.index_check": ("stat", "full"),
    "data.augment": ("random-resized-crop", "none"),
    "data.order": ("auto", "shards", "random"),
    "data.decode": ("cpu", "gpu"),
    "optim.schedule": ("cosine", "constant"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16"),
    "distill.target_space": ("projection", "adaptor", "relational", "decision"),
    "distill.policy": ("random-available", "mean-available", "score-weighted", "modality"),
    "distill.icl_form": ("mmkd", "paper"),
    "distill.projection": ("linear", "linear+mlp"),
    "distill.check_data": ("sample", "full", "off"),
}


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


@functools.lru_cache(maxsize=1)
def field_docs() -> dict[str, str]:
    """"section.key" -> the field's one-line meaning: the comment written beside it in this file.

    The comments above are the only description of the fields; `--help` reads them from here.
    """
    source = Path(__file__).read_text(encoding="utf-8")
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    section_of = {typing.get_type_hints(Config)[f.name].__name__: f.name for f in dataclasses.fields(Config)}
    docs = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name in section_of:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    text = comments.get(item.end_lineno or item.lineno) or comments.get(item.lineno - 1, "")
                    docs[f"{section_of[node.name]}.{item.target.id}"] = text
    return docs


def field_defaults(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """"section.key" -> default value, with a stage's own `base` defaults applied (e.g. distill's lr 1e-6)."""
    cfg = Config()
    problems: list[str] = []
    apply_overrides(cfg, base or {}, problems, "defaults")
    assert not problems, problems
    return {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in _all_keys(cfg)}


def field_type_name(key: str) -> str:
    """A short name of a field's type for help texts: INT, FLOAT, BOOL, TEXT, A,B (list), YAML (mapping)."""
    section, _, name = key.partition(".")
    typ = _field_type(type(getattr(Config(), section)), name)
    origin = typing.get_origin(typ)
    if origin is list:
        return "A,B"
    if origin is dict:
        return "YAML"
    return {bool: "BOOL", int: "INT", float: "FLOAT"}.get(typ, "TEXT")


def _parse_value(text: Any, typ, key: str, problems: list[str]):
    """Convert a YAML or command-line value to the field's type; record a problem on failure."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(text, bool):
                return text
            s = str(text).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(text, bool):
                raise ValueError
            if isinstance(text, float) and not text.is_integer():
                raise ValueError
            return int(str(text).replace("_", "")) if not isinstance(text, (int, float)) else int(text)
        if typ is float:
            if isinstance(text, bool):
                raise ValueError
            return float(text)
        if typ is str:
            return "" if text is None else str(text)
        if origin is list:
            if isinstance(text, list):
                return [str(t) for t in text]
            return [t for t in str(text).split(",") if t]
        if origin is dict:
            if isinstance(text, dict):
                return text
            loaded = yaml.safe_load(str(text))
            if not isinstance(loaded, dict):
                raise ValueError
            return loaded
    except (TypeError, ValueError, yaml.YAMLError):  # YAMLError: not YAML at all (a control character, a bad flow)
        pass
    type_name = getattr(typ, "__name__", str(typ))
    problems.append(f"{key}: {text!r} is not a valid {type_name}")
    return None


def _all_keys(cfg: Config) -> list[str]:
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


def apply_overrides(cfg: Config, overrides: dict[str, Any], problems: list[str], source: str = "") -> None:
    """Set dotted keys on `cfg`; unknown keys and bad types are added to `problems`."""
    keys = _all_keys(cfg)
    for key, raw in overrides.items():
        section_name, _, name = key.partition(".")
        if key not in keys:
            hint = difflib.get_close_matches(key, keys, n=1)
            where = f" (in {source})" if source else ""
            problems.append(f"{key}{where}: unknown key" + (f"; did you mean {hint[0]}?" if hint else ""))
            continue
        section = getattr(cfg, section_name)
        if key in REPEATABLE and not isinstance(raw, list):
            raw = [raw]  # one clause, commas included
        value = _parse_value(raw, _field_type(type(section), name), key, problems)
        if value is not None:
            setattr(section, name, value)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "." not in key and k in {f.name for f in dataclasses.fields(Config)}:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe's dotted keys; `path` is a file or a packaged recipe's name (mmkd.recipe_files)."""
    from mmkd.recipe_files import resolve_recipe

    try:
        path = resolve_recipe(path)
    except UsageError as e:
        raise ConfigError([str(e)]) from None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"--config: {path} is not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"--config: {path} must hold a mapping of sections (data, model, optim, train, distill, loss, val)"])
    data.pop("segments", None)  # a run's config.yaml: the history of its resumes (mmkd.training.run_folder)
    return _flatten(data)


def parse_cli_overrides(tokens: list[str], problems: list[str]) -> dict[str, Any]:
    """Parse `--a.b VALUE`, `--a.b=VALUE` and short aliases (`--lr 1e-4`) into dotted keys."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            problems.append(f"{tok}: unexpected argument; options look like --section.key VALUE")
            i += 1
            continue
        name, eq, value = tok[2:].partition("=")
        if not eq:
            if i + 1 < len(tokens) and not (tokens[i + 1].startswith("--") and len(tokens[i + 1]) > 2):
                value = tokens[i + 1]
                i += 1
            else:
                value = "true"  # a bare flag switches a boolean on
        key = FLAG_ALIASES.get(name, name.replace("-", "_") if "." not in name else _dash_key(name))
        if key in REPEATABLE:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
        i += 1
    return out


def _dash_key(name: str) -> str:
    section, _, key = name.partition(".")
    return f"{section}.{key.replace('-', '_')}"


# The metrics of validation pairs (mmkd.training.validation) that --val.keep_best may name.
PAIR_METRICS = ("val/clip_loss", "val/i2t_recall@1", "val/t2i_recall@1")


def check_val_config(val, problems: list[str]) -> None:
    """Config-time checks of the val section (named keys, values, fixes), added to `problems`."""
    if val.every < 0:
        problems.append(f"val.every: {val.every!r} is not allowed; use 0 (end of every epoch) or a step count")
    if val.encode_batch_size < 2:
        problems.append(f"val.encode_batch_size: {val.encode_batch_size!r} is not allowed; use 2 or more (the loss needs negatives)")
    metric = val.keep_best
    if not metric:
        return
    if metric.startswith("val/"):
        if not val.data:
            problems.append(f"val.keep_best: {metric!r} needs validation pairs; give --val.data PAIRS")
        elif metric not in PAIR_METRICS:
            problems.append(f"val.keep_best: {metric!r} is not a validation metric; choose one of "
                            f"{', '.join(PAIR_METRICS)}")
    elif metric.startswith("zero-shot/"):
        if not val.datasets:
            problems.append(f"val.keep_best: {metric!r} needs zero-shot datasets; give --val.datasets CATALOG")
    else:
        problems.append(f"val.keep_best: {metric!r} is not a validation metric; use one of {', '.join(PAIR_METRICS)}, "
                        f"zero-shot/mean_accuracy (or mean_auroc, mean_balanced_accuracy) or "
                        f"zero-shot/DATASET/accuracy")


def validate(cfg: Config, stage: str = "pretrain") -> list[str]:
    """Every problem of a resolved config, each naming the key, the value and what is allowed."""
    problems: list[str] = []

    def check(key: str, ok: bool, allowed: str):
        if not ok:
            section, name = key.split(".")
            problems.append(f"{key}: {getattr(getattr(cfg, section), name)!r} is not allowed; {allowed}")

    for key, choices in CHOICES.items():
        section, name = key.split(".")
        check(key, getattr(getattr(cfg, section), name) in choices, f"choose one of {', '.join(choices)}")
    check("data.path", bool(cfg.data.path), "give the training data with --data PATH (CSV, JSONL or .tar shards)")
    check("data.num_workers", cfg.data.num_workers >= 0, "use 0 or more")
    check("data.shuffle_buffer", cfg.data.shuffle_buffer >= 1, "use 1 (no shuffling within shards) or more")
    check("data.open_shards", 1 <= cfg.data.open_shards <= MAX_OPEN_SHARDS,
          f"use 1 (one shard at a time) to {MAX_OPEN_SHARDS} (the shard files a loader process keeps open)")
    check("data.index_workers", cfg.data.index_workers >= 0, "use 0 (all cores) or more")
    check("data.max_skipped_fraction", 0.0 <= cfg.data.max_skipped_fraction <= 1.0, "use a fraction in [0, 1]")
    check("data.crop_scale_min", 0.0 < cfg.data.crop_scale_min <= 1.0, "use a fraction in (0, 1] (the authors': 0.9)")
    check("model.name", bool(cfg.model.name) or stage == "distill",  # distill: the --init run's own model
          "give a model name or config file with --model")
    if cfg.model.init and cfg.model.image_init:
        problems.append(f"model.image_init: {cfg.model.image_init!r} is not allowed together with model.init "
                        f"({cfg.model.init!r}): --init loads the whole student; drop one of them")
    check("model.context_length", cfg.model.context_length >= 0, "use 0 (model default) or a positive length")
    check("optim.lr", 0 < cfg.optim.lr < 1e30, "use a positive learning rate below 1e30 (larger ones overflow the "
          "optimiser's float32 arithmetic)")
    check("optim.weight_decay", cfg.optim.weight_decay >= 0, "use 0 or more")
    check("optim.beta1", 0 <= cfg.optim.beta1 < 1, "use a value in [0, 1)")
    check("optim.beta2", 0 <= cfg.optim.beta2 < 1, "use a value in [0, 1)")
    check("optim.eps", cfg.optim.eps > 0, "use a positive value")
    check("optim.warmup_steps", cfg.optim.warmup_steps >= 0, "use 0 or more")
    check("optim.min_lr_ratio", 0 <= cfg.optim.min_lr_ratio <= 1, "use a fraction in [0, 1]")
    check("optim.grad_clip", cfg.optim.grad_clip >= 0, "use 0 (off) or a positive norm")
    check("train.epochs", cfg.train.epochs >= 1, "use 1 or more")
    check("train.max_steps", cfg.train.max_steps >= 0, "use 0 (all epochs) or a positive step count")
    check("train.batch_size", cfg.train.batch_size >= 2, "use 2 or more (contrastive loss needs negatives)")
    check("train.accum_steps", cfg.train.accum_steps >= 1, "use 1 or more")
    check("train.batch_size_per_process", cfg.train.batch_size_per_process >= 0, "use 0 (train.batch_size is "
          "global) or a per-process batch")
    if cfg.train.batch_size_per_process > 0 and cfg.train.accum_steps >= 1 \
            and cfg.train.batch_size_per_process % cfg.train.accum_steps:
        problems.append(f"train.batch_size_per_process: {cfg.train.batch_size_per_process} is not divisible by "
                        f"train.accum_steps ({cfg.train.accum_steps}); choose a multiple of it")
    if cfg.train.batch_size >= 2 and cfg.train.accum_steps >= 1 and cfg.train.batch_size % cfg.train.accum_steps:
        problems.append(
            f"train.batch_size: {cfg.train.batch_size} is not divisible by train.accum_steps "
            f"({cfg.train.accum_steps}); choose a batch size that is a multiple of it"
        )
    check("train.log_every", cfg.train.log_every >= 1, "use 1 or more")
    check("train.save_every", cfg.train.save_every >= 0, "use 0 (epoch ends only) or a positive step count")
    check("train.keep_checkpoints", cfg.train.keep_checkpoints >= 1, "use 1 or more")
    check("train.max_bad_steps", cfg.train.max_bad_steps >= 1, "use 1 or more")
    check_val_config(cfg.val, problems)
    if stage == "distill":
        check("distill.store", bool(cfg.distill.store), "give the feature store with --store PATH")
        for key in ("lambda_fd", "lambda_icl", "lambda_kl", "lambda_decision"):
            check(f"distill.{key}", getattr(cfg.distill, key) >= 0, "use 0 (off) or a positive weight")
        check("distill.icl_temperature", cfg.distill.icl_temperature > 0, "use a positive temperature")
        check("distill.kl_temperature", cfg.distill.kl_temperature > 0, "use a positive temperature")
        check("distill.decision_temperature", cfg.distill.decision_temperature > 0, "use a positive temperature")
        check("distill.decision_batch_size", cfg.distill.decision_batch_size >= 0, "use 0 (pair batch) or more")
        if cfg.distill.lambda_decision > 0 or cfg.distill.target_space == "decision":
            check("data.image_only_path", bool(cfg.data.image_only_path),
                  "decision distillation needs --data.image_only_path IMAGES.csv (columns image, modality)")
            check("distill.decision_vocab", bool(cfg.distill.decision_vocab),
                  "decision distillation needs --distill.decision_vocab VOCAB.yaml (modality -> classnames, templates)")
        if cfg.distill.icl_form == "paper" and cfg.distill.target_space == "adaptor" and cfg.distill.lambda_icl > 0:
            problems.append("distill.icl_form: 'paper' is not allowed with distill.target_space 'adaptor' (one "
                            "similarity matrix across teachers needs every target in the student's space, and adaptor "
                            "targets stay in each teacher's own); use --distill.icl_form mmkd or --distill.target_space "
                            "projection")
        if cfg.distill.policy == "modality" and not cfg.distill.modality_routes:
            problems.append("distill.modality_routes: {} is not allowed; policy 'modality' needs a mapping "
                            "modality -> [teachers] (set it in the YAML recipe)")
    return problems


def build_config(config_file: str | None, cli_tokens: list[str], stage: str = "pretrain",
                 base: dict[str, Any] | None = None) -> Config:
    """Defaults -> `base` -> YAML recipe -> command line, then validate; raise ConfigError listing all problems."""
    cfg = Config()
    problems: list[str] = []
    if base:
        apply_overrides(cfg, base, problems, "defaults")
    if config_file:
        try:
            apply_overrides(cfg, load_yaml(config_file), problems, str(config_file))
        except ConfigError as e:  # an unreadable recipe is one problem among the others
            problems += e.problems
    apply_overrides(cfg, parse_cli_overrides(cli_tokens, problems), problems)
    # Values that could not be parsed kept their defaults; validation must not report those defaults
    # (nor checks that involve them) as if the user had set them.
    unparsed = {p.split(":", 1)[0].split(" ", 1)[0] for p in problems}
    problems += [p for p in validate(cfg, stage) if not any(key in p for key in unparsed)]
    if problems:
        raise ConfigError(problems)
    return cfg


def resolve_batch_size(cfg: Config, world_size: int) -> tuple[Config, str]:
    """The config with train.batch_size global: per-process batch x processes when batch_size_per_process is set.

    Returns the config (a copy when changed) and a line saying what was resolved ("" when nothing was).
    """
    per_process = cfg.train.batch_size_per_process
    if per_process <= 0:
        return cfg, ""
    total = per_process * world_size
    note = (f"train.batch_size_per_process {per_process} x {world_size} process(es) = global batch {total}"
            + (f" (train.batch_size {cfg.train.batch_size} is not used)" if cfg.train.batch_size != total else ""))
    train = dataclasses.replace(cfg.train, batch_size=total)
    return dataclasses.replace(cfg, train=train), note


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    cfg = Config()
    problems: list[str] = []
    apply_overrides(cfg, _flatten(d), problems, "saved config")
    if problems:
        raise ConfigError(problems)
    return cfg


def save_yaml(cfg: Config, path: str | Path) -> None:
    from mmkd.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = [
    "Config", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "DistillConfig",
    "build_config", "validate", "to_dict", "from_dict", "save_yaml", "load_yaml", "apply_overrides",
    "field_docs", "field_defaults",
]
