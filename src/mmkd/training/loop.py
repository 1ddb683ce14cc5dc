"""One training loop for both stages: `fit(cfg, task)`.

A `Task` supplies the trainable module (the student, plus any heads) and the loss; the loop
owns everything else: data order, accumulation, mixed precision, DDP, clipping, the lr rule,
non-finite-loss handling, logging, checkpoints, resume and the final summary.

Position bookkeeping: `step` counts global batches consumed (optimiser steps attempted). The
data position follows from it — epoch = step // steps_per_epoch — so a resumed run reads the
same samples in the same order as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mmkd.config import Config, resolve_batch_size, to_dict
from mmkd.data.loader import batch_sampler, check_decode, epoch_loader, gpu_decode_settings, training_dataset
from mmkd.data.pairs import Batch, collate_pairs
from mmkd.errors import DataError, UsageError
from mmkd.models.student import Student, build_transforms, create_student, describe_towers
from mmkd.models.text import BatchTokenizer
from mmkd.training import checkpoint as ckpt_io
from mmkd.training.accumulate import MicroBatch, StepGradients
from mmkd.training.augment import SeededSamples
from mmkd.training.optim import build_optimizer, lr_at, set_lr
from mmkd.training.precision import autocast_context
from mmkd.training.inputs import check_resume_inputs, init_summary, run_inputs
from mmkd.training.run_folder import check_out_folder, finished_run, remove_owned, write_config
from mmkd.training.targets import CollateWithTargets
from mmkd.training.telemetry import MetricsLogger, Throughput
from mmkd.training.validation import Validator
from mmkd.utils import dist as dist_utils
from mmkd.utils.io import atomic_write_json
from mmkd.utils.locks import writer_lock
from mmkd.utils.runs import is_own_checkpoint
from mmkd.utils.signals import StopFlag


class Task(Protocol):
    """What a training stage defines. `module` is what gets optimised (and wrapped in DDP)."""

    name: str
    module: torch.nn.Module

    def losses(self, outputs: dict[str, torch.Tensor], batch: Batch | None, rank: int, world_size: int,
               targets: Any = None) -> dict[str, torch.Tensor]:
        """Named loss terms over the whole step's batch; the weighted total is under "loss". The loop passes
        `targets` (what `prepare` returned for each micro-batch, concatenated) and no batch."""

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules saved beside the student (extra.safetensors)."""

    def checkpoint_info(self) -> dict[str, Any]:
        """Extra JSON saved in train_state.json (e.g. the teachers of a distillation)."""

    # Optional hooks: set_epoch(epoch); extra_inputs(micro_position, dist_info, device) -> kwargs for the
    # module's forward; target_reader(batch) -> host targets, run in the loader's workers (see targets.py);
    # prepare(batch, host_targets) -> per-row loss targets on the device (dicts of tensors/arrays, concatenated
    # over a step's micro-batches), called after extra_inputs and before the forward. Outputs "image", "text"
    # and "head_*" are per pair sample; `shared_outputs` names those that are not per row (accumulate.py).


@dataclass
class RunState:
    step: int = 0
    num_optimizer_steps: int = 0
    num_samples_seen: int = 0
    num_bad_steps: int = 0
    consecutive_bad_steps: int = 0
    skipped: Counter = field(default_factory=Counter)
    last_loss: float = float("nan")
    terms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "num_optimizer_steps": self.num_optimizer_steps,
                "num_samples_seen": self.num_samples_seen, "num_bad_steps": self.num_bad_steps,
                "consecutive_bad_steps": self.consecutive_bad_steps, "skipped": dict(self.skipped),
                "last_loss": self.last_loss}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunState:
        return cls(step=d["step"], num_optimizer_steps=d["num_optimizer_steps"],
                   num_samples_seen=d["num_samples_seen"], num_bad_steps=d["num_bad_steps"],
                   consecutive_bad_steps=d.get("consecutive_bad_steps", 0), skipped=Counter(d.get("skipped", {})),
                   last_loss=d.get("last_loss", float("nan")))


