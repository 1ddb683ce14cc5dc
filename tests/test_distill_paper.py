"""configs/mmkd_b16/distill-paper.yaml computes the MMKD-CLIP authors' stage-2 loss.

The reference below is written from the description of the authors' code (KDClipLoss in
wangshansong1/MMKD-CLIP src/open_clip/loss.py; see docs/DISTILLATION.md), as plain loops in
float64 on fixed tensors, and compared with what the real DistillTask computes from the recipe:

  target of row i     = W_t x_i + b_t, t the row's teacher (the alignment's linear layer), unnormalised
  task loss           = (CE(s * I @ T^T) + CE(s * T @ I^T)) / 2,  s = exp(logit_scale)
  FD                  = mean_ij (I_ij - tI_ij)^2 + mean_ij (T_ij - tT_ij)^2
  ICL                 = (CE(c * I @ tT^T) + CE(c * T @ tI^T)) / 2,  c = ln(1/0.07), labels 0..N-1
  loss                = task + 50 * FD + ICL
"""

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from helpers import pairs_with_unit_store
from mmkd.config import build_config
from mmkd.data.pairs import Batch, index_source
from mmkd.models.alignment import WEIGHTS_FILE
from mmkd.models.student import create_student
from mmkd.training.stage2 import DistillTask

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "mmkd_b16" / "distill-paper.yaml"
DIMS = {"t0": 12, "t1": 20}
N, E = 10, 64  # rows, student embedding size (mmkd-tiny-vit)


def _naive_ce(logits: np.ndarray) -> float:
    """Mean over rows of -log softmax(row)[own index], written out."""
    total = 0.0
    for i in range(len(logits)):
        row = logits[i]
        m = max(row)
        total += -(row[i] - m - math.log(sum(math.exp(v - m) for v in row)))
    return total / len(logits)


def _naive_mse(a: np.ndarray, b: np.ndarray) -> float:
    return sum((a[i, j] - b[i, j]) ** 2 for i in range(a.shape[0]) for j in range(a.shape[1])) / a.size


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(7)
    teacher_of = ["t0" if i % 3 == 0 else "t1" for i in range(N)]  # one available teacher per row: no draw
    available = np.array([[x == t for t in DIMS] for x in teacher_of])
    table, _, raw = pairs_with_unit_store(root, N, DIMS, available, rng, E, alignment_seed=1)
    return root, table, teacher_of, raw


def _task(root: Path, table: Path, *extra: str) -> DistillTask:
    cfg = build_config(str(RECIPE), ["--data", str(table), "--data.format", "auto", "--store", str(root / "store"), "--model",
                                     "mmkd-tiny-vit", "--init", "", "--out", str(root / "run"), "--batch-size",
                                     str(N), *extra], stage="distill")
    return DistillTask(create_student(cfg.model.name, seed=0), cfg, torch.device("cpu"))


def _fixed_outputs(task: DistillTask) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"image": F.normalize(torch.randn(N, E, generator=g), dim=-1),
            "text": F.normalize(torch.randn(N, E, generator=g), dim=-1),
            "logit_scale": torch.tensor(1 / 0.07), "icl_temperature": task.module.extras.log_icl_temperature.exp()}


def _batch(table: Path) -> Batch:
    records, _ = index_source(str(table))
    return Batch(images=torch.empty(0), captions=[r.caption for r in records], indices=torch.arange(N),
                 sample_ids=[r.sample_id for r in records], modalities=["toy"] * N, skipped=Counter())


def test_recipe_holds_the_authors_settings():
    cfg = build_config(str(RECIPE), ["--data", "x", "--store", "s"], stage="distill")
    o, d = cfg.optim, cfg.distill
    assert (o.lr, o.warmup_steps, o.grad_clip, o.weight_decay, o.beta1, o.beta2, o.eps) == \
        (1e-6, 2000, 0.0, 0.2, 0.9, 0.98, 1e-6)
    assert o.schedule == "cosine" and cfg.train.precision == "bf16"
    assert (d.lambda_fd, d.lambda_icl, d.lambda_kl, d.lambda_decision) == (50.0, 1.0, 0.0, 0.0)
    assert d.policy == "random-available" and d.target_space == "projection" and d.projection == "linear"
    assert d.icl_form == "paper" and not d.normalize_targets and not d.learnable_icl_temperature
    assert abs(1 / d.icl_temperature - math.log(1 / 0.07)) < 1e-12


def test_paper_terms_equal_the_authors_formulas(setup):
    root, table, teacher_of, raw = setup
    task = _task(root, table)
    outputs = _fixed_outputs(task)
    terms = task.losses(outputs, _batch(table), 0, 1)

    # The reference, in float64 from the files on disk.
    w = load_file(str(root / "store" / WEIGHTS_FILE))
    img, txt = outputs["image"].double().numpy(), outputs["text"].double().numpy()
    t_img, t_txt = np.zeros((N, E)), np.zeros((N, E))
    for i, t in enumerate(teacher_of):
        W, b = w[f"proj.{t}.weight"].astype(np.float64), w[f"proj.{t}.bias"].astype(np.float64)
        for e in range(E):
            t_img[i, e] = b[e] + sum(W[e, k] * float(raw[t]["image"][i, k]) for k in range(DIMS[t]))
            t_txt[i, e] = b[e] + sum(W[e, k] * float(raw[t]["text"][i, k]) for k in range(DIMS[t]))
    assert np.abs(np.linalg.norm(t_img, axis=1) - 1).max() > 0.05, "targets are used unnormalised"
    scale, cross = 1 / 0.07, math.log(1 / 0.07)
    task_loss = (_naive_ce(scale * img @ txt.T) + _naive_ce(scale * txt @ img.T)) / 2
    fd = _naive_mse(img, t_img) + _naive_mse(txt, t_txt)
    icl = (_naive_ce(cross * img @ t_txt.T) + _naive_ce(cross * txt @ t_img.T)) / 2
    total = task_loss + 50 * fd + icl

    assert terms["clip"].item() == pytest.approx(task_loss, abs=1e-5)
    assert terms["fd"].item() == pytest.approx(fd, abs=1e-6)
    assert terms["icl"].item() == pytest.approx(icl, abs=1e-5)
    assert terms["loss"].item() == pytest.approx(total, abs=1e-4)


def test_mmkd_defaults_differ_from_the_paper_terms(setup):
    """The switches do something: mmkd's ICL form and MLP targets give other values on the same rows."""
    root, table, _, _ = setup
    paper = _task(root, table)
    mmkd_icl = _task(root, table, "--distill.icl_form", "mmkd")
    mlp = _task(root, table, "--distill.projection", "linear+mlp")
    batch = _batch(table)
    a = paper.losses(_fixed_outputs(paper), batch, 0, 1)
    b = mmkd_icl.losses(_fixed_outputs(mmkd_icl), batch, 0, 1)
    c = mlp.losses(_fixed_outputs(mlp), batch, 0, 1)
    assert a["fd"].item() == pytest.approx(b["fd"].item(), abs=1e-6)  # FD does not depend on the ICL form
    assert abs(a["icl"].item() - b["icl"].item()) > 1e-3
    assert abs(a["fd"].item() - c["fd"].item()) > 1e-4


def test_paper_icl_in_the_adaptor_space_is_refused():
    from mmkd.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        build_config(str(RECIPE), ["--data", "x", "--store", "s", "--distill.target_space", "adaptor",
                                   "--distill.projection", "mlp"], stage="distill")
    text = str(e.value)
    assert "distill.icl_form" in text and "adaptor" in text and "distill.projection" in text  # both, at once
