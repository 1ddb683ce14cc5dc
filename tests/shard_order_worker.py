"""Read two epochs of a shard source through the training loader, under torchrun (used by test_packed_training).

    python -m torch.distributed.run --nproc_per_node 2 shard_order_worker.py SHARDS OUT_DIR

Each rank builds the real sampler (`mmkd.data.loader.batch_sampler`, order auto = shards) and
DataLoader (`epoch_loader`, 2 workers), reads epochs 0 and 1, and writes OUT_DIR/rank<r>.json:
per epoch, the batches as [worker id, [sample ids]].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

OPEN_SHARDS = 2  # shards a worker reads at once (interleaved)


def _collate(items):
    from mmkd.data.pairs import collate_pairs

    info = torch.utils.data.get_worker_info()
    return info.id if info is not None else -1, collate_pairs(items)


def main(shards: str, out_dir: str) -> None:
    from mmkd.config import DataConfig
    from mmkd.data.loader import batch_sampler, epoch_loader
    from mmkd.data.pairs import PairDataset, index_source
    from mmkd.utils import dist as dist_utils

    info = dist_utils.init_distributed("cpu")
    torch.set_num_threads(1)
    records, _ = index_source(shards, progress=False)
    dataset = PairDataset(records, lambda img: torch.zeros(1))
    data_cfg = DataConfig(path=shards, num_workers=2, shuffle_buffer=3, open_shards=OPEN_SHARDS)
    sampler = batch_sampler(records, 4, info.rank, info.world_size, 7, data_cfg)
    epochs = []
    for epoch in (0, 1):
        sampler.set_position(epoch)
        loader = epoch_loader(dataset, sampler, _collate, data_cfg.num_workers, 7, epoch, pin_memory=False)
        epochs.append([[worker, batch.sample_ids] for worker, batch in loader])
    Path(out_dir, f"rank{info.rank}.json").write_text(json.dumps(epochs))
    dist_utils.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
