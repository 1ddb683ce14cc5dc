"""`mmkd align`: latent size from the student, epochs over the store, teachers without rows, bad values;
`mmkd distill` saying when a run has no distillation signal."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from helpers import make_pairs
from mmkd.data.feature_store import FeatureStoreWriter, TeacherEntry
from mmkd.data.pairs import index_source

N = 40
# A tiny student whose embedding size is the paper's 512.
STUDENT_512 = {"embed_dim": 512, "quick_gelu": True,
               "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _store(root: Path, table: Path, available: dict[str, np.ndarray], dims=(24, 40), scale: float = 1.0) -> Path:
    records, _ = index_source(str(table))
    rng = np.random.default_rng(0)
    entries = [TeacherEntry(t, d, provenance={"weights": {"w": t}}) for t, d in zip(available, dims)]
    writer = FeatureStoreWriter.open(root, [r.sample_id for r in records], entries, chunk_rows=16)
    for entry in entries:
        feats = {k: rng.normal(size=(len(records), entry.embed_dim)) for k in ("image", "text")}
        feats = {k: scale * v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in feats.items()}
        for c in range(writer.num_chunks):
            a, b = writer.chunk_bounds(c)
            writer.write_chunk(c, entry.name, {"image": feats["image"][a:b], "text": feats["text"][a:b],
                                               "available": available[entry.name][a:b],
                                               "score": np.ones(b - a, np.float32)})
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    table = make_pairs(root / "data", n=N)
    (root / "student512.json").write_text(json.dumps(STUDENT_512))
    return root, table


def test_align_and_distill_a_512d_student(data):
    """The latent size is read from the student, and stage 2 of that student runs on the alignment."""
    root, table = data
    store = _store(root / "store512", table, {"t0": np.arange(N) % 2 == 0, "t1": np.ones(N, bool)})
    student = str(root / "student512.json")
    r = run_cli("align", "--store", str(store), "--student", student, "--epochs", "3", "--batch-size", "16",
                "--no-progress")
    assert r.returncode == 0, r.stderr
    meta = json.loads((store / "alignment.json").read_text())
    assert meta["latent_dim"] == 512
    assert meta["report"]["steps"] == 3 * 3  # 3 epochs of ceil(40 / 16) batches: every row, every pass
    assert meta["report"]["teachers"]["t0"]["rows_available"] == N // 2
    import torch

    assert meta["report"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    out = root / "s2-512"
    r = run_cli("distill", "--data", str(table), "--store", str(store), "--model", student, "--out", str(out),
                "--batch-size", "8", "--max-steps", "2", "--train.progress", "false", "--train.log_every", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no distillation signal" not in r.stderr
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss/fd"] > 0
    from mmkd.training.cli_align import student_embed_dim

    assert student_embed_dim(str(out)) == 512  # a run folder as --student
    assert student_embed_dim("mmkd-b16") == 512 and student_embed_dim("mmkd-tiny-vit") == 64


def test_a_teacher_without_rows_is_reported(data):
    root, table = data
    store = _store(root / "store-idle", table, {"t0": np.ones(N, bool), "t1": np.zeros(N, bool)})
    r = run_cli("align", "--store", str(store), "--latent-dim", "32", "--epochs", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "teacher t1: no available rows" in r.stdout and "--exclude-teacher t1" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("t1 "))
    assert line.split() == ["t1", "0", "-", "-", "-"]
    meta = json.loads((store / "alignment.json").read_text())
    assert meta["report"]["teachers"]["t1"] == {"relative_reconstruction_error": None, "rows_available": 0,
                                                "target_norm": None}
    assert meta["report"]["teachers"]["t0"]["relative_reconstruction_error"] is not None


def test_a_store_without_available_rows_fails_naming_the_fix(data):
    root, table = data
    store = _store(root / "store-none", table, {"t0": np.zeros(N, bool), "t1": np.zeros(N, bool)})
    r = run_cli("align", "--store", str(store), "--latent-dim", "32", "--no-progress")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no sample" in r.stderr and "mmkd extract" in r.stderr and "--reapply-availability" in r.stderr
    assert not (store / "alignment.safetensors").exists()
    # distill on it says, once, that the run has no distillation signal
    out = root / "s2-none"
    r = run_cli("distill", "--data", str(table), "--store", str(store), "--out", str(out), "--batch-size", "8",
                "--max-steps", "1", "--train.progress", "false", "--distill.target_space", "adaptor")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("no distillation signal") == 1 and "CLIP loss only" in r.stderr


@pytest.mark.parametrize("args,flags", [
    (["--latent-dim", "32", "--lr", "-1", "--epochs", "0"], ["--lr", "--epochs"]),
    (["--latent-dim", "32", "--lr", "nan", "--batch-size", "0", "--lambda-nce", "-2"],
     ["--lr", "--batch-size", "--lambda-nce"]),
    (["--student", "mmkd-tiny-vit", "--latent-dim", "512"], ["--latent-dim"]),
    ([], ["--latent-dim", "--student"]),
    (["--student", "no-such-model"], ["--student"]),
    (["--latent-dim", "32", "--device", "tpu", "--epochs", "0"], ["--device", "--epochs"]),
])
def test_bad_values_are_clear_errors(data, args, flags, capsys):
    """Every bad option is named at once, before the store is opened (exit 2; the CLI's own main)."""
    from mmkd.cli import main

    root, _ = data
    assert main(["align", "--store", str(root / "not-read"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmkd align: error:")
    for flag in flags:
        assert flag in err, (flag, err)


def test_align_authors_reports_target_norms_and_warns_far_outside(data):
    """--arch authors trains their autoencoder; every run prints per-teacher target norms, and features
    whose projections are far larger than the authors' released targets (1.09-2.58) get a warning."""
    root, table = data
    store = _store(root / "store-big", table, {"t0": np.ones(N, bool), "t1": np.ones(N, bool)}, scale=200.0)
    r = run_cli("align", "--store", str(store), "--latent-dim", "32", "--epochs", "1", "--no-progress",
                "--arch", "authors")
    assert r.returncode == 0, r.stderr
    meta = json.loads((store / "alignment.json").read_text())
    assert meta["arch"] == "authors" and meta["report"]["arch"] == "authors"
    from mmkd.data.feature_store import FeatureStore
    from mmkd.models.alignment import load_alignment

    model = load_alignment(store / "alignment.safetensors", FeatureStore(store))
    x = FeatureStore(store).rows(np.arange(N), teachers=["t0"])["image"]["t0"].astype(np.float32)
    import torch

    with torch.no_grad():
        mean_norm = model.proj["t0"](torch.from_numpy(x)).norm(dim=-1).mean().item()
    assert meta["report"]["teachers"]["t0"]["target_norm"]["image"]["mean"] == pytest.approx(mean_norm, rel=1e-3)
    line = next(x for x in r.stdout.splitlines() if x.startswith("t0 "))
    assert f"{mean_norm:.3f}" in line.split()
    assert mean_norm > 2.58 * 2 and "teacher t0: the image targets have mean norm" in r.stderr
    assert "teacher t1: the" in r.stderr  # both teachers are named


def test_project_many_equals_each_teachers_linear_and_follows_new_weights():
    """The frozen projections of several teachers against each teacher's own nn.Linear, before and after
    the weights change in place and by load_state_dict."""
    import torch

    from mmkd.models.alignment import AlignmentAE

    torch.manual_seed(0)
    ae = AlignmentAE({"a": 12, "b": 12, "c": 20}, latent_dim=8)
    xs = {t: torch.randn(5, d) for t, d in {"a": 12, "b": 12, "c": 20}.items()}

    def check():
        got = ae.project_many(xs)
        for t, x in xs.items():
            torch.testing.assert_close(got[t], torch.nn.functional.linear(x, ae.proj[t].weight, ae.proj[t].bias))

    check()
    with torch.no_grad():
        ae.proj["a"].weight.mul_(3.0)  # in place: same storage, a new version
    check()
    other = AlignmentAE({"a": 12, "b": 12, "c": 20}, latent_dim=8)
    ae.load_state_dict(other.state_dict())
    check()


def test_align_on_a_gpu_matches_the_cpu(data):
    """--device cuda trains the same autoencoder as the CPU, to float tolerance (needs a GPU)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no GPU visible to PyTorch")
    from mmkd.data.feature_store import FeatureStore
    from mmkd.models.alignment import train_alignment

    root, table = data
    store = FeatureStore(_store(root / "store-gpu", table, {"t0": np.arange(N) % 2 == 0, "t1": np.ones(N, bool)}))
    runs = {d: train_alignment(store, 32, steps=10, batch_size=16, progress=False, device=d, lambda_nce=0.5)
            for d in ("cpu", "cuda")}
    (cpu, r_cpu), (gpu, r_gpu) = runs["cpu"], runs["cuda"]
    assert r_gpu["device"] == "cuda" and all(v.device.type == "cpu" for v in gpu.state_dict().values())
    for k, v in cpu.state_dict().items():
        assert torch.allclose(v, gpu.state_dict()[k], atol=1e-4, rtol=1e-3), k
    assert r_gpu["mean_pair_cosine"] == pytest.approx(r_cpu["mean_pair_cosine"], abs=1e-4)


def _align(store: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkd", "align", "--store", str(store), "--latent-dim", "32", "--steps", "2000",
            "--batch-size", "16", "--no-progress", "--save-every", "100", "--out", str(out), *extra]


@pytest.mark.parametrize("arch,sig", [("mmkd", signal.SIGTERM), ("authors", signal.SIGTERM), ("mmkd", signal.SIGKILL)])
def test_a_stopped_align_continues_to_the_uninterrupted_result(data, tmp_path, arch, sig):
    """SIGTERM (a preemption, SLURM's notice) writes the state and exits 143, SIGKILL leaves the last one written
    every --save-every steps; the same command run again continues, and its weights are bit for bit an
    uninterrupted run's (with --arch authors, whose noise and dropout draw from torch's generator too)."""
    import torch
    from safetensors.torch import load_file

    root, table = data
    store = _store(tmp_path / "store", table, {"t0": np.arange(N) % 2 == 0, "t1": np.ones(N, bool)})
    ref = subprocess.run(_align(store, tmp_path / "ref.safetensors", "--arch", arch), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    out, state = tmp_path / "out.safetensors", tmp_path / "out.partial" / "state.json"
    proc = subprocess.Popen(_align(store, out, "--arch", arch), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not state.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate()
    assert not out.exists(), "the run finished before it could be stopped"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "Run the same command again" in err, err
        assert 100 <= json.loads(state.read_text())["step"] < 2000
    else:
        assert proc.returncode == -signal.SIGKILL
    if arch == "mmkd" and sig == signal.SIGTERM:  # other settings are refused, the state kept
        other = subprocess.run(_align(store, out, "--lr", "2e-3"), capture_output=True, text=True)
        assert other.returncode == 2 and "other settings" in other.stderr and "lr 0.001 then, 0.002 now" in \
            other.stderr and "out.partial" in other.stderr, other.stderr
        assert state.is_file() and not out.exists()
    again = subprocess.run(_align(store, out, "--arch", arch), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "continuing the stopped run" in again.stderr or sig == signal.SIGKILL
    want, got = load_file(str(tmp_path / "ref.safetensors")), load_file(str(out))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("damage", ["state.json", "model.safetensors"])
def test_a_damaged_align_state_is_named_not_used(data, tmp_path, damage, capsys):
    """A state folder whose files were cut short is a usage error naming it; nothing is written."""
    from types import SimpleNamespace

    from mmkd.cli import main
    from mmkd.data.feature_store import FeatureStore
    from mmkd.models.alignment import train_alignment
    from mmkd.models.alignment_state import AlignmentStopped

    root, table = data
    store = _store(tmp_path / "store", table, {"t0": np.ones(N, bool), "t1": np.ones(N, bool)})
    partial = tmp_path / "out.partial"
    with pytest.raises(AlignmentStopped):  # stopped after its first step, as by a signal
        train_alignment(FeatureStore(store), 32, steps=2000, batch_size=16, progress=False, state_dir=partial,
                        stop=SimpleNamespace(requested=True, name="SIGTERM"))
    (partial / damage).write_bytes((partial / damage).read_bytes()[:40])
    args = ["align", "--store", str(store), "--latent-dim", "32", "--steps", "2000", "--batch-size", "16",
            "--no-progress", "--out", str(tmp_path / "out.safetensors")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(partial) in err and ("unreadable" in err or "damaged" in err) and "Traceback" not in err, err
    assert not (tmp_path / "out.safetensors").exists()
