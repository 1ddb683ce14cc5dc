"""One stage-2 step's loss and gradients, under torchrun or as one process (used by test_stage2_distributed).

    python stage2_worker.py SPEC.json OUT_DIR                       # one process, the whole global batch
    python -m torch.distributed.run --nproc_per_node 2 stage2_worker.py SPEC.json OUT_DIR

SPEC.json: {"common": [distill CLI tokens], "cases": {name: [extra tokens]}, "indices": [...],
"split": [rows of rank 0, rows of rank 1, ...], optional "accum_steps": K, optional "task": "pretrain"
(stage 1's CLIP task instead of the DistillTask). With K > 1 each rank's
rows are cut into K consecutive micro-batches run through the training loop's accumulation
(mmkd.training.accumulate); without it, one forward and the loss over the whole batch. For every case the real DistillTask is built, the
global batch `indices` is cut into consecutive per-rank parts (`split`, unequal on purpose; a rank
with 0 rows runs a blank sample as the training loop does), the
forward runs under DDP when distributed, and rank 0 writes OUT_DIR/<case>.safetensors: every loss
term and the gradient of every trainable parameter after DDP's averaging.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(spec_path: str, out_dir: str) -> None:
    from mmkd.config import build_config
    from mmkd.data.pairs import PairDataset, collate_pairs
    from mmkd.models.student import create_student
    from mmkd.models.text import BatchTokenizer
    from mmkd.training.stage2 import DistillTask
    from mmkd.utils import dist as dist_utils

    spec = json.loads(Path(spec_path).read_text())
    info = dist_utils.init_distributed("cpu")
    torch.set_num_threads(1)
    split = spec["split"] if info.world_size > 1 else [len(spec["indices"])]
    assert len(split) == info.world_size and sum(split) == len(spec["indices"])
    start = sum(split[:info.rank])
    mine = spec["indices"][start:start + split[info.rank]]
    for case, extra in spec["cases"].items():
        cfg = build_config(None, spec["common"] + extra, stage="distill")
        student = create_student(cfg.model.name, cfg.model.init, seed=cfg.train.seed)
        dataset, _ = PairDataset.from_config(cfg.data, student.eval_transform)  # no random crops
        if spec.get("task") == "pretrain":  # stage 1's task on the same data
            from mmkd.training.stage1 import ClipTask

            task = ClipTask(student, cfg, torch.device("cpu"))
        else:
            task = DistillTask(student, cfg, torch.device("cpu"), records=dataset.records)
        # image-only samples keep their random crops: each is seeded by its draw number, not by the process
        module = task.module
        train_module = module
        if info.distributed:
            train_module = torch.nn.parallel.DistributedDataParallel(module)
        tokenize = BatchTokenizer(student.tokenizer, student.model)
        batch = collate_pairs([dataset[i] for i in mine], tokenize=tokenize)
        if hasattr(task, "set_epoch"):
            task.set_epoch(0)
        if spec.get("accum_steps", 1) > 1:
            terms = _accumulated(task, train_module, dataset, mine, spec["accum_steps"], info, tokenize)
            _save(terms, module, info, out_dir, case)
            continue
        extra_inputs = task.extra_inputs(0, info, torch.device("cpu")) if hasattr(task, "extra_inputs") else {}
        if mine and hasattr(task, "prepare"):
            task.prepare(batch)
        if mine:
            outputs = train_module(batch.images, batch.tokens, **extra_inputs)
        else:  # as the training loop does: one blank sample through the model, its outputs dropped
            size = student.preprocess_cfg["size"]
            outputs = train_module(torch.zeros(1, 3, size, size), tokenize(["-"]), **extra_inputs)
            outputs = {k: v[:0] if k in ("image", "text") or k.startswith("head_") else v for k, v in outputs.items()}
        terms = task.losses(outputs, batch, info.rank, info.world_size)
        terms["loss"].backward()
        _save(terms, module, info, out_dir, case)
    dist_utils.destroy()


def _accumulated(task, train_module, dataset, mine: list[int], num_micro: int, info, tokenize):
    """The training loop's accumulation over `num_micro` consecutive parts of this rank's rows."""
    import contextlib

    from mmkd.data.pairs import collate_pairs
    from mmkd.training.accumulate import MicroBatch, StepGradients

    assert len(mine) % num_micro == 0
    size = len(mine) // num_micro
    no_sync = train_module.no_sync if info.distributed else contextlib.nullcontext
    grads = StepGradients(train_module, task, num_micro, info.rank, info.world_size, contextlib.nullcontext,
                          no_sync, torch.device("cpu"))
    for m in range(num_micro):
        batch = collate_pairs([dataset[i] for i in mine[m * size:(m + 1) * size]], tokenize=tokenize)
        extra = task.extra_inputs(m, info, torch.device("cpu")) if hasattr(task, "extra_inputs") else {}
        targets = task.prepare(batch) if hasattr(task, "prepare") else None
        grads.add(MicroBatch(batch.images, batch.tokens, extra, targets))
    return grads.backward()


def _save(terms, module, info, out_dir: str, case: str) -> None:
    """Rank 0 writes every loss term and the (DDP-averaged) gradient of every trainable parameter."""
    from safetensors.torch import save_file

    from mmkd.utils import dist as dist_utils

    if info.is_main:
        tensors = {f"term/{k}": v.detach().reshape(()).clone() for k, v in terms.items()}
        for name, p in module.named_parameters():
            if p.requires_grad:
                tensors[f"grad/{name}"] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
        save_file(tensors, str(Path(out_dir) / f"{case}.safetensors"))
    dist_utils.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
