"""Two "nodes" on one machine: two torchrun launches with --nnodes 2 and a c10d rendezvous (gloo) run
pretrain, extract and distill on a saved BIOMEDICA-style selection, and give the same weights and
store as one process with the same global batch. The first launch also builds the shard index,
its shards split between the two nodes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import assert_same_store, free_port
from mmkd.cli import main
from mmkd.synth.biomedica import write_shards


def _two_nodes(*args: str, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """`torchrun --nnodes 2 --nproc_per_node 1` twice, rendezvous c10d on localhost, gloo."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"mmkd-test-{port}",
           "-m", "mmkd", *args]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(cmd, p.returncode, out, err))
    for d in done:
        assert d.returncode == 0, d.stderr[-4000:]
    return done


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ckpt = sorted((run / "checkpoints").glob("step_*"))[-1]
    return load_file(str(ckpt / "open_clip_model.safetensors"))


def _assert_close_weights(a: Path, b: Path, initial: dict[str, torch.Tensor]) -> None:
    wa, wb = _final_weights(a), _final_weights(b)
    assert wa.keys() == wb.keys() and wa
    worst = max((x.float() - wb[k].float()).abs().max().item() for k, x in wa.items())
    # the same samples and global batches; only the order of floating-point sums differs (gradient all-reduce)
    assert worst < 1e-5, worst
    moved = max((wa[k].float() - initial[k].float()).abs().max().item() for k in wa if k in initial)
    assert moved > 1e-4  # training changed the weights, so agreeing means something


def _student_init(seed: int) -> dict[str, torch.Tensor]:
    from mmkd.models.student import create_student

    return {k: v.detach().clone() for k, v in create_student("mmkd-tiny-vit", seed=seed).model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_equal_one_process_for_pretrain_extract_and_distill(tmp_path, capsys):
    from mmkd.teachers.testing import make_open_clip_teacher

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 160, 90)).save(buf, format="PNG")
    data = tmp_path / "biomedica"
    write_shards(data, 96, per_shard=8, seed=4, image_bytes=buf.getvalue())
    subset = tmp_path / "subset"
    teacher = make_open_clip_teacher(tmp_path / "teacher", seed=2)
    # Random order: its batches are the same samples on any number of processes (shard order's layout
    # depends on the world size, docs/SCALING.md "Reading order").
    common = ["--batch-size", "8", "--epochs", "1", "--train.progress", "false", "--train.device", "cpu",
              "--seed", "3", "--train.log_every", "1", "--data.order", "random"]

    # the first multi-node launch builds the shard index (shards split between the nodes) for its --data
    _two_nodes("pretrain", "--data", str(data), "--data.license", "commercial", *common,
                     "--out", str(tmp_path / "s1-two"), "--lr", "1e-3", "--optim.warmup_steps", "1")
    from mmkd.data.index_build import make_plan, resolve_source

    assert make_plan(resolve_source(str(data), "webdataset")) is None  # built by the two nodes, and current
    assert main(["data", "select", "--data", str(data), "--license", "commercial", "--out", str(subset),
                 "--no-progress"]) == 0
    selected = json.loads((subset / "selection.json").read_text())["num_samples"]
    assert selected == 32

    assert main(["pretrain", "--data", str(data), "--data.license", "commercial", *common, "--out",
                 str(tmp_path / "s1-one"), "--lr", "1e-3", "--optim.warmup_steps", "1"]) == 0
    _assert_close_weights(tmp_path / "s1-two", tmp_path / "s1-one", _student_init(3))

    extract = ["extract", "--data", str(subset), "--teacher", f"t=local-dir:{teacher}", "--chunk-rows", "4",
               "--batch-size", "3", "--availability", "always", "--no-progress"]
    _two_nodes(*extract, "--out", str(tmp_path / "store-two"))
    assert main([*extract, "--out", str(tmp_path / "store-one")]) == 0
    assert_same_store(tmp_path / "store-two", tmp_path / "store-one", check_summary=True)

    # Every stage-2 term (FD and ICL here) is taken over the batch gathered from both nodes, so the two-node
    # update is the one-process update.
    distill = ["distill", "--data", str(subset), "--store", str(tmp_path / "store-one"), "--init",
               str(tmp_path / "s1-one"), *common, "--lr", "1e-3", "--distill.target_space", "adaptor"]
    _two_nodes(*distill, "--out", str(tmp_path / "s2-two"))
    assert main([*distill, "--out", str(tmp_path / "s2-one")]) == 0
    _assert_close_weights(tmp_path / "s2-two", tmp_path / "s2-one", _final_weights(tmp_path / "s1-one"))
    for run in ("s1-two", "s2-two"):
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["num_samples_seen"] == selected
    capsys.readouterr()
