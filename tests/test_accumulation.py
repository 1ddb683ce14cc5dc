"""Gradient accumulation computes every loss over the whole step's batch (mmkd.training.accumulate).

A step of 64 rows in 4 micro-batches of 16 must give the gradient of the loss over all 64 rows:
stage 1 against open_clip's own `ClipLoss` on the whole batch in one forward; stage 2 with every
term on (CLIP, FD, ICL, relational KL, decision KL) against one forward over the whole batch
(tests/stage2_worker.py), in one process and in two gloo processes under torchrun.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from safetensors.torch import load_file

import stage2_worker
from helpers import COLORS, SHAPES, make_pairs, write_store
from mmkd.data.feature_store import FeatureStore
from mmkd.models.alignment import WEIGHTS_FILE, AlignmentAE, save_alignment
from mmkd.models.student import create_student
from mmkd.teachers.testing import make_open_clip_teacher
from mmkd.training.accumulate import MicroBatch, StepGradients
from mmkd.training.stage1 import ClipTask
from test_stage2_distributed import _run

N, K = 64, 4
ALL_TERMS = ["--distill.target_space", "projection", "--distill.lambda_kl", "1", "--distill.lambda_decision", "1"]


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_stage1_accumulated_gradient_equals_open_clip_loss_on_the_whole_batch():
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    student = create_student("mmkd-tiny-vit", seed=0)
    size = student.preprocess_cfg["size"]
    images = torch.randn(N, 3, size, size)
    tokens = student.tokenizer([f"a {c} {s} number {i}" for i in range(N // 8) for c in COLORS for s in SHAPES])
    task = ClipTask(student, None, torch.device("cpu"))
    module = task.module

    grads = StepGradients(module, task, K, 0, 1, contextlib.nullcontext, contextlib.nullcontext, torch.device("cpu"))
    for m in range(K):
        part = slice(m * N // K, (m + 1) * N // K)
        grads.add(MicroBatch(images[part], tokens[part]))
    terms = grads.backward()
    accumulated = _grads(module)

    model = student.model  # the reference: open_clip's loss over all 64 rows, one forward
    image = model.encode_image(images, normalize=True)
    text = model.encode_text(tokens, normalize=True)
    reference_loss = ClipLoss()(image, text, model.logit_scale.exp())
    reference_loss.backward()
    reference = _grads(module)

    assert abs(terms["loss"].item() - reference_loss.item()) < 1e-5
    assert len(reference) > 10 and max(g.abs().max().item() for g in reference.values()) > 1e-3
    assert _max_diff(accumulated, reference) <= 1e-5

    # The per-micro-batch average (16 negatives per row) is a different gradient: the check can fail.
    for m in range(K):
        part = slice(m * N // K, (m + 1) * N // K)
        out = module(images[part], tokens[part])
        (ClipLoss()(out["image"], out["text"], out["logit_scale"]) / K).backward()
    assert _max_diff(_grads(module), reference) > 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    table = make_pairs(root / "data", n=N)
    store = write_store(table, root / "store", dims=(24, 40))
    save_alignment(AlignmentAE({"t0": 24, "t1": 40}, 64), store / WEIGHTS_FILE, FeatureStore(store), {})
    teacher = make_open_clip_teacher(root / "teacher", embed_dim=32)
    rows = ["image,modality,sample_id"] + [f"img/{i:05d}.png,toy,u{i}" for i in range(N)]
    (root / "data" / "images.csv").write_text("\n".join(rows) + "\n")
    classes = [f"a {c} {s}" for c in COLORS for s in SHAPES]
    (root / "vocab.yaml").write_text("toy:\n  classnames: [" + ", ".join(f"'{c}'" for c in classes)
                                     + "]\n  templates: ['{}', 'a photo of {}']\n")
    common = ["--data", str(table), "--store", str(store), "--out", str(root / "run"), "--batch-size", str(N),
              "--seed", "3", "--distill.lambda_fd", "50", "--distill.lambda_icl", "1",
              "--data.image_only_path", str(root / "data" / "images.csv"),
              "--distill.decision_vocab", str(root / "vocab.yaml"),
              "--distill.decision_teachers", json.dumps({"t0": f"local-dir:{teacher}", "t1": f"local-dir:{teacher}"})]
    return root, {"common": common, "indices": list(range(N)), "split": [40, 24]}


def _in_process(root, spec: dict, cases: dict[str, list[str]], name: str, accum_steps: int = 1, task: str = ""):
    out = root / name
    out.mkdir()
    spec = {**spec, "cases": cases, "accum_steps": accum_steps, "task": task}
    (out / "spec.json").write_text(json.dumps(spec))
    stage2_worker.main(str(out / "spec.json"), str(out))
    return out


def _check_equal(one, other, case: str, terms=("clip", "fd", "icl", "kl", "decision")) -> None:
    a, b = load_file(str(one / f"{case}.safetensors")), load_file(str(other / f"{case}.safetensors"))
    grads = [k for k in a if k.startswith("grad/")]
    assert len(grads) > 10 and a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() <= 1e-5, f"{case}: {k} differs by {(a[k] - b[k]).abs().max()}"
    for term in terms:  # every term is really there
        assert a[f"term/{term}"].item() > 1e-3, (case, term, a[f"term/{term}"])
    assert max(a[k].abs().max().item() for k in grads) > 1e-4


def test_stage2_accumulated_gradient_with_every_term_equals_the_whole_batch(setup):
    root, spec = setup
    whole = _in_process(root, spec, {"all": ALL_TERMS}, "whole")
    accumulated = _in_process(root, spec, {"all": ALL_TERMS + ["--train.accum_steps", str(K)]}, "accum", K)
    _check_equal(whole, accumulated, "all")


@pytest.mark.distributed
@pytest.mark.slow
def test_accumulation_under_torchrun_equals_one_process_on_the_whole_batch(setup):
    """Two gloo ranks (40 + 24 rows, 4 micro-batches each) against one process with one forward over 64 rows."""
    root, spec = setup
    cases = {"all": ALL_TERMS, "adaptor": ["--distill.target_space", "adaptor"]}
    whole = _in_process(root, spec, cases, "whole-2")
    two = _run(root, {**spec, "accum_steps": K}, (), 2, "-accum",
               case_args={c: t + ["--train.accum_steps", str(K)] for c, t in cases.items()})
    _check_equal(whole, two, "all")
    _check_equal(whole, two, "adaptor", terms=("clip", "fd", "icl"))
    stage1 = {"clip": []}
    whole1 = _in_process(root, spec, stage1, "whole-stage1", task="pretrain")
    two1 = _run(root, {**spec, "accum_steps": K, "task": "pretrain"}, (), 2, "-accum-stage1",
                case_args={"clip": ["--train.accum_steps", str(K)]})
    _check_equal(whole1, two1, "clip", terms=("clip",))


def test_the_training_loop_logs_the_whole_batch_loss_with_accumulation(tmp_path):
    """`fit` with 4 x 16 logs the loss of the whole batch of 64: the value one pass of 64 logs."""
    from mmkd.config import build_config
    from mmkd.training.loop import fit

    data = make_pairs(tmp_path / "data", n=N)
    logged = {}
    for k in (1, K):
        out = tmp_path / f"run{k}"
        fit(build_config(None, ["--data", str(data), "--out", str(out), "--batch-size", str(N), "--max-steps", "1",
                                "--train.accum_steps", str(k), "--train.log_every", "1", "--train.progress", "false",
                                "--seed", "4"]), ClipTask)
        logged[k] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss/clip"]
    assert logged[1] > 1.0 and abs(logged[1] - logged[K]) <= 1e-5, logged