def resolve_resume(cfg: Config) -> Path | None:
    resume = cfg.train.resume
    if not resume:
        return None
    if resume == "latest":
        return ckpt_io.latest_checkpoint(cfg.train.out)  # none yet: start fresh
    path = Path(resume)
    if not (path / ckpt_io.STATE_FILE).is_file():
        raise UsageError(f"--resume: {resume!r} is not a checkpoint folder (no {ckpt_io.STATE_FILE}); "
                         f"use 'latest' or a RUN/checkpoints/step_* folder")
    return path


def own_resume_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint a resume continues when it is one of this run's own (`--resume latest`, or a
    RUN/checkpoints/step_* of the same --out); None for a fresh start or another run's checkpoint."""
    resume_from = resolve_resume(cfg)
    return resume_from if resume_from is not None and is_own_checkpoint(resume_from, Path(cfg.train.out)) else None


def student_of_checkpoint(ckpt: Path, cfg: Config, saved: dict[str, Any]) -> Student:
    """The student of a run resumed from its own checkpoint, built from that checkpoint's model config and the
    Hugging Face text files it carries; `load_checkpoint` then loads its weights. What the run started from
    (--init, a stage-1 run that trains on or was cleaned up, --model.image_init, the text tower's weights) is
    not read again, so a requeued job does not depend on it: the checkpoint's weights replace it anyway."""
    from mmkd.utils.io import read_json

    try:
        model_cfg = read_json(ckpt / ckpt_io.CONFIG_FILE)["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"checkpoint {ckpt}: {ckpt_io.CONFIG_FILE} is unreadable ({e}); resume from an earlier "
                         f"checkpoint with --resume RUN/checkpoints/step_*") from None
    text = model_cfg.get("text_cfg", {})
    recorded = text.get("hf_model_name") or ""
    hf_folder = ""
    if "hf_model_name" in text:  # the folder given now, the one the run started from, or the checkpoint's copy
        hf_folder = next((str(p) for p in (cfg.model.hf_text_path, recorded, str(ckpt))
                          if p and (Path(p) / "config.json").is_file()), "")
    student = create_student(str(ckpt / ckpt_io.CONFIG_FILE), hf_text_path=hf_folder, seed=cfg.train.seed,
                             text_pretrained=False)
    if hf_folder == str(ckpt):  # later checkpoints record where the text tower came from (and carry its files),
        # not this folder, which pruning removes
        student.model_cfg["text_cfg"].update(hf_model_name=recorded, hf_tokenizer_name=text.get("hf_tokenizer_name",
                                                                                                recorded))
    student.source = saved.get("source") or {"name": saved.get("config", {}).get("model", {}).get("name"),
                                             **({"init": saved["inputs"]["init"]}
                                                if (saved.get("inputs") or {}).get("init") else {})}
    return student


def hf_text_files(student: Student, run_dir: Path) -> str | None:
    """Where a checkpoint copies the student's Hugging Face text files from (config.json, tokenizer), so that it
    loads, exports and resumes without the folder the run started from: that folder, or when it is gone, the
    run's newest checkpoint, which carries them. None for an open_clip text tower."""
    name = student.model_cfg.get("text_cfg", {}).get("hf_model_name")
    if not name:
        return None
    if (Path(name) / "config.json").is_file():
        return str(name)
    newest = ckpt_io.latest_checkpoint(run_dir)
    return str(newest) if newest is not None and (newest / "config.json").is_file() else None


