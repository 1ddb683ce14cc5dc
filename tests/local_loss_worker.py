"""One stage-1 CLIP-loss step of a tiny two-tower model under torchrun (used by test_local_loss).

    python -m torch.distributed.run --nproc_per_node 2 local_loss_worker.py SPEC.json OUT_DIR

SPEC.json: {"inputs": {name: nested list}, "weights": {name: nested list}, "split": [rows per rank],
"cases": {name: [local, gather_grad]}}. For every case each rank takes its consecutive rows of the
inputs, runs the model under DDP (float64, gloo), computes mmkd's `clip_loss` with the case's options
and backpropagates; rank 0 writes OUT_DIR/grads.json: per case, every parameter's gradient after
DDP's averaging.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


class TwoTowers(torch.nn.Module):
    def __init__(self, weights: dict):
        super().__init__()
        self.image = torch.nn.Parameter(torch.tensor(weights["image"], dtype=torch.float64))
        self.text = torch.nn.Parameter(torch.tensor(weights["text"], dtype=torch.float64))
        self.log_scale = torch.nn.Parameter(torch.tensor(weights["log_scale"], dtype=torch.float64))

    def forward(self, x_image, x_text):
        return F.normalize(x_image @ self.image, dim=-1), F.normalize(x_text @ self.text, dim=-1), self.log_scale.exp()


def main(spec_path: str, out_dir: str) -> None:
    from mmkd.losses.contrastive import clip_loss
    from mmkd.utils import dist as dist_utils

    spec = json.loads(Path(spec_path).read_text())
    info = dist_utils.init_distributed("cpu")
    torch.set_num_threads(1)
    start = sum(spec["split"][:info.rank])
    rows = slice(start, start + spec["split"][info.rank])
    x_image = torch.tensor(spec["inputs"]["image"], dtype=torch.float64)[rows]
    x_text = torch.tensor(spec["inputs"]["text"], dtype=torch.float64)[rows]
    grads = {}
    for case, (local, gather_grad) in spec["cases"].items():
        model = torch.nn.parallel.DistributedDataParallel(TwoTowers(spec["weights"]))
        image, text, scale = model(x_image, x_text)
        clip_loss(image, text, scale, info.rank, info.world_size, local=local, gather_grad=gather_grad)["clip"].backward()
        grads[case] = {name: p.grad.tolist() for name, p in model.module.named_parameters()}
    if info.is_main:
        (Path(out_dir) / "grads.json").write_text(json.dumps(grads))
    dist_utils.barrier()
    dist_utils.destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
