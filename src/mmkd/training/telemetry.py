"""Run metrics: JSON lines (always), TensorBoard scalars (when tensorboard is installed), throughput."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per line to RUN/metrics.jsonl; mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.lines_lost = 0
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard missing or broken: JSON lines still hold everything
                self._tb = None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk must not end a run over a log line; checkpoints report it
            self.lines_lost += 1
            if self.lines_lost == 1:
                warnings.warn(f"cannot append to {self.path}: {e.strerror or e}; training goes on without "
                              f"metric lines until it can write again (free space on that disk)", stacklevel=2)
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Throughput:
    """Samples/s and the share of wall time spent waiting for data."""

    def __init__(self):
        self.samples = 0
        self.data_wait = 0.0
        self.start = time.perf_counter()
        self._mark = self.start

    def waited(self) -> None:
        """Call when a batch arrives: the time since the last `computed()` was data wait."""
        now = time.perf_counter()
        self.data_wait += now - self._mark
        self._mark = now

    def computed(self, num_samples: int) -> None:
        self.samples += num_samples
        self._mark = time.perf_counter()

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"samples_per_s": self.samples / elapsed, "data_wait_fraction": self.data_wait / elapsed,
                "wall_s": elapsed}