def check_resume_compatible(saved: dict[str, Any], cfg: Config) -> None:
    """Refuse a resume whose model or data order would differ from the saved run. Data given under another path
    (moved or copied) is compared by its samples' digest once indexed (`check_resume_inputs`), when the
    checkpoint recorded one."""
    old = saved.get("config", {})
    by_digest = bool(((saved.get("inputs") or {}).get("data") or {}).get("sample_ids_sha256"))
    problems = []
    for section, key in (("model", "name"), ("model", "context_length"), ("train", "batch_size"),
                         ("train", "accum_steps"), ("train", "seed"), ("data", "path")):
        a, b = old.get(section, {}).get(key), getattr(getattr(cfg, section), key)
        if key == "path" and a is not None and (by_digest or _same_path(a, b)):  # ./data/x.csv is data/x.csv
            continue
        if a is not None and a != b:
            problems.append(f"{section}.{key}: the checkpoint has {a!r}, this run {b!r}")
    if problems:
        raise UsageError("cannot resume with a different configuration: " + "; ".join(problems)
                         + ". Use the saved run's settings or start a new --out folder")


def _same_path(a: str, b: str) -> bool:
    import os

    return a == b or os.path.realpath(a) == os.path.realpath(b)


def check_resume_task(saved: dict[str, Any], task) -> None:
    """Refuse to resume another stage's checkpoint, or a distillation whose teachers or target space changed."""
    old_task = saved.get("task")
    if old_task is not None and old_task != task.name:
        raise UsageError(f"--resume: the checkpoint belongs to a {old_task!r} run, this is {task.name!r}; start "
                         f"from it with --init instead, in a new --out folder")
    if not hasattr(task, "checkpoint_info") or isinstance(task, type):  # only the stage is known yet
        return
    old, new = saved.get("distill") or {}, task.checkpoint_info().get("distill") or {}
    problems = []
    for key in ("target_space", "teachers"):
        a, b = old.get(key), new.get(key)
        if key == "teachers" and a is not None and b is not None:
            a = [(t.get("name"), t.get("embed_dim")) for t in a]
            b = [(t.get("name"), t.get("embed_dim")) for t in b]
        if a is not None and b is not None and a != b:
            problems.append(f"distill.{key}: the checkpoint has {a!r}, this run {b!r}")
    if problems:
        raise UsageError("cannot resume this distillation: " + "; ".join(problems) + ". Use the feature store and "
                         "settings of the saved run, or start a new --out folder")


class StorageError(UsageError):
    """The run folder cannot be written (disk full, quota, read-only); printed without a traceback."""

    exit_code = 1


class NonFiniteWeightsError(DataError):
    """The weights hold NaN or inf: nothing is saved, the run stops naming the last finite checkpoint."""


def _nonfinite_weights(model: torch.nn.Module, extra_modules: dict[str, torch.nn.Module]) -> list[str]:
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    for name, m in (extra_modules or {}).items():
        tensors.update({f"{name}.{k}": v.detach() for k, v in m.state_dict().items()})
    return ckpt_io.nonfinite_tensors(tensors)


def _refuse_nonfinite_checkpoint(ckpt: Path, model: torch.nn.Module, extra_modules) -> None:
    bad = _nonfinite_weights(model, extra_modules)
    if not bad:
        return
    earlier = ckpt_io.last_finite_checkpoint(ckpt.parent.parent, before=ckpt)
    go_on = (f"resume from the last finite one with --resume {earlier} (and a lower --lr)" if earlier is not None
             else "no earlier finite checkpoint exists; start over with --overwrite and a lower --lr")
    raise UsageError(f"--resume: checkpoint {ckpt} holds weights that are not finite (NaN or inf in {len(bad)} "
                     f"tensor(s), e.g. {', '.join(bad[:3])}); {go_on}")


# Test-only: MMKD_TEST_NAN_AT_STEPS="3,4" makes the loss of those (0-based) steps NaN, so the
# reliability tests exercise the real non-finite-step path without mocks. Read once per fit().
_TEST_NAN_ENV = "MMKD_TEST_NAN_AT_STEPS"


def _test_nan_steps(env: str = _TEST_NAN_ENV) -> set[int]:
    import os

    return {int(x) for x in os.environ.get(env, "").split(",") if x.strip()}


