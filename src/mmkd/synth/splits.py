"""Who sees which pairs in the demo: plain, deterministic functions over a pairs table.

The demo mimics how the real teachers and the student were trained: each expert teacher saw
*all* pairs of its own modalities (real teachers saw millions), the student sees only a
fraction of the pairs of every modality, and the remaining images are available to the
student without captions (image-only samples, e.g. for decision distillation).

Inputs are pandas DataFrames with at least the columns `sample_id` and `modality` (and
`label`, used to stratify fractions when present) — the layout of `train/pairs.csv` of
`mmkd synth` and of `real_corpus`. Every function is deterministic in its `seed`: the same
table and seed select the same rows, in the table's order, on every machine. Nothing is
copied: write a subset with `write_pairs_csv`, which rewrites the image paths so that they
stay valid in the new file's folder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd


def by_modality(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Rows per modality, in order of first appearance; each keeps the table's row order and index."""
    return {str(m): pairs[pairs["modality"] == m] for m in pd.unique(pairs["modality"])}


def _rank(sample_ids: Iterable[str], seed: int) -> list[float]:
    """A seeded pseudo-random number in [0, 1) per sample id, independent of row order and table size."""
    out = []
    for sid in sample_ids:
        digest = hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8).digest()
        out.append(int.from_bytes(digest, "big") / 2 ** 64)
    return out


def take_fraction(pairs: pd.DataFrame, fraction: float, seed: int = 0, stratify: str | None = "label",
                  min_per_group: int = 1) -> pd.DataFrame:
    """A deterministic `fraction` of the rows of each modality (and of each `stratify` class within it).

    Per group, round(fraction * n) rows are kept (at least `min_per_group` when the group is not
    empty and fraction > 0): those whose seeded hash of `sample_id` ranks lowest. Because the
    rank depends only on (seed, sample_id), a larger fraction always contains a smaller one
    (nested subsets), and adding rows to the table does not reshuffle the selection.
    Returns the kept rows in the table's order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside [0, 1]")
    keys = ["modality"] + ([stratify] if stratify and stratify in pairs.columns else [])
    ranks = pd.Series(_rank(pairs["sample_id"].astype(str), seed), index=pairs.index)
    keep: list = []
    for _, group in pairs.groupby(keys, sort=False):
        n_keep = int(round(fraction * len(group)))
        if fraction > 0:
            n_keep = max(n_keep, min(min_per_group, len(group)))
        keep.extend(ranks.loc[group.index].sort_values(kind="stable").index[:n_keep])
    return pairs.loc[pairs.index.isin(keep)]


def for_modalities(pairs: pd.DataFrame, modalities: Iterable[str]) -> pd.DataFrame:
    """All rows of the given modalities (an expert's training set). Unknown names raise ValueError."""
    wanted = list(modalities)
    unknown = sorted(set(wanted) - set(pairs["modality"]))
    if unknown:
        raise ValueError(f"modalities {unknown} are not in the table; it has {sorted(set(pairs['modality']))}")
    return pairs[pairs["modality"].isin(wanted)]


@dataclass
class DemoSplit:
    """The demo's data assignment.

    student_pairs: the fraction of every modality the student trains on with captions.
    image_only: every other row, without caption and label (images the student may see unpaired).
    experts: expert name -> all pairs of its modalities.
    generalist: a (smaller) fraction of every modality, for the weak generalist teacher.
    """

    student_pairs: pd.DataFrame
    image_only: pd.DataFrame
    experts: dict[str, pd.DataFrame]
    generalist: pd.DataFrame | None = None


def demo_split(pairs: pd.DataFrame, experts: dict[str, list[str]], student_fraction: float = 0.2,
               generalist_fraction: float | None = 0.1, seed: int = 0) -> DemoSplit:
    """Assign the pairs: experts see all pairs of their modalities, the student a stratified
    `student_fraction` of each modality, the rest become image-only samples.

    `experts` maps an expert's name to its modalities, e.g. {"radiology": ["ct", "mri"]}.
    The generalist's subset uses a different seed from the student's so the two overlap only by chance.
    """
    student = take_fraction(pairs, student_fraction, seed=seed)
    rest = pairs.loc[~pairs.index.isin(student.index)]
    image_only = rest.drop(columns=[c for c in ("caption", "label") if c in rest.columns])
    generalist = None
    if generalist_fraction is not None:
        generalist = take_fraction(pairs, generalist_fraction, seed=seed + 7919)
    return DemoSplit(student, image_only, {name: for_modalities(pairs, mods) for name, mods in experts.items()},
                     generalist)


def write_pairs_csv(table: pd.DataFrame, out_path: str | os.PathLike, source_dir: str | os.PathLike,
                    columns: list[str] | None = None) -> Path:
    """Write rows of a pairs table to `out_path`, rewriting relative `image` paths (which were
    relative to `source_dir`, the folder of the table they came from) to be relative to the new
    file's folder. Absolute paths stay as they are. Returns the written path."""
    from mmkd.synth.io import write_csv

    out_path = Path(out_path)
    out_dir, source_dir = out_path.resolve().parent, Path(source_dir).resolve()
    rows = table.to_dict("records")
    for row in rows:
        image = str(row["image"])
        if not os.path.isabs(image):
            row["image"] = os.path.relpath(source_dir / image, out_dir)
    write_csv(out_path, rows, columns or list(table.columns))
    return out_path
