"""Stage 2's teacher targets, read from the feature store in the DataLoader's workers.

Legend: B rows of a batch, T teachers, W the summed widths of the arrays a batch needs.

A store is a 60-500 GB memmap; reading a batch's rows is page faults on a cold page cache. Read
in the main process before the forward, those faults would stall every step one after another;
read in the workers (`CollateWithTargets`), they overlap each other and the training step, and
the batch arrives with its targets packed into one float32 [B, W] block (pinned with the batch
on a GPU, so one asynchronous copy moves it). With `data.num_workers 0` the same code runs in the
main process. The teacher weights of the policy are drawn here too: they depend only on the
seed, the epoch and the samples, never on which process reads them, so resume stays exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmkd.training.policies import teacher_weights


class TargetReader:
    """`reader(batch)` -> {"block": [B, W] float32 tensor, "weights": [B, T] teacher weights (numpy)}.

    The block's columns are `names` with `widths`: every teacher's stored arrays of `kinds`, then
    "weights" and "available". Pickles without its store (a spawned worker reopens it by path).
    """

    def __init__(self, store, teachers: list[str], kinds: tuple[str, ...], row_of_index: np.ndarray, policy: str,
                 seed: int, routes: dict[str, list[str]]):
        self.store, self.store_path = store, str(store.path)
        self.teachers, self.kinds, self.row_of_index = list(teachers), tuple(kinds), row_of_index
        self.policy, self.seed, self.routes = policy, seed, routes
        self.epoch = 0  # set before each epoch's loader starts its workers
        self.names = [f"{kind}:{t}" for kind in kinds for t in teachers] + ["weights", "available"]
        num_teachers = len(teachers)
        self.widths = [store.array(t, kind).shape[1] for kind in kinds for t in teachers] + [num_teachers] * 2

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["store"] = None
        return state

    def __call__(self, batch) -> dict[str, Any]:
        if self.store is None:
            from mmkd.data.feature_store import FeatureStore

            self.store = FeatureStore(self.store_path)
        indices_B = batch.indices.numpy()
        rows = self.row_of_index[indices_B]
        kinds = self.kinds + (("score",) if self.policy == "score-weighted" else ())
        feats = self.store.rows(rows, kinds=kinds, teachers=self.teachers)
        w_BT = teacher_weights(self.policy, feats["available"],
                               scores_BT=np.stack([feats["score"][t] for t in self.teachers], 1) if "score" in feats
                               else None, seed=self.seed, epoch=self.epoch, indices_B=indices_B,
                               modalities_B=batch.modalities, routes=self.routes, teachers=self.teachers)
        arrays = [feats[kind][t] for kind in self.kinds for t in self.teachers] + [w_BT, feats["available"]]
        block = np.concatenate(arrays, axis=1, dtype=np.float32, casting="unsafe") if arrays else None
        return {"block": torch.from_numpy(block), "weights": w_BT}

    def split(self, block: torch.Tensor) -> dict[str, torch.Tensor]:
        """The block's columns by name (views)."""
        return dict(zip(self.names, torch.split(block, self.widths, dim=1)))


class CollateWithTargets:
    """A DataLoader `collate_fn`: the batch, then its targets read by `reader` in the same worker."""

    def __init__(self, collate, reader):
        self.collate, self.reader = collate, reader

    def __call__(self, items) -> tuple[Any, dict[str, Any]]:
        batch = self.collate(items)
        return batch, self.reader(batch)