# Test-only: MMKD_TEST_NAN_WEIGHTS_AT_STEPS="3" puts a NaN into the first weight after the optimiser step of those
# (0-based) steps, as an overflowing update would, so the tests exercise the real non-finite-weights path.
_TEST_NAN_WEIGHTS_ENV = "MMKD_TEST_NAN_WEIGHTS_AT_STEPS"


def fit(cfg: Config, make_task, student: Student | None = None) -> dict[str, Any]:
    """Train `make_task(student, cfg, device, records=...)` under `cfg`; returns the summary (also RUN/summary.json).

    `records` are the training data's PairRecords (the same the loop reads), so a task needs no second index pass.
    """
    device_type = dist_utils.pick_device(cfg.train.device)
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--train.device: 'cuda' was asked for but no GPU is visible; use --device cpu or auto")
    info = dist_utils.init_distributed(device_type)
    device = torch.device(f"cuda:{info.local_rank}" if device_type == "cuda" else "cpu")
    cfg, batch_note = resolve_batch_size(cfg, info.world_size)
    if batch_note and info.is_main:
        print(f"mmkd {getattr(make_task, 'name', None) or 'pretrain'}: {batch_note}", file=sys.stderr)
    micro_global = cfg.train.batch_size // cfg.train.accum_steps
    if micro_global % info.world_size:
        raise UsageError(f"--train.batch_size: {cfg.train.batch_size} / accum_steps {cfg.train.accum_steps} = "
                         f"{micro_global} is not divisible by the {info.world_size} processes; pick a multiple")
    run_dir = Path(cfg.train.out)
    command = getattr(make_task, "name", None) or "pretrain"
    # A resume is checked before anything is written or loaded: an incompatible one leaves the run as it was.
    # Only rank 0 looks at and writes the folder; its verdict reaches every rank.
    lock = contextlib.ExitStack()
    error = None
    resume_from = saved = None
    if info.is_main:
        try:
            check_out_folder(run_dir, cfg.train.resume, cfg.train.overwrite)
            if student is None:
                _check_model_folder(cfg, command)
            resume_from = resolve_resume(cfg)
            saved = ckpt_io.read_train_state(resume_from) if resume_from is not None else None
            if saved is not None:
                check_resume_compatible(saved, cfg)
            if saved is not None and getattr(make_task, "name", None):
                check_resume_task(saved, make_task)
            lock.enter_context(writer_lock(run_dir, "--out", "run folder", command=f"mmkd {command}"))
            if cfg.train.overwrite:
                removed = remove_owned(run_dir)
                if removed:
                    print(f"mmkd {command}: --overwrite: removed from {run_dir}: {', '.join(removed)}",
                          file=sys.stderr)
        except UsageError as e:
            lock.close()
            error = e
    _agree(error, info)
    finished = finished_run(run_dir, cfg, command)  # a requeued job of a finished run: nothing to do or write
    if finished is not None:
        lock.close()
        return finished
    if not info.is_main:
        resume_from = resolve_resume(cfg)
        saved = ckpt_io.read_train_state(resume_from) if resume_from is not None else None
    with lock:
        return _fit(cfg, make_task, student, info, device_type, device, micro_global, run_dir, command,
                    resume_from, saved)


def _check_model_folder(cfg: Config, command: str) -> None:
    """A --model folder with a config but no loadable weights would build a random model: refused, unless
    --init gives the weights, or a pretraining names the folder for its architecture (and says so)."""
    from mmkd.utils.runs import CONFIG_FILE, require_weights

    folder = Path(cfg.model.name.removeprefix("local-dir:"))
    if cfg.model.init or not folder.is_dir() or (command == "pretrain" and (folder / CONFIG_FILE).is_file()):
        return
    if (folder / CONFIG_FILE).is_file() or (folder / "checkpoints").is_dir():
        require_weights(folder, "--model")


