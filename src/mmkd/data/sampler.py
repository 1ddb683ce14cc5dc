"""Deterministic, resumable batching across ranks, in random order or in shard order.

Random order (CSV/JSONL of loose files): the order of an epoch is a permutation seeded by
(seed, epoch); global batch b of the epoch is `perm[b*G:(b+1)*G]`, and rank r takes its
contiguous share. The position (epoch, micro-batch) is all the state there is, so a resumed run
reads exactly the samples an uninterrupted run would, on any number of workers.

Shard order (webdataset shards, `ShardOrderedBatchSampler`): each DataLoader worker reads a few
shards at a time, interleaved, holding those files open and reading forward through them; see that
class for how an epoch is laid out. The position is again (epoch, micro-batch), and the order is a
function of (seed, epoch, world size, workers per rank, shuffle buffer, open shards): a resume with the same
world size and `data.num_workers` reads exactly the samples an uninterrupted run would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ResumableBatchSampler:
    def __init__(self, num_samples: int, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if micro_batch_size % world_size:
            raise ValueError(f"micro batch {micro_batch_size} is not divisible by world size {world_size}")
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size  # across all ranks
        self.per_rank = micro_batch_size // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # first micro-batch of the epoch to yield

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.micro_batch_size  # the last partial batch is dropped

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        for b in range(self.start, self.batches_per_epoch):
            batch = order[b * self.micro_batch_size:(b + 1) * self.micro_batch_size]
            yield batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank].tolist()


class ShardOrderedBatchSampler(ResumableBatchSampler):
    """Batches that keep each DataLoader worker reading a few shards forward, not the whole dataset at random.

    Epoch e: the shards are put in a random order seeded by (seed, e), and the samples are
    listed shard after shard (file order within a shard). The first `batches_per_epoch * G`
    of them (G: the global micro batch; the rest, fewer than G, are dropped as in random order)
    are cut into contiguous streams, one per (worker w, rank r): stream (w, r) holds exactly
    the samples of the batches b = w, w + W, w + 2W, ... that rank r reads, and a DataLoader hands
    batch b to one worker, so a worker reads a stream front to back.

    Within a stream, its shards are taken `open_shards` at a time (a group) and their samples
    interleaved at random, each shard's samples staying in file order, so a worker holds at most
    `open_shards` files open and reads each forward; the interleaved list is then shuffled inside
    consecutive windows of `buffer` samples that never cross a group boundary (all seeded by
    (seed, e, w, r)). Interleaving matters where neighbouring samples are alike: BIOMEDICA writes
    its shards cluster by cluster, so with one shard at a time a batch would come from one or two
    visually similar clusters. Every sample is read at most once per epoch, by exactly one rank;
    all but the dropped tail exactly once.

    `shard_of[i]`: the shard of dataset sample i (any integers; samples of one shard should be
    consecutive in the file so that reading a stream moves forward).
    """

    def __init__(self, shard_of: Sequence[int] | np.ndarray, micro_batch_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_workers: int = 0, buffer: int = 2048,
                 open_shards: int = 1):
        super().__init__(len(shard_of), micro_batch_size, rank, world_size, seed, shuffle=True)
        _, self.shard_code = np.unique(np.asarray(shard_of), return_inverse=True)
        self.num_shards = int(self.shard_code.max()) + 1 if len(self.shard_code) else 0
        self.streams = max(1, num_workers)
        self.buffer = max(1, buffer)
        self.open_shards = max(1, open_shards)

    def rank_batches(self, epoch: int) -> list[np.ndarray]:
        """The micro-batches this rank reads in `epoch`, in order (each `per_rank` dataset positions)."""
        rng = np.random.default_rng([self.seed, epoch])
        place = np.empty(self.num_shards, dtype=np.int64)
        place[rng.permutation(self.num_shards)] = np.arange(self.num_shards)
        order = np.argsort(place[self.shard_code], kind="stable")[:self.batches_per_epoch * self.micro_batch_size]
        counts = [len(range(w, self.batches_per_epoch, self.streams)) for w in range(self.streams)]
        mine: list[np.ndarray] = []
        start = 0
        for w, count in enumerate(counts):
            for r in range(self.world_size):
                n = count * self.per_rank
                if r == self.rank:
                    stream = order[start:start + n]
                    mine.append(stream[self._lay_out(place[self.shard_code[stream]],
                                                     np.random.default_rng([self.seed, epoch, w, r]))])
                start += n
        return [mine[b % self.streams][(b // self.streams) * self.per_rank:(b // self.streams + 1) * self.per_rank]
                for b in range(self.batches_per_epoch)]

    def _lay_out(self, shard_place_n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The reading order of a stream (positions into it). `shard_place_n`: each sample's shard place,
        non-decreasing along the stream (shard after shard, file order within each)."""
        n = len(shard_place_n)
        _, seq_n = np.unique(shard_place_n, return_inverse=True)  # the shard's rank within the stream
        group_n = seq_n // self.open_shards
        # A random interleaving that keeps each shard's file order: every sample draws a key, and each
        # shard's keys are handed back to its samples in ascending order.
        key_n = rng.random(n)
        interleave_n = key_n[np.lexsort((key_n, seq_n))]
        merged = np.lexsort((interleave_n, group_n))  # group after group, its shards interleaved
        group_m = group_n[merged]
        first_m = np.searchsorted(group_m, group_m, side="left")  # where each sample's group starts
        window_m = (np.arange(n) - first_m) // self.buffer
        return merged[np.lexsort((rng.random(n), window_m, group_m))]

    def epoch_order(self, epoch: int) -> torch.Tensor:
        raise NotImplementedError("shard order is laid out per rank: use rank_batches")

    def __iter__(self):
        batches = self.rank_batches(self.epoch)
        for b in range(self.start, self.batches_per_epoch):
            yield batches[b].tolist()


def shard_numbers(records) -> np.ndarray | None:
    """[N] shard number of each record of a webdataset index (`IndexedRecords`), or None for a table."""
    index = getattr(records, "data_index", None)
    if index is None or index.kind != "webdataset":
        return None
    rows = np.arange(index.num_samples) if records.rows is None else np.asarray(records.rows, dtype=np.int64)
    return np.searchsorted(index.shard_starts, rows, side="right") - 1


def batch_sampler(records, micro_batch_size: int, rank: int, world_size: int, seed: int, data_cfg
                  ) -> ResumableBatchSampler:
    """The sampler `data.order` asks for: shard order for shards (auto), random order for CSV/JSONL."""
    from mmkd.errors import UsageError

    shards = shard_numbers(records) if data_cfg.order != "random" else None
    if data_cfg.order == "shards" and shards is None:
        raise UsageError(f"--data.order: 'shards' needs webdataset shards; {data_cfg.path!r} is a table of loose "
                         f"files, read in random order (use --data.order auto or random)")
    if shards is None:
        return ResumableBatchSampler(len(records), micro_batch_size, rank, world_size, seed)
    return ShardOrderedBatchSampler(shards, micro_batch_size, rank, world_size, seed, data_cfg.num_workers,
                                    data_cfg.shuffle_buffer, data_cfg.open_shards)
