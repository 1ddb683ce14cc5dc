"""Stage 1's CLIP loss shared the authors' way (--loss.local true --loss.gather_with_grad false) on
2 gloo processes, against a float64 transcription of their ClipLoss (wangshansong1/MMKD-CLIP,
src/open_clip/loss.py:52-61 gather without gradient, :96-98 local rows x all columns, :109-111
labels at the rank's offset), with DDP's averaging of the ranks' gradients.

The transcription below follows their formula, not mmkd's code: each rank's loss is
(CE(s * I_r @ T_all^T, labels_r) + CE(s * T_r @ I_all^T, labels_r)) / 2 with I_all, T_all constants,
written with an explicit log-sum-exp. mmkd's default (full matrix, gathered with gradient) is checked in
the same launch against the same transcription with the keys' gradient kept: the single-process
gradient of the global batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import free_port

WORKER = Path(__file__).with_name("local_loss_worker.py")
SPLIT = [4, 4]


def _spec():
    rng = np.random.default_rng(7)
    n = sum(SPLIT)
    return {"inputs": {"image": rng.normal(size=(n, 5)).tolist(), "text": rng.normal(size=(n, 6)).tolist()},
            "weights": {"image": rng.normal(size=(5, 3)).tolist(), "text": rng.normal(size=(6, 3)).tolist(),
                        "log_scale": float(np.log(4.0))},
            "split": SPLIT}


def _reference(spec, local_keys_constant: bool) -> dict[str, np.ndarray]:
    """Mean over ranks of d(rank loss)/d(weights), float64. `local_keys_constant` False: the keys carry
    gradient too (mmkd's default), for the check that the two differ."""
    w = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in spec["weights"].items()}
    x_i = torch.tensor(spec["inputs"]["image"], dtype=torch.float64)
    x_t = torch.tensor(spec["inputs"]["text"], dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for r, rows in enumerate(SPLIT):
        img = x_i @ w["image"]
        img = img / img.pow(2).sum(1, keepdim=True).sqrt()
        txt = x_t @ w["text"]
        txt = txt / txt.pow(2).sum(1, keepdim=True).sqrt()
        keys_i, keys_t = (img.detach(), txt.detach()) if local_keys_constant else (img, txt)
        start = sum(SPLIT[:r])
        s = w["log_scale"].exp()
        loss_r = torch.zeros((), dtype=torch.float64)
        for q in range(start, start + rows):
            li = s * (img[q] * keys_t).sum(1)
            lt = s * (txt[q] * keys_i).sum(1)
            loss_r = loss_r + (li.exp().sum().log() - li[q] + lt.exp().sum().log() - lt[q]) / 2
        total = total + loss_r / rows
    (total / len(SPLIT)).backward()
    return {k: v.grad.numpy() for k, v in w.items()}


@pytest.mark.slow
@pytest.mark.distributed
def test_authors_local_loss_gradient_on_two_processes(tmp_path):
    spec = {**_spec(), "cases": {"authors": [True, False], "mmkd": [False, True]}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(WORKER), str(tmp_path / "spec.json"), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads((tmp_path / "grads.json").read_text())
    want = {"authors": _reference(spec, local_keys_constant=True), "mmkd": _reference(spec, local_keys_constant=False)}
    for case, grads in want.items():
        for k, g in grads.items():
            np.testing.assert_allclose(np.asarray(got[case][k]), g, rtol=1e-9, atol=1e-12, err_msg=f"{case}: {k}")
    # the two conventions really differ here, so each comparison can tell them apart
    assert max(np.abs(want["authors"][k] - want["mmkd"][k]).max() for k in want["mmkd"]) > 1e-3