def _agree(error: UsageError | None, info) -> None:
    """Rank 0's refusal (or None) reaches every rank, so that none waits forever at a collective."""
    if info.distributed:
        import torch.distributed as dist

        box = [None if error is None else (str(error), type(error).__name__)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and error is None:
            error = UsageError(box[0][0])
    if error is not None:
        raise error


def _fit(cfg: Config, make_task, student, info, device_type: str, device, micro_global: int, run_dir: Path,
         command: str, resume_from: Path | None, saved: dict[str, Any] | None) -> dict[str, Any]:
    check_decode(cfg.data, device_type)
    # Every RNG the process holds is a function of the seed, so a run's RNG state (saved in each checkpoint)
    # does not depend on what the process did before.
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2 ** 32)
    if student is None and resume_from is not None and saved is not None and is_own_checkpoint(resume_from, run_dir):
        student = student_of_checkpoint(resume_from, cfg, saved)
        if info.is_main:
            print(f"mmkd {command}: init: the student of {resume_from} (resuming; what the run started from is not "
                  f"read again)", file=sys.stderr)
    if student is None:
        student = create_student(cfg.model.name, cfg.model.init, cfg.model.hf_text_path, cfg.model.context_length,
                                 seed=cfg.train.seed, image_init=cfg.model.image_init,
                                 image_init_logit_scale=cfg.model.image_init_logit_scale,
                                 text_pretrained=cfg.model.text_pretrained)
        if info.is_main:  # what each tower starts from: a checkpoint, pretrained weights, or random
            for line in describe_towers(student.source):
                print(f"mmkd {command}: init: {line}", file=sys.stderr)
    if cfg.model.grad_checkpointing:
        student.model.set_grad_checkpointing(True)
    train_transform = build_transforms(student.preprocess_cfg, cfg.data.augment, cfg.data.crop_scale_min)[0]
    dataset, index_skips = training_dataset(cfg.data, train_transform, progress=cfg.train.progress and info.is_main)
    dataset = SeededSamples(dataset, cfg.train.seed)
    task = make_task(student, cfg, device, records=dataset.records)
    module = task.module.to(device)

    sampler = batch_sampler(dataset.records, micro_global, info.rank, info.world_size, cfg.train.seed, cfg.data)
    steps_per_epoch = sampler.batches_per_epoch // cfg.train.accum_steps
    if steps_per_epoch == 0:
        raise UsageError(f"--batch-size: {cfg.train.batch_size} is larger than the dataset ({len(dataset)} samples); "
                         f"use a smaller batch")
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    optimizer = build_optimizer(module, cfg.optim, device_type)
    # Shard-level problems found while indexing are counted once, on rank 0.
    state = RunState(skipped=Counter(index_skips) if info.is_main else Counter())
    inputs = run_inputs(cfg, dataset.records, task, run_dir, resume_from, saved)  # data, alignment, init by digest
    if saved is not None and resume_from is not None:
        check_resume_task(saved, task)
        check_resume_inputs(saved, inputs, resume_from)
        saved = ckpt_io.load_checkpoint(resume_from, student.model, optimizer, task.extra_modules(), restore_rng=True)
        _refuse_nonfinite_checkpoint(resume_from, student.model, task.extra_modules())
        state = RunState.from_json(saved["run_state"])
        if not info.is_main:  # rank 0 carries the merged skip counts of the saved run
            state.skipped = Counter()
    if info.is_main:  # written once every check has passed: a refused resume leaves the run folder as it was
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir, cfg, state.step if resume_from is not None else 0)
        except OSError as e:
            raise StorageError(f"--out: cannot write the run folder {run_dir}: {e.strerror or e}; free space or "
                               f"choose another --out") from None
    module = module.to(device)
    train_module: torch.nn.Module = module
    if info.distributed:
        train_module = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[info.local_rank] if device_type == "cuda" else None)
    if cfg.train.compile:
        train_module = torch.compile(train_module)

    validator, error = None, None
    try:  # rank 0 reads the validation data; its refusal reaches every rank
        validator = Validator(cfg, student, run_dir, info, device, resumed=resume_from is not None)
    except UsageError as e:
        error = e
    _agree(error, info)
    assert validator is not None
    logger = MetricsLogger(run_dir, enabled=info.is_main)
    throughput = Throughput()
    # Captions are tokenized in the loader's workers, padded to each batch's longest caption.
    text_batcher = BatchTokenizer(student.tokenizer, student.model, cfg.model.pad_to_longest,
                                  32 if cfg.train.compile else 8)
    collate: Any = functools.partial(collate_pairs, tokenize=text_batcher)
    reader = getattr(task, "target_reader", None)
    if reader is not None:  # stage 2: teacher targets read in the loader's workers, delivered with the batch
        collate = CollateWithTargets(collate, reader)
    size = student.preprocess_cfg["size"]
    image_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    def save(reason: str) -> Path | None:
        path = None
        bad = _nonfinite_weights(student.model, task.extra_modules())
        if not _all_finite(float("nan") if bad else 0.0, info.world_size, device):
            last = ckpt_io.last_finite_checkpoint(run_dir)
            go_on = (f"The last finite checkpoint is {last}: resume from it with a lower learning rate "
                     f"(`--resume {last} --lr ...`)" if last is not None else
                     "No finite checkpoint exists: start over with a lower --lr (--overwrite)")
            raise NonFiniteWeightsError(
                f"the weights are not finite at step {state.step} (NaN or inf in {len(bad) or 'some'} tensor(s), e.g. "
                f"{', '.join(bad[:3]) or 'on another rank'}); no checkpoint was written for this step. {go_on}")
        run_state = state.to_json()
        run_state["skipped"] = _merged_skips(state.skipped, info.world_size)
        if info.is_main:
            path = ckpt_io.save_checkpoint(
                run_dir, state.step, student.model, student.open_clip_config(), optimizer,
                {"run_state": run_state, "config": to_dict(cfg), "reason": reason, "task": task.name,
                 "inputs": inputs, "source": student.source, **task.checkpoint_info()},
                extra_modules=task.extra_modules(), keep=cfg.train.keep_checkpoints,
                tokenizer_dir=hf_text_files(student, run_dir))
        dist_utils.barrier()
        return path

    progress = None
    if info.is_main and cfg.train.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state.step, desc=f"{task.name}", unit="step", dynamic_ncols=True)

    stopped_by_signal: str | bool = False
    nan_steps = _test_nan_steps()
    nan_weight_steps = _test_nan_steps(_TEST_NAN_WEIGHTS_ENV)
    module.train()
    with StopFlag() as stop:
        while state.step < total_steps:
            epoch, step_in_epoch = divmod(state.step, steps_per_epoch)
            sampler.set_position(epoch, step_in_epoch * cfg.train.accum_steps)
            dataset.epoch = epoch
            if hasattr(task, "set_epoch"):
                task.set_epoch(epoch)
            loader = epoch_loader(dataset, sampler, collate, cfg.data.num_workers, cfg.train.seed, epoch,
                                  pin_memory=device_type == "cuda",
                                  gpu_decode=gpu_decode_settings(cfg.data, student.preprocess_cfg, device))
            batches = iter(loader)
            while state.step < total_steps and (state.step // steps_per_epoch) == epoch:
                lr = lr_at(state.step, total_steps, cfg.optim)
                set_lr(optimizer, lr)
                optimizer.zero_grad(set_to_none=True)
                step_samples = 0
                no_sync = train_module.no_sync if info.distributed else contextlib.nullcontext
                grads = StepGradients(train_module, task, cfg.train.accum_steps, info.rank, info.world_size,
                                      lambda: autocast_context(device_type, cfg.train.precision), no_sync, device)
                for micro in range(cfg.train.accum_steps):
                    # Only the time inside next() is data wait: mark its start, then count it once the
                    # batch is here (the previous micro-batch's compute must not count as waiting).
                    throughput.computed(0)
                    batch, host_targets = next(batches) if reader is not None else (next(batches), None)
                    throughput.waited()
                    state.skipped.update(batch.skipped)
                    _check_skip_fraction(state, cfg)
                    grads.add(_micro_batch(task, batch, host_targets, state.step * cfg.train.accum_steps + micro,
                                           info, device, text_batcher, image_hw))
                    step_samples += len(batch)
                terms = grads.backward(poison_loss=state.step in nan_steps)  # nan_steps: see _test_nan_steps
                # One host sync for every logged term (not one per term); the terms are the whole step's.
                values = torch.stack([v.detach().float().reshape(()) for v in terms.values()]).tolist()
                terms_sum = dict(zip(terms, values))
                finite = _all_finite(terms_sum["loss"], info.world_size, device)
                if finite:
                    if cfg.optim.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    if state.step in nan_weight_steps:  # test-only hook, see _TEST_NAN_WEIGHTS_ENV
                        with torch.no_grad():
                            next(module.parameters()).view(-1)[0] = float("nan")
                    _clamp_logit_scale(student.model)
                    state.num_optimizer_steps += 1
                    state.consecutive_bad_steps = 0
                else:
                    optimizer.zero_grad(set_to_none=True)  # weights and optimiser state stay as they were
                    state.num_bad_steps += 1
                    state.consecutive_bad_steps += 1
                state.step += 1
                state.num_samples_seen += _global_count(step_samples, info.world_size, device)
                state.last_loss = terms_sum["loss"]
                state.terms = terms_sum
                throughput.computed(step_samples * info.world_size)
                if state.step % cfg.train.log_every == 0 or state.step == total_steps:
                    tp = throughput.summary()
                    logger.log(state.step, {**{f"loss/{k}": v for k, v in terms_sum.items()}, "lr": lr,
                                            "epoch": epoch, "samples_per_s": tp["samples_per_s"],
                                            "data_wait_fraction": tp["data_wait_fraction"],
                                            "logit_scale": float(_logit_scale(student.model))})
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{terms_sum['loss']:.4f}",
                                         sps=f"{throughput.summary()['samples_per_s']:.0f}")
                if state.consecutive_bad_steps >= cfg.train.max_bad_steps:
                    save("non-finite loss")
                    raise DataError(f"the loss was not finite for {state.consecutive_bad_steps} steps in a row "
                                    f"(train.max_bad_steps={cfg.train.max_bad_steps}); a checkpoint was saved at "
                                    f"step {state.step}. Lower --lr or check the data, then resume")
                end_of_epoch = state.step % steps_per_epoch == 0
                if validator.due(state.step, end_of_epoch, state.step == total_steps):
                    logger.log(state.step, validator.run(state.step))
                if (cfg.train.save_every and state.step % cfg.train.save_every == 0) or end_of_epoch \
                        or state.step == total_steps:
                    save("periodic" if not end_of_epoch else "epoch")
                if _stop_requested(stop, info.world_size):
                    save("signal")
                    stopped_by_signal = stop.name
                    break
            del batches, loader
            if stopped_by_signal:
                break
    if progress is not None:
        progress.close()
    logger.close()
    summary = _summary(state, throughput, total_steps, stopped_by_signal, task, info, device)
    summary["init"] = init_summary(student.source, inputs)  # what each tower started from, or the checkpoint
    if logger.lines_lost:
        summary["metrics_lines_lost"] = logger.lines_lost
    if info.is_main:
        try:
            atomic_write_json(run_dir / "summary.json", summary)
        except OSError as e:
            raise StorageError(f"could not write {run_dir / 'summary.json'}: {e.strerror or e}; the final checkpoint "
                               f"{ckpt_io.latest_checkpoint(run_dir)} is complete. Free space and rerun with "
                               f"--resume latest to write the summary") from None
    dist_utils.barrier()
    return summary


