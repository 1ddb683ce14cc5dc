"""Stage 2 projects only the (row, teacher) pairs its policy weighs (`DistillTask._projected_targets`).

The claim: every term ignores the other pairs, so the loss and its gradients equal those of
projecting every pair. The reference projects every row of every teacher one teacher at a time
through the alignment's own modules (`proj[t]`, then `encode(t, x, modality)` for linear+mlp), a
plain loop independent of the batched path, and the same task then computes its terms from those
dense targets.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_pairs, write_unit_store
from mmkd.config import build_config
from mmkd.data.pairs import Batch, index_source
from mmkd.models.student import create_student
from mmkd.training.stage2 import DistillTask

DIMS = {"t0": 12, "t1": 20, "t2": 12}
N, E = 12, 64  # rows, student embedding size (mmkd-tiny-vit)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    table = make_pairs(root / "data", n=N)
    records, _ = index_source(str(table))
    rng = np.random.default_rng(5)
    available = rng.random((N, len(DIMS))) < 0.7
    available[0] = True  # a row every teacher may teach
    available[1] = False  # a row no teacher teaches
    write_unit_store(root / "store", [r.sample_id for r in records], DIMS, available, rng, E, alignment_seed=2)
    batch = Batch(images=torch.empty(0), captions=[r.caption for r in records], indices=torch.arange(N),
                  sample_ids=[r.sample_id for r in records], modalities=["toy"] * N, skipped=Counter())
    return root, table, batch


def _dense_targets(task: DistillTask, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of every teacher through the alignment, one teacher and one row at a time."""
    out = []
    for k, modality in enumerate(("image", "text")):
        per_teacher = []
        for t in task.teachers:
            x = targets["on_device"][f"{('image', 'text')[k]}:{t}"]
            with torch.no_grad():
                rows = [task.alignment.proj[t](x[i:i + 1]) if task.cfg.distill.projection == "linear"
                        else task.alignment.encode(t, x[i:i + 1], modality) for i in range(x.shape[0])]
            per_teacher.append(torch.cat(rows))
        out.append(torch.stack(per_teacher, dim=1))
    return out[0], out[1]


def _terms_and_grads(task: DistillTask, batch: Batch, targets) -> tuple[dict[str, float], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(N, E, generator=g), dim=-1).requires_grad_(True)
    text = F.normalize(torch.randn(N, E, generator=g), dim=-1).requires_grad_(True)
    temperature = task.module.extras.log_icl_temperature.detach().exp().requires_grad_(True)
    outputs = {"image": image, "text": text, "logit_scale": torch.tensor(1 / 0.07), "icl_temperature": temperature}
    terms = task.losses(outputs, batch, 0, 1, targets=targets)
    grads = torch.autograd.grad(terms["loss"], [image, text, temperature])
    return {k: v.item() for k, v in terms.items()}, list(grads)


@pytest.mark.parametrize("policy", ["random-available", "mean-available"])
@pytest.mark.parametrize("icl_form", ["mmkd", "paper"])
@pytest.mark.parametrize("projection", ["linear", "linear+mlp"])
def test_projecting_only_weighted_pairs_equals_projecting_every_pair(setup, policy, icl_form, projection):
    root, table, batch = setup
    cfg = build_config(None, ["--data", str(table), "--store", str(root / "store"), "--model", "mmkd-tiny-vit",
                              "--out", str(root / "run"), "--batch-size", str(N), "--distill.policy", policy,
                              "--distill.icl_form", icl_form, "--distill.projection", projection], stage="distill")
    task = DistillTask(create_student("mmkd-tiny-vit", seed=0), cfg, torch.device("cpu"))
    targets = task.prepare(batch)
    weights = np.asarray(targets["weights"])
    image_BTE, text_BTE = task._projected_targets(targets)
    dense_image, dense_text = _dense_targets(task, targets)

    # Only the weighted pairs are projected, each equal to the reference; the others are zero.
    weighted = torch.from_numpy(weights > 0)
    assert (~weighted).any() and weighted.any()
    for got, dense in ((image_BTE, dense_image), (text_BTE, dense_text)):
        torch.testing.assert_close(got[weighted], dense[weighted], rtol=1e-5, atol=1e-6)
        assert (got[~weighted] == 0).all()
        assert dense[~weighted].abs().amax(dim=-1).min() > 0  # the reference fills them: the comparison bites

    terms, grads = _terms_and_grads(task, batch, targets)
    task._projected_targets = lambda targets: (dense_image, dense_text)  # every pair projected
    dense_terms, dense_grads = _terms_and_grads(task, batch, targets)
    assert terms.keys() == dense_terms.keys()
    for key in terms:
        assert terms[key] == pytest.approx(dense_terms[key], rel=1e-5, abs=1e-6), key
    for got, want in zip(grads, dense_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert terms["fd"] > 0 and terms["icl"] > 0
