"""One launch that opens a shared index under torchrun with a 30-s process-group timeout (used by
tests/test_data_index.py: two such launches share one index folder).

    python -m torch.distributed.run --nproc_per_node 2 index_launch_worker.py SHARDS INDEX_DIR OUT.json

Every rank opens the data through `index_source` (which builds or refreshes the index, or waits for
another launch's build), then the ranks sum their sample counts in a collective; rank 0 writes the
count and the index generation to OUT.json.
"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

from mmkd.data.pairs import index_source

if __name__ == "__main__":
    shards, index_dir, out = sys.argv[1:4]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    records, _ = index_source(shards, "webdataset", index_dir=index_dir, index_workers=1, progress=False)
    total = torch.tensor([len(records)])
    dist.all_reduce(total)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"samples": int(total), "generation": records.data_index.generation}, f)
    dist.destroy_process_group()