def _micro_batch(task, batch: Batch, host_targets, position: int, info, device, text_batcher,
                 image_hw) -> MicroBatch:
    """One micro-batch's forward inputs and loss targets (from what the loader read, `host_targets`), on the device.

    A micro-batch whose samples were all unreadable still runs one blank sample through the model (so every
    rank takes part in the collectives); its pair outputs are then dropped.
    """
    empty = len(batch) == 0
    images = torch.zeros(1, 3, *image_hw) if empty else batch.images
    tokens = text_batcher(["-"]) if empty else batch.tokens
    extra = {}
    if hasattr(task, "extra_inputs"):  # e.g. image-only samples of decision distillation
        extra = task.extra_inputs(position, info, device)
    targets = task.prepare(batch, host_targets) if hasattr(task, "prepare") else None  # copied during the forward
    return MicroBatch(images.to(device, non_blocking=True), tokens.to(device, non_blocking=True), extra, targets,
                      empty)


def _all_finite(value: float, world_size: int, device) -> bool:
    ok = math.isfinite(value)
    if world_size > 1:
        import torch.distributed as dist

        flag = torch.tensor([1.0 if ok else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item() > 0)
    return ok


def _global_count(n: int, world_size: int, device) -> int:
    if world_size == 1:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], device=device, dtype=torch.long)
    dist.all_reduce(t)
    return int(t.item())


