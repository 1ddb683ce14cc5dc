"""Stage 2 end to end on a store written through the real FeatureStoreWriter."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import run_cli
from helpers import COLORS, SHAPES, make_pairs, write_store
from mmkd.training.checkpoint import latest_checkpoint

CLASSES = [f"a {c} {s}" for c in COLORS for s in SHAPES]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    table = make_pairs(root / "data", n=64)
    store = write_store(table, root / "store", dims=(48, 80))
    s1 = run_cli("pretrain", "--data", str(table), "--out", str(root / "s1"), "--batch-size", "16", "--epochs", "2",
                 "--lr", "1e-3", "--optim.warmup_steps", "2", "--train.progress", "false")
    assert s1.returncode == 0, s1.stderr
    return root, table, store


def _distill(root, table, store, out, *extra, env=None):
    return run_cli("distill", "--data", str(table), "--store", str(store), "--init", str(root / "s1"),
                   "--out", str(out), "--batch-size", "16", "--epochs", "4", "--lr", "1e-3",
                   "--train.log_every", "1", "--train.progress", "false", *extra, env=env)


def _terms(run_dir, key):
    return [json.loads(x)[f"loss/{key}"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("space,extra", [("projection", []), ("adaptor", []),
                                         ("relational", ["--distill.lambda_kl", "1.0"])])
def test_distillation_terms_fall(setup, space, extra):
    root, table, store = setup
    if space == "projection" and not (store / "alignment.safetensors").exists():
        r = run_cli("align", "--store", str(store), "--latent-dim", "64", "--steps", "150")
        assert r.returncode == 0, r.stderr
        assert "mean cosine" in r.stdout
    out = root / f"s2-{space}"
    r = _distill(root, table, store, out, "--distill.target_space", space, "--distill.lambda_fd", "50", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    key = "kl" if space == "relational" else "fd"
    values = _terms(out, key)
    assert np.mean(values[-3:]) < 0.85 * np.mean(values[:3]), values
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith(f"loss/{key}:t1") for k in lines[-1]), "per-teacher terms are logged"
    state = json.loads((latest_checkpoint(out) / "train_state.json").read_text())
    assert [t["name"] for t in state["distill"]["teachers"]] == ["t0", "t1"]


def test_excluded_teacher_gets_no_terms(setup):
    root, table, store = setup
    out = root / "s2-loo"
    r = _distill(root, table, store, out, "--distill.target_space", "adaptor", "--exclude-teacher", "t1",
                 "--max-steps", "3")
    assert r.returncode == 0, r.stderr
    keys = set().union(*[json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()])
    assert "loss/fd:t0" in keys and not any(k.startswith("loss/fd:t1") for k in keys)


def test_preflight_refuses_a_store_missing_samples(setup, tmp_path):
    root, table, store = setup
    other = make_pairs(tmp_path / "other", n=70)  # ids s00064.. are not in the store
    r = run_cli("distill", "--data", str(other), "--store", str(store), "--init", str(root / "s1"),
                "--out", str(tmp_path / "x"), "--batch-size", "16", "--train.progress", "false",
                "--distill.target_space", "adaptor")
    assert r.returncode == 2 and "have no row" in r.stderr and "mmkd extract" in r.stderr


def test_preflight_refuses_stale_alignment(setup, tmp_path):
    root, table, store = setup
    r = run_cli("distill", "--data", str(table), "--store", str(store), "--init", str(root / "s1"),
                "--out", str(tmp_path / "x"), "--batch-size", "16", "--train.progress", "false",
                "--distill.alignment", str(tmp_path / "none.safetensors"))
    assert r.returncode == 2 and "mmkd align" in r.stderr


def test_distill_resume_after_sigkill_equals_uninterrupted(setup):
    root, table, store = setup
    args = ["--distill.target_space", "adaptor", "--train.save_every", "2", "--seed", "5"]
    ref = _distill(root, table, store, root / "ref", *args, env={"OMP_NUM_THREADS": "1"})  # as the killed run
    assert ref.returncode == 0, ref.stderr
    out = root / "killed"
    cmd = [sys.executable, "-m", "mmkd", "distill", "--data", str(table), "--store", str(store), "--init",
           str(root / "s1"), "--out", str(out), "--batch-size", "16", "--epochs", "4", "--lr", "1e-3",
           "--train.log_every", "1", "--train.progress", "false", *args]
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step_00000006").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists()
    r = run_cli("distill", "--data", str(table), "--store", str(store), "--init", str(root / "s1"),
                "--out", str(out), "--batch-size", "16", "--epochs", "4", "--lr", "1e-3", "--train.log_every", "1",
                "--train.progress", "false", "--resume", "latest", *args, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    for f in ("open_clip_model.safetensors", "extra.safetensors", "optimizer.safetensors"):
        a = load_file(str(latest_checkpoint(root / "ref") / f))
        b = load_file(str(latest_checkpoint(out) / f))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, f


def _kill_at(cmd: list[str], checkpoint: Path) -> None:
    """Run `cmd` and SIGKILL it once `checkpoint` exists (a preempted job, no chance to save)."""
    proc = subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_distill_resumes_after_its_init_run_trained_on_and_after_it_went(setup, tmp_path):
    """A requeued stage-2 job resumes from its own checkpoint even when the stage-1 run it started from has
    trained on (its newest checkpoint is another, the one --init named pruned) or has been deleted, and ends
    where an uninterrupted run ends."""
    root, table, store = setup
    s1 = tmp_path / "s1"
    shutil.copytree(root / "s1", s1)
    args = ["--data", str(table), "--store", str(store), "--init", str(s1), "--batch-size", "16", "--epochs", "4",
            "--lr", "1e-3", "--train.log_every", "1", "--train.progress", "false", "--distill.target_space",
            "adaptor", "--train.save_every", "2", "--seed", "5"]
    ref = run_cli("distill", *args, "--out", str(tmp_path / "ref"), env={"OMP_NUM_THREADS": "1"})
    assert ref.returncode == 0, ref.stderr
    started_from = latest_checkpoint(s1)
    out = tmp_path / "killed"
    _kill_at([sys.executable, "-m", "mmkd", "distill", *args, "--out", str(out)], out / "checkpoints" / "step_00000006")
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"

    more = run_cli("pretrain", "--data", str(table), "--out", str(s1), "--batch-size", "16", "--epochs", "4",
                   "--lr", "1e-3", "--optim.warmup_steps", "2", "--train.progress", "false", "--resume", "latest")
    assert more.returncode == 0, more.stderr
    assert not started_from.exists() and latest_checkpoint(s1) != started_from  # stage 1 trained on and pruned
    _kill_at([sys.executable, "-m", "mmkd", "distill", *args, "--out", str(out), "--resume", "latest"],
             out / "checkpoints" / "step_00000012")
    assert not (out / "summary.json").exists(), "the resumed run finished before it could be killed"
    assert latest_checkpoint(out).name >= "step_00000008", "the resume did not train"

    shutil.rmtree(s1)  # then the stage-1 run is cleaned up (nor is its kept best checkpoint looked for)
    resume = [f"{s1}:best" if a == str(s1) else a for a in args]
    r = run_cli("distill", *resume, "--out", str(out), "--resume", "latest", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    for f in ("open_clip_model.safetensors", "extra.safetensors", "optimizer.safetensors"):
        a = load_file(str(latest_checkpoint(tmp_path / "ref") / f))
        b = load_file(str(latest_checkpoint(out) / f))
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, f
    s_ref, s_out = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "ref", out))
    assert s_out["num_steps"] == s_ref["num_steps"] == 16
    assert s_out["init"] == s_ref["init"] and str(started_from) in json.dumps(s_ref["init"])


def test_decision_distillation_on_image_only_samples(tmp_path):
    """A teacher that knows the classes labels uncaptioned images; the student's class distribution
    (its own image tower against its own prompt embeddings) learns the teacher's."""
    table = make_pairs(tmp_path / "data", n=48)
    common = ["--batch-size", "16", "--train.progress", "false", "--optim.warmup_steps", "2"]
    t = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "teacher"), "--epochs", "10",
                "--lr", "2e-3", *common)
    assert t.returncode == 0, t.stderr
    teacher = latest_checkpoint(tmp_path / "teacher")  # a checkpoint folder is an open_clip local-dir
    r = run_cli("extract", "--data", str(table), "--teacher", f"T=local-dir:{teacher}",
                "--out", str(tmp_path / "store"), "--availability", "always", "--no-progress")
    assert r.returncode == 0, r.stderr
    make_pairs(tmp_path / "unpaired", n=32, seed=9)
    rows = ["image,modality,sample_id"] + [f"img/{i:05d}.png,toy,u{i}" for i in range(32)]
    (tmp_path / "unpaired" / "images.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "vocab.yaml").write_text(
        "toy:\n  classnames: [" + ", ".join(f"'{c}'" for c in CLASSES) + "]\n  templates: ['{}']\n")
    s1 = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "s1"), "--epochs", "1", "--lr", "1e-4",
                 *common)
    assert s1.returncode == 0, s1.stderr
    out = tmp_path / "s2"
    r = run_cli("distill", "--data", str(table), "--store", str(tmp_path / "store"), "--init", str(tmp_path / "s1"),
                "--out", str(out), "--epochs", "8", "--lr", "1e-3", "--train.log_every", "1", *common,
                "--distill.target_space", "decision", "--distill.lambda_decision", "1",
                "--data.image_only_path", str(tmp_path / "unpaired" / "images.csv"),
                "--distill.decision_vocab", str(tmp_path / "vocab.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    values = _terms(out, "decision")
    assert np.mean(values[-4:]) < 0.7 * np.mean(values[:4]), values
    assert (out / "decision_targets.safetensors").is_file()


def test_distill_init_run_builds_the_runs_own_model(tmp_path):
    """A run trained with --model X: distill --init RUN needs no --model; a conflicting one is refused."""
    table = make_pairs(tmp_path / "data", n=32)
    store = write_store(table, tmp_path / "store", dims=(48, 80))
    s1 = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "s1"), "--model", "mmkd-demo-vit",
                 "--batch-size", "16", "--max-steps", "1", "--train.progress", "false")
    assert s1.returncode == 0, s1.stderr
    common = ["--data", str(table), "--store", str(store), "--batch-size", "16", "--max-steps", "2",
              "--train.progress", "false", "--distill.target_space", "adaptor"]
    r = run_cli("distill", *common, "--init", str(tmp_path / "s1"), "--out", str(tmp_path / "s2"))
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(str(latest_checkpoint(tmp_path / "s1") / "open_clip_model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "s2") / "open_clip_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}  # the demo-vit, not the default
    saved = json.loads((latest_checkpoint(tmp_path / "s2") / "open_clip_config.json").read_text())
    assert saved["model_cfg"]["vision_cfg"]["width"] == 128

    r = run_cli("distill", *common, "--init", str(tmp_path / "s1"), "--out", str(tmp_path / "s3"),
                "--model", "mmkd-tiny-vit")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "conflicts with the model of --init" in r.stderr and "text_cfg.heads: --model has 2, the run 4" in r.stderr
    r = run_cli("distill", *common, "--out", str(tmp_path / "s4"))
    assert r.returncode == 0 and "starts from random weights" in r.stderr, r.stderr[-3000:]


def test_a_teacher_outside_the_store_labels_decisions_with_per_class_prompts(setup, tmp_path):
    """The self-labelling control: the stage-1 student itself (named only in decision_teachers, not in the store)
    gives the targets, over a vocabulary of per-class texts; they equal its zero-shot probabilities computed
    directly with open_clip."""
    import open_clip
    import torch
    from PIL import Image

    root, table, store = setup
    make_pairs(tmp_path / "unpaired", n=12, seed=5)
    rows = ["image,modality,sample_id"] + [f"img/{i:05d}.png,toy,u{i}" for i in range(12)]
    (tmp_path / "unpaired" / "images.csv").write_text("\n".join(rows) + "\n")
    texts = {"red things": ["a red circle", "something red"], "blue things": ["a blue square", "a blue triangle"]}
    (tmp_path / "vocab.yaml").write_text(json.dumps({"toy": {"classnames": list(texts), "prompts": texts}}))
    me = latest_checkpoint(root / "s1")
    out = tmp_path / "s2"
    r = _distill(root, table, store, out, "--max-steps", "1", "--distill.target_space", "decision",
                 "--distill.lambda_decision", "1", "--distill.decision_temperature", "0.1",
                 "--data.image_only_path", str(tmp_path / "unpaired" / "images.csv"),
                 "--distill.decision_vocab", str(tmp_path / "vocab.yaml"),
                 "--distill.decision_teachers", json.dumps({"me": f"local-dir:{me}"}),
                 "--distill.modality_routes", json.dumps({"toy": ["me"]}))
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_file(str(out / "decision_targets.safetensors"))["probs"]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{me}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{me}")
    model.eval()
    with torch.no_grad():
        classes = torch.stack([torch.nn.functional.normalize(model.encode_text(tokenizer(t)), dim=-1).mean(0)
                               for t in texts.values()])
        classes = torch.nn.functional.normalize(classes, dim=-1)
        images = torch.stack([preprocess(Image.open(tmp_path / "unpaired" / "img" / f"{i:05d}.png").convert("RGB"))
                              for i in range(12)])
        feats = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        expected = torch.softmax(feats @ classes.T / 0.1, dim=-1)
    assert got.shape == (12, 2)
    assert np.allclose(got, expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("augment", ["none", "random-resized-crop"])
def test_decision_images_follow_data_augment_and_are_seeded_per_draw(setup, tmp_path, augment):
    """The image-only images of decision distillation get the pairs' training transform (`data.augment`):
    none = open_clip's own eval preprocessing; random crops are a function of the draw number alone."""
    import open_clip
    import torch
    from PIL import Image

    from mmkd.config import build_config
    from mmkd.models.student import create_student
    from mmkd.training.decision import DecisionTargets

    root, table, store = setup
    make_pairs(tmp_path / "unpaired", n=6, seed=7)
    rows = ["image,modality,sample_id"] + [f"img/{i:05d}.png,toy,u{i}" for i in range(6)]
    (tmp_path / "unpaired" / "images.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "vocab.yaml").write_text(json.dumps({"toy": {"classnames": ["red", "blue"]}}))
    me = latest_checkpoint(root / "s1")
    cfg = build_config(None, ["--data", str(table), "--store", str(store), "--init", str(root / "s1"),
                              "--out", str(tmp_path / "s2"), "--data.augment", augment,
                              "--data.image_only_path", str(tmp_path / "unpaired" / "images.csv"),
                              "--distill.decision_vocab", str(tmp_path / "vocab.yaml"),
                              "--distill.lambda_decision", "1"], stage="distill")
    student = create_student("mmkd-tiny-vit", init=str(me))
    targets = DecisionTargets(cfg, {"me": f"local-dir:{me}"}, {"toy": ["me"]}, tmp_path / "s2", student, "cpu")
    rows_ = np.array([0, 1, 2, 0])
    a, _ = targets.load_images(rows_, (32, 32), first_draw=10)
    b, _ = targets.load_images(rows_, (32, 32), first_draw=10)
    assert torch.equal(a, b)  # the same draws give the same images, whatever the global RNG did in between
    if augment == "none":
        _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{me}")
        expected = torch.stack([preprocess(Image.open(tmp_path / "unpaired" / "img" / f"{i:05d}.png").convert("RGB"))
                                for i in rows_])
        assert torch.allclose(a, expected, atol=1e-6)
    else:
        c, _ = targets.load_images(rows_[1:], (32, 32), first_draw=11)
        assert not torch.equal(a[0], a[3])  # row 0 drawn twice is cropped twice
        assert torch.equal(a[1:], c)  # draw 11 is draw 11, whichever batch it starts
