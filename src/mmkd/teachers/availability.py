"""Which teacher may teach which sample.

Legend: n readable rows of a chunk, D embedding dim, K candidate captions per sample.

Default rule (the paper's, inferred): a teacher is available for a sample when it ranks the
sample's own caption first among K candidates — the own caption plus K-1 captions of other
samples of the same chunk, drawn with a seed that depends only on (seed, chunk), so every
run, resumed or distributed, draws the same candidates. The stored score is the margin
`cos(image, own caption) - max cos(image, other candidate)`: available <=> margin > 0, and
the rule can be re-applied from stored scores without re-extracting. `threshold` makes a
teacher available when `cos(image, own caption) >= threshold`; `always` whenever the sample
is readable. Unreadable samples are never available and get a NaN score.
"""

from __future__ import annotations

import numpy as np

RULES = ("rank", "threshold", "always")


def rank_margins(image_nD: np.ndarray, text_nD: np.ndarray, num_candidates: int, seed: int,
                 chunk: int) -> np.ndarray:
    """[n] float32 margins of the own caption over K-1 drawn candidates (NaN when n < 2)."""
    n = image_nD.shape[0]
    if n < 2 or num_candidates < 2:
        return np.full(n, np.nan, dtype=np.float32)
    k_other = min(num_candidates, n) - 1
    sims_nn = image_nD.astype(np.float32) @ text_nD.astype(np.float32).T
    rng = np.random.default_rng([seed, chunk])
    keys_nn = rng.random((n, n))
    np.fill_diagonal(keys_nn, np.inf)  # never draw the own caption as a negative
    cand_nk = np.argpartition(keys_nn, k_other - 1, axis=1)[:, :k_other]
    own_n = np.diagonal(sims_nn)
    best_other_n = np.take_along_axis(sims_nn, cand_nk, axis=1).max(axis=1)
    return (own_n - best_other_n).astype(np.float32)


def own_similarity(image_nD: np.ndarray, text_nD: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", image_nD.astype(np.float32), text_nD.astype(np.float32))


def decide(rule: str, scores_n: np.ndarray, own_sim_n: np.ndarray, threshold: float) -> np.ndarray:
    """[n] bool availability of readable rows under `rule`."""
    if rule == "rank":
        return np.where(np.isnan(scores_n), True, scores_n > 0)  # nothing to rank against: own caption is first
    if rule == "threshold":
        return own_sim_n >= threshold
    if rule == "always":
        return np.ones_like(own_sim_n, dtype=bool)
    raise ValueError(f"unknown availability rule {rule!r}; choose from {RULES}")