def _stop_requested(stop: StopFlag, world_size: int) -> bool:
    """Whether any rank received a stop signal: every rank then stops after this same step. One all-reduce of
    the signal number per step; a rank that received none takes the other's (for the summary and exit code)."""
    if world_size == 1:
        return stop.requested
    signum = dist_utils.max_over_ranks(stop.signum if stop.requested else 0)
    if signum and not stop.requested:
        stop.requested, stop.signum = True, signum
    return bool(signum)


def _logit_scale(model) -> torch.Tensor:
    return model.logit_scale.detach().exp().mean()


@torch.no_grad()
def _clamp_logit_scale(model) -> None:
    model.logit_scale.clamp_(0, math.log(100))


def _check_skip_fraction(state: RunState, cfg: Config) -> None:
    skipped = sum(state.skipped.values())
    total = skipped + state.num_samples_seen
    if total >= 32 and skipped / total > cfg.data.max_skipped_fraction:
        raise DataError(
            f"{skipped} of {total} samples could not be read ({dict(state.skipped)}), more than "
            f"data.max_skipped_fraction={cfg.data.max_skipped_fraction}; fix the data or raise the cap")


def _merged_skips(skipped: Counter, world_size: int) -> dict[str, int]:
    """Sum the per-rank skip counters (each rank counts the samples it read)."""
    if world_size == 1:
        return dict(skipped)
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, dict(skipped))
    merged: Counter = Counter()
    for g in gathered:
        merged.update(g)
    return dict(merged)


def _summary(state: RunState, throughput: Throughput, total_steps: int, stopped: str | bool, task, info,
             device) -> dict:
    skipped = _merged_skips(state.skipped, info.world_size)
    tp = throughput.summary()
    return {
        "task": task.name,
        "num_steps": state.step,
        "num_optimizer_steps": state.num_optimizer_steps,
        "total_steps": total_steps,
        "completed": state.step >= total_steps,
        "stopped_by_signal": bool(stopped),
        "signal": stopped or None,
        "num_samples_seen": state.num_samples_seen,
        "num_skipped_samples": skipped,
        "num_skipped_total": sum(skipped.values()),
        "num_bad_steps": state.num_bad_steps,
        "final_loss": state.last_loss,
        "final_terms": state.terms,
        "samples_per_s": tp["samples_per_s"],
        "data_wait_fraction": tp["data_wait_fraction"],
        "wall_s": tp["wall_s"],
        "world_size": info.world_size,
    }

