"""Validation during training: held-out pairs and zero-shot, every N steps; the best checkpoint kept.

Legend: N validation pairs, D embedding dim.

- `--val.data PAIRS` (CSV, JSONL or shards, read with the training data's keys): the student's
  CLIP loss on them (the symmetric InfoNCE of `mmkd.losses.contrastive` over consecutive chunks of
  `val.encode_batch_size` pairs, at the current logit scale, averaged over pairs) as `val/clip_loss`, and
  `val/i2t_recall@1`, `val/t2i_recall@1` over the whole set;
- `--val.datasets CATALOG`: zero-shot classification on the catalog's zero-shot datasets, scored
  as `mmkd eval` scores it (no bootstrap), as `zero-shot/<dataset>/<metric>` and the means over
  datasets `zero-shot/mean_<metric>` (accuracy, balanced_accuracy, auroc).

Validation runs on rank 0 with the student in eval mode, between optimiser steps (`val.every`
steps, or at the end of every epoch and of the run), inside a forked RNG state so a run with
validation draws the same random numbers as one without. Its values go to metrics.jsonl and
TensorBoard like the training terms, with the time it took (`val/seconds`). With `--val.keep_best METRIC` the student of the best
validation so far (lowest for a loss, highest otherwise) is written to RUN/best/ (weights,
model config, best.json), which `--init RUN:best` loads.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmkd.errors import UsageError

BEST_DIR = "best"
BEST_FILE = "best.json"
ZERO_SHOT_MEANS = ("accuracy", "balanced_accuracy", "auroc")


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


def resolve_init(init: str) -> str:
    """`RUN:best` -> RUN/best (the kept best checkpoint); anything else unchanged."""
    if not init.endswith(":best"):
        return init
    run = Path(init[:-len(":best")])
    best = run / BEST_DIR
    if not (best / BEST_FILE).is_file():
        why = "is not a folder" if not run.is_dir() else "kept no best checkpoint"
        raise UsageError(f"--init: {init!r}: {str(run)!r} {why}; a run keeps one when trained with --val.keep_best "
                         f"METRIC (and --val.data or --val.datasets), or give --init {run} for its last checkpoint")
    return str(best)


class Validator:
    """Runs the validations a config asks for and keeps the best student. Build on every rank; only rank 0
    computes and writes, the others wait at the barrier."""

    def __init__(self, cfg, student, run_dir: Path, info, device: torch.device, resumed: bool):
        self.val, self.student, self.run_dir, self.info, self.device = cfg.val, student, run_dir, info, device
        self.precision, self.data_cfg = cfg.train.precision, cfg.data
        self.enabled = bool(cfg.val.data or cfg.val.datasets)
        self.pairs = self.entries = None
        self.best: dict[str, Any] | None = None
        if not self.enabled or not info.is_main:
            return
        if cfg.val.data:
            from mmkd.data.pairs import PairDataset

            data_cfg = dataclasses.replace(cfg.data, path=cfg.val.data, format="auto", select=[], license="",
                                           image_only_path="")
            try:
                self.pairs, _ = PairDataset.from_config(data_cfg, student.eval_transform, progress=False)
            except UsageError as e:
                raise UsageError(str(e).replace("--data", "--val.data", 1)) from None
        if cfg.val.datasets:
            self.entries = self._zero_shot_entries(cfg.val)
        best_file = run_dir / BEST_DIR / BEST_FILE
        if resumed and best_file.is_file():
            from mmkd.utils.io import read_json

            saved = read_json(best_file)
            if saved.get("metric") == cfg.val.keep_best:
                self.best = saved

    @staticmethod
    def _zero_shot_entries(val) -> list:
        from mmkd.evaluation.runner import load_catalog

        entries = [e for e in load_catalog(val.datasets) if "zero-shot" in e.tasks and (not val.only or e.name in val.only)]
        present = [e for e in entries if e.path.exists()]
        if not present:
            raise UsageError(f"--val.datasets: {val.datasets!r} has no zero-shot dataset on disk"
                             + (f" among --val.only {','.join(val.only)}" if val.only else "")
                             + "; prepare one (`mmkd datasets check`) or drop --val.datasets")
        metric = val.keep_best
        if metric.startswith("zero-shot/") and not metric.startswith("zero-shot/mean_"):
            name = metric.split("/")[1]
            if name not in {e.name for e in present}:
                raise UsageError(f"--val.keep_best: {metric!r} names dataset {name!r}, which is not a zero-shot "
                                 f"dataset on disk in {val.datasets}; it has {', '.join(e.name for e in present)}")
        return present

    def due(self, step: int, end_of_epoch: bool, last: bool) -> bool:
        if not self.enabled:
            return False
        return (step % self.val.every == 0) if self.val.every else (end_of_epoch or last)

    def run(self, step: int) -> dict[str, float]:
        """Validate the current student (rank 0), keep the best; returns the values to log ({} on other ranks)."""
        from mmkd.utils import dist as dist_utils

        values: dict[str, float] = {}
        started = time.perf_counter()
        if self.info.is_main:
            model = self.student.model
            was_training = model.training
            py_state, np_state = random.getstate(), np.random.get_state()
            devices = [self.device] if self.device.type == "cuda" else []
            try:
                with torch.random.fork_rng(devices=devices), torch.no_grad():
                    values = self._compute()
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
                model.train(was_training)
            if self.val.keep_best:
                self._keep_best(step, values)
            values["val/seconds"] = time.perf_counter() - started
        dist_utils.barrier()
        return values

    def _encoder(self):
        from mmkd.models.adapter import OpenClipEncoder

        return OpenClipEncoder(self.student.model, self.student.eval_transform, self.student.tokenizer,
                               name="validation", device=self.device)

    def _compute(self) -> dict[str, float]:
        from mmkd.training.precision import autocast_context

        encoder = self._encoder()
        values: dict[str, float] = {}
        with autocast_context(self.device.type, self.precision):
            if self.pairs is not None:
                values.update(self._pair_metrics(encoder))
            if self.entries is not None:
                values.update(self._zero_shot(encoder))
        return values

    def _pair_metrics(self, encoder) -> dict[str, float]:
        import torch.nn.functional as F

        from mmkd.data.pairs import collate_pairs
        from mmkd.evaluation.metrics import retrieval_metrics
        from mmkd.losses.contrastive import clip_loss

        loader = torch.utils.data.DataLoader(self.pairs, batch_size=self.val.encode_batch_size, shuffle=False,
                                             collate_fn=collate_pairs, num_workers=self.data_cfg.num_workers)
        images, texts = [], []
        for batch in loader:
            if len(batch):
                images.append(encoder.encode_image(batch.images).float().cpu())
                texts.append(encoder.encode_text(batch.captions).float().cpu())
        if not images:
            raise UsageError(f"--val.data: no sample of {self.val.data} could be read")
        image_ND, text_ND = F.normalize(torch.cat(images), dim=-1), F.normalize(torch.cat(texts), dim=-1)
        scale = self.student.model.logit_scale.exp().float().cpu()
        total, count = 0.0, 0
        for start in range(0, len(image_ND), self.val.encode_batch_size):
            rows = slice(start, start + self.val.encode_batch_size)
            n = len(image_ND[rows])
            if n >= 2:
                total += clip_loss(image_ND[rows], text_ND[rows], scale)["clip"].item() * n
                count += n
        recall = retrieval_metrics((image_ND @ text_ND.T).numpy(), np.arange(len(image_ND)), ks=(1,))
        out = {"val/i2t_recall@1": recall["i2t_recall@1"], "val/t2i_recall@1": recall["t2i_recall@1"]}
        if count:
            out["val/clip_loss"] = total / count
        return out

    def _zero_shot(self, encoder) -> dict[str, float]:
        import warnings

        from mmkd.evaluation.runner import FeatureCache, evaluate

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = evaluate(encoder, self.entries, ["zero-shot"], None, num_bootstrap=0,
                               cache=FeatureCache(None, batch_size=self.val.encode_batch_size), model_name="validation")
        out: dict[str, float] = {}
        for r in records:
            for k, v in r["metrics"].items():
                if v is not None and np.isfinite(v):
                    out[f"zero-shot/{r['dataset']}/{k}"] = float(v)
        for k in ZERO_SHOT_MEANS:
            per_set = [out[f"zero-shot/{r['dataset']}/{k}"] for r in records if f"zero-shot/{r['dataset']}/{k}" in out]
            if per_set:
                out[f"zero-shot/mean_{k}"] = float(np.mean(per_set))
        return out

    def _keep_best(self, step: int, values: dict[str, float]) -> None:
        metric = self.val.keep_best
        if metric not in values:
            import sys

            print(f"mmkd: warning: --val.keep_best {metric}: not among this validation's values "
                  f"({', '.join(sorted(values)) or 'none'}); no best checkpoint at step {step}", file=sys.stderr)
            return
        value = values[metric]
        if self.best is not None:
            better = value < self.best["value"] if lower_is_better(metric) else value > self.best["value"]
            if not better:
                return
        self.best = {"metric": metric, "value": value, "step": step, "values": values}
        save_best(self.run_dir, self.student, self.best)


def save_best(run_dir: Path, student, best: dict[str, Any]) -> Path:
    """Write RUN/best/ whole: weights, model config and best.json, under a temporary name renamed into place."""
    from mmkd.training.checkpoint import _unshared
    from mmkd.utils.io import apply_dir_umask, atomic_save_safetensors, atomic_write_json, fsync_dir
    from mmkd.utils.runs import CONFIG_FILE, MODEL_FILE

    final = run_dir / BEST_DIR
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-best-", dir=run_dir))
    try:
        apply_dir_umask(tmp)
        atomic_save_safetensors(tmp / MODEL_FILE, _unshared(student.model.state_dict()))
        atomic_write_json(tmp / CONFIG_FILE, student.open_clip_config())
        atomic_write_json(tmp / BEST_FILE, best)
        fsync_dir(tmp)
        old = None
        if final.exists():
            old = run_dir / f".old-best-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
