"""One stage-2 step's loss and gradients, under torchrun or as one process (used by test_stage2_distributed).

    python stage2_worker.py SPEC.json OUT_DIR                       # one process, the whole global batch
    python -m torch.distributed.run --nproc_per_node 2 stage2_worker.py SPEC.json OUT_DIR

SPEC.json: {"common": [distill CLI tokens], "cases": {name: [extra tokens]}, "indices": [...],
"split": [rows of rank 0, rows of rank 1, ...]}. For every case the real DistillTask is built, the
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
    from safetensors.torch import save_file

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
        task = DistillTask(student, cfg, torch.device("cpu"), records=dataset.records)
        # image-only samples keep their random crops: each is seeded by its draw number, not by the process
        module = task.module
        train_module = module
        if info.distributed:
            train_module = torch.nn.parallel.DistributedDataParallel(module)
        tokenize = BatchTokenizer(student.tokenizer, student.model)
        batch = collate_pairs([dataset[i] for i in mine], tokenize=tokenize)
        task.set_epoch(0)
        extra_inputs = task.extra_inputs(0, info, torch.device("cpu"))
        if mine:
            task.prepare(batch)
            outputs = train_module(batch.images, batch.tokens, **extra_inputs)
        else:  # as the training loop does: one blank sample through the model, its outputs dropped
            size = student.preprocess_cfg["size"]
            outputs = train_module(torch.zeros(1, 3, size, size), tokenize(["-"]), **extra_inputs)
            outputs = {k: v[:0] if k in ("image", "text") or k.startswith("head_") else v for k, v in outputs.items()}
        terms = task.losses(outputs, batch, info.rank, info.world_size)
        terms["loss"].backward()
        if info.is_main:
            tensors = {f"term/{k}": v.detach().reshape(()).clone() for k, v in terms.items()}
            for name, p in module.named_parameters():
                if p.requires_grad:
                    tensors[f"grad/{name}"] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            save_file(tensors, str(Path(out_dir) / f"{case}.safetensors"))
        dist_utils.barrier()
    dist_utils.destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
