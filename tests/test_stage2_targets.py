"""Stage 2 in the projection space works on the (row, teacher) pairs its policy weighs
(`DistillTask._projected_targets`, `_pair_terms`): only those pairs are projected, and FD and ICL
run over pairs (one P x P ICL matrix, each teacher's pairs a group).

The claim: the loss, every term and the gradients equal the per-teacher definition on dense targets.
The reference projects every row of every teacher one row at a time through the alignment's own
modules (`proj[t]`, then `encode(t, x, modality)` for linear+mlp), normalises them, and computes each
teacher's FD and ICL over its own rows with plain torch (squared differences, `F.cross_entropy` over
the rows' similarity matrix; the authors' form over every taught row with the policy's mix of targets),
weighted by the teacher's share of the taught rows, and the CLIP term as the symmetric cross-entropy: a plain
loop, nothing from mmkd.losses.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import pairs_with_unit_store
from mmkd.config import build_config
from mmkd.data.pairs import Batch
from mmkd.models.student import create_student
from mmkd.training.stage2 import DistillTask

DIMS = {"t0": 12, "t1": 20, "t2": 12}
N, E = 12, 64  # rows, student embedding size (mmkd-tiny-vit)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("targets")
    rng = np.random.default_rng(5)
    available = rng.random((N, len(DIMS))) < 0.7
    available[0] = True  # a row every teacher may teach
    available[1] = False  # a row no teacher teaches
    table, records, _ = pairs_with_unit_store(root, N, DIMS, available, rng, E, alignment_seed=2)
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


def _outputs(task: DistillTask) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    image = F.normalize(torch.randn(N, E, generator=g), dim=-1).requires_grad_(True)
    text = F.normalize(torch.randn(N, E, generator=g), dim=-1).requires_grad_(True)
    temperature = task.module.extras.log_icl_temperature.detach().exp().requires_grad_(True)
    return {"image": image, "text": text, "logit_scale": torch.tensor(1 / 0.07), "icl_temperature": temperature}


def _info_nce(a_RE: torch.Tensor, b_RE: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Row i of a against every row of b, its own the positive: [R] cross-entropies."""
    return F.cross_entropy(a_RE @ b_RE.T / temperature, torch.arange(a_RE.shape[0]), reduction="none")


def _reference_terms(task: DistillTask, outputs, weights: np.ndarray, dense_image, dense_text) -> dict[str, torch.Tensor]:
    """Each taught teacher's FD and ICL over its own rows, mixed by its share of the taught rows."""
    d = task.cfg.distill
    w_BT = torch.from_numpy(weights.astype(np.float32))
    target_image, target_text = F.normalize(dense_image, dim=-1), F.normalize(dense_text, dim=-1)
    image, text, temperature = outputs["image"], outputs["text"], outputs["icl_temperature"]
    taught_B = w_BT.sum(1) > 0
    num_taught = int(taught_B.sum())
    clip_temperature = 1 / outputs["logit_scale"]  # CLIP's symmetric cross-entropy, both directions averaged
    terms = {"clip": (_info_nce(image, text, clip_temperature).mean()
                      + _info_nce(text, image, clip_temperature).mean()) / 2}
    fd_total, icl_total = 0.0, 0.0
    if d.icl_form == "paper":  # one matrix over every taught row, each row's targets mixed by its weights
        mix_image = (w_BT.unsqueeze(-1) * target_image).sum(1)[taught_B]
        mix_text = (w_BT.unsqueeze(-1) * target_text).sum(1)[taught_B]
        icl_K = (_info_nce(image[taught_B], mix_text, temperature)
                 + _info_nce(text[taught_B], mix_image, temperature)) / 2
        icl_total = icl_K.sum() / num_taught
    for j, t in enumerate(task.teachers):
        rows = w_BT[:, j] > 0
        if not rows.any():
            continue
        w_R = w_BT[rows, j]
        share = float(w_R.sum()) / num_taught
        fd_R = (((image[rows] - target_image[rows, j]) ** 2).mean(-1)
                + ((text[rows] - target_text[rows, j]) ** 2).mean(-1))
        fd = (w_R * fd_R).sum() / w_R.sum()
        if d.icl_form == "paper":
            icl = (w_BT[taught_B, j] * icl_K).sum() / w_R.sum()
        else:
            icl_R = (_info_nce(image[rows], target_text[rows, j], temperature)
                     + _info_nce(text[rows], target_image[rows, j], temperature)) / 2
            icl = (w_R * icl_R).sum() / w_R.sum()
            icl_total = icl_total + share * icl
        fd_total = fd_total + share * fd
        terms[f"fd:{t}"], terms[f"icl:{t}"] = fd, icl
    terms["fd"], terms["icl"] = fd_total, icl_total
    terms["loss"] = terms["clip"] + d.lambda_fd * fd_total + d.lambda_icl * icl_total
    return terms


@pytest.mark.parametrize("policy", ["random-available", "mean-available"])
@pytest.mark.parametrize("icl_form", ["mmkd", "paper"])
@pytest.mark.parametrize("projection", ["linear", "linear+mlp"])
def test_pair_terms_equal_each_teachers_terms_on_dense_targets(setup, policy, icl_form, projection):
    root, table, batch = setup
    cfg = build_config(None, ["--data", str(table), "--store", str(root / "store"), "--model", "mmkd-tiny-vit",
                              "--out", str(root / "run"), "--batch-size", str(N), "--distill.policy", policy,
                              "--distill.icl_form", icl_form, "--distill.projection", projection], stage="distill")
    task = DistillTask(create_student("mmkd-tiny-vit", seed=0), cfg, torch.device("cpu"))
    targets = task.prepare(batch)
    weights = np.asarray(targets["weights"])
    got = task._projected_targets(targets)
    dense_image, dense_text = _dense_targets(task, targets)

    # Only the weighted pairs are projected, row-major, each equal to the reference.
    rows, teachers = np.nonzero(weights)
    assert 0 < rows.size < weights.size  # some pairs weighted, some not: the selection bites
    if policy == "mean-available":
        assert np.bincount(rows).max() > 1  # rows with several teachers
    assert got.shape == (rows.size, 2, E)
    torch.testing.assert_close(got[:, 0], F.normalize(dense_image[rows, teachers], dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, 1], F.normalize(dense_text[rows, teachers], dim=-1), rtol=1e-5, atol=1e-6)

    outputs = _outputs(task)
    terms = task.losses(outputs, batch, 0, 1, targets=targets)
    want = _reference_terms(task, outputs, weights, dense_image, dense_text)
    assert set(terms) >= set(want) and len(want) > 5
    for key in want:
        assert terms[key].item() == pytest.approx(want[key].item(), rel=1e-5, abs=1e-6), key
    inputs = [outputs["image"], outputs["text"], outputs["icl_temperature"]]
    for got_grad, want_grad in zip(torch.autograd.grad(terms["loss"], inputs), torch.autograd.grad(want["loss"], inputs)):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    assert terms["fd"] > 0 and terms["icl"] > 0
