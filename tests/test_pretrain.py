"""Stage 1 end to end: learning, exact resume after SIGKILL, torchrun with 2 gloo processes, bad data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from helpers import COLORS, SHAPES, make_pairs
from mmkd.config import build_config
from mmkd.models.student import create_student
from mmkd.training.checkpoint import latest_checkpoint
from mmkd.training.loop import fit
from mmkd.training.stage1 import ClipTask


@torch.no_grad()
def caption_accuracy(student, table: Path) -> float:
    """Image -> text recall@1 against the set of distinct captions."""
    from mmkd.data.pairs import PairDataset, index_source

    ds = PairDataset(index_source(str(table))[0], student.eval_transform)
    items = [ds[i] for i in range(len(ds))]
    captions = sorted({f"a {c} {s}" for c in COLORS for s in SHAPES})
    model = student.model.eval()
    img = model.encode_image(torch.stack([it["image"] for it in items]), normalize=True)
    txt = model.encode_text(student.tokenizer(captions), normalize=True)
    pred = (img @ txt.T).argmax(dim=1)
    truth = torch.tensor([captions.index(it["caption"]) for it in items])
    return (pred == truth).float().mean().item()


def test_pretraining_lowers_loss_and_raises_recall(tmp_path):
    table = make_pairs(tmp_path / "data", n=128)
    cfg = build_config(None, ["--data", str(table), "--out", str(tmp_path / "run"), "--batch-size", "32",
                              "--epochs", "50", "--max-steps", "160", "--lr", "2e-3", "--optim.warmup_steps", "10",
                              "--train.log_every", "5", "--train.progress", "false"])
    student = create_student("mmkd-tiny-vit", seed=0)
    before = caption_accuracy(student, table)
    summary = fit(cfg, ClipTask, student=student)
    after = caption_accuracy(student, table)
    losses = [json.loads(line)["loss/loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["num_steps"] == 160 and summary["completed"]
    # 8 distinct captions, each ~4 times per batch: the loss cannot fall below about ln 4
    assert sum(losses[-4:]) / 4 < 0.65 * losses[0], losses
    assert after >= 0.6 and after > before + 0.3, (before, after)


def _pretrain_args(data, out, extra=()):
    return ["pretrain", "--data", str(data), "--out", str(out), "--batch-size", "8", "--epochs", "3",
            "--lr", "1e-3", "--optim.warmup_steps", "3", "--train.save_every", "3", "--train.keep_checkpoints", "2",
            "--train.progress", "false", "--seed", "7", *extra]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    data = make_pairs(tmp_path / "data", n=64)  # 8 steps per epoch, 24 steps
    ref = run_cli(*_pretrain_args(data, tmp_path / "ref"), env={"OMP_NUM_THREADS": "1"})  # as the killed run
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mmkd", *_pretrain_args(data, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = out / "checkpoints" / "step_00000009"  # mid-epoch (8 steps per epoch)
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    killed_at = int(latest_checkpoint(out).name.split("_")[1])
    assert 9 <= killed_at < 24

    resumed = run_cli(*_pretrain_args(data, out, ["--resume", "latest"]), env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(latest_checkpoint(tmp_path / "ref") / "open_clip_model.safetensors"))
    b = load_file(str(latest_checkpoint(out) / "open_clip_model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    opt_a = load_file(str(latest_checkpoint(tmp_path / "ref") / "optimizer.safetensors"))
    opt_b = load_file(str(latest_checkpoint(out) / "optimizer.safetensors"))
    assert max((opt_a[k] - opt_b[k]).abs().max().item() for k in opt_a) <= 1e-6
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    s_res = json.loads((out / "summary.json").read_text())
    assert s_ref["num_steps"] == s_res["num_steps"] == 24
    assert s_ref["num_samples_seen"] == s_res["num_samples_seen"] == 192


def test_sigterm_saves_and_exits_143_with_the_resume_command(tmp_path):
    data = make_pairs(tmp_path / "data", n=64)
    out = tmp_path / "run"
    args = _pretrain_args(data, out, ["--epochs", "400", "--train.save_every", "0"])
    proc = subprocess.Popen([sys.executable, "-m", "mmkd", *args], env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143  # 128 + SIGTERM, as a shell reports it: `pretrain && distill` stops
    assert "--resume latest" in proc.stderr.read().decode()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_by_signal"] and not summary["completed"]
    assert latest_checkpoint(out).name == f"step_{summary['num_steps']:08d}"


@pytest.mark.distributed
def test_torchrun_two_processes_matches_one_process(tmp_path):
    data = make_pairs(tmp_path / "data", n=64)
    common = ["--batch-size", "16", "--epochs", "1", "--lr", "1e-3", "--optim.warmup_steps", "1",
              "--train.log_every", "1", "--train.progress", "false", "--seed", "3"]
    single = run_cli("pretrain", "--data", str(data), "--out", str(tmp_path / "one"), *common)
    assert single.returncode == 0, single.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                            "--master_port", "29533", "-m", "mmkd", "pretrain", "--data", str(data),
                            "--out", str(tmp_path / "two"), *common],
                           capture_output=True, text=True, env=env, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert abs(one[0]["loss/loss"] - two[0]["loss/loss"]) <= 1e-5
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["completed"] and summary["world_size"] == 2 and summary["num_samples_seen"] == 64
    # the same global batches and the same gradients: the runs stay together
    assert abs(one[-1]["loss/loss"] - two[-1]["loss/loss"]) <= 1e-3


def test_corrupt_images_are_skipped_and_counted_exactly(tmp_path):
    data = make_pairs(tmp_path / "data", n=40)
    img = tmp_path / "data" / "img"
    good = (img / "00000.png").read_bytes()
    (img / "trunc.png").write_bytes(good[: len(good) // 3])
    (img / "html.png").write_bytes(b"<html>404</html>")
    with open(data, "a") as f:
        f.write("img/trunc.png,a red square,t1,toy\nimg/html.png,a red square,t2,toy\n"
                "img/gone.png,a red square,t3,toy\nimg/00001.png,,t4,toy\n")
    r = run_cli("pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "4",
                "--epochs", "1", "--train.progress", "false")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["completed"]
    assert summary["num_skipped_samples"] == {"unreadable_image": 2, "missing_file": 1, "empty_caption": 1}
    assert summary["num_samples_seen"] == 40


def test_mostly_broken_data_stops_with_a_clear_message(tmp_path):
    rows = "".join(f"gone{i}.png,caption {i}\n" for i in range(64))
    (tmp_path / "t.csv").write_text("image,caption\n" + rows)
    r = run_cli("pretrain", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "run"), "--batch-size", "8",
                "--train.progress", "false")
    assert r.returncode == 2 and "max_skipped_fraction" in r.stderr and "Traceback" not in r.stderr


def test_a_metrics_line_that_cannot_be_written_warns_once_and_training_goes_on(tmp_path):
    from mmkd.training.telemetry import MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True)
    (tmp_path / "metrics.jsonl").mkdir()  # appending to it fails, as on a full disk
    with pytest.warns(UserWarning) as caught:
        logger.log(1, {"loss": 1.0})
        logger.log(2, {"loss": 0.5})
    lost = [w for w in caught if "cannot append" in str(w.message)]
    assert len(lost) == 1, "one warning, for the first lost line only"
    assert logger.lines_lost == 2
    logger.close()


def test_checkpoints_carry_the_hf_text_files_so_the_run_resumes_and_exports_without_the_folder(tmp_path):
    """A student with a Hugging Face text tower: every checkpoint holds the tower's config.json and tokenizer,
    so that a requeued job resumes, and the run exports (open_clip parity), after the folder the run started
    from is gone (a purged scratch disk)."""
    import shutil

    from test_export import build_tiny_bert

    bert = build_tiny_bert(tmp_path / "bert")
    data = make_pairs(tmp_path / "data", n=32)
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(data), "--out", str(run), "--model", "mmkd-tiny-vit-hf",
            "--model.hf_text_path", str(bert), "--batch-size", "8", "--epochs", "2", "--lr", "1e-3",
            "--train.save_every", "1", "--train.progress", "false"]
    r = run_cli(*args, "--max-steps", "2")
    assert r.returncode == 0, r.stderr
    hf_files = {p.name for p in bert.iterdir() if p.name == "config.json" or p.name.startswith("tokenizer")
                or p.name in ("vocab.txt", "special_tokens_map.json")}
    assert {"config.json", "vocab.txt"} <= hf_files
    assert hf_files <= {p.name for p in latest_checkpoint(run).iterdir()}

    shutil.rmtree(bert)
    r = run_cli(*args, "--max-steps", "4", "--resume", "latest")
    assert r.returncode == 0, r.stderr
    newest = latest_checkpoint(run)
    assert newest.name == "step_00000004" and hf_files <= {p.name for p in newest.iterdir()}
    config = json.loads((newest / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == str(bert)  # where the run's text tower came from
    r = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "export"))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "export" / "mmkd_export.json").read_text())
    assert manifest["parity"]["passed"] and manifest["source_checkpoint"] == str(newest.resolve())
