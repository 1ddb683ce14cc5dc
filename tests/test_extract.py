"""`mmkd extract`: stored features equal the libraries' own outputs, availability, crash
safety under SIGKILL, distributed extraction, and refusal of changed teachers."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmkd.data.feature_store import FeatureStore
from mmkd.data.pairs import index_source
from mmkd.errors import UsageError
from mmkd.teachers import load_teacher
from mmkd.teachers.availability import rank_margins
from mmkd.teachers.extract import ExtractOptions, extract_features
from mmkd.teachers.testing import make_hf_clip_teacher, make_open_clip_teacher, make_pairs_csv

from conftest import run_cli
from helpers import assert_same_store, writable_array

BROKEN = (5, 18)
KINDS = ("image", "text", "available", "score")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    csv = make_pairs_csv(root / "data", num_samples=30, broken=BROKEN)
    oc = make_open_clip_teacher(root / "oc", seed=3)
    oc2 = make_open_clip_teacher(root / "oc2", seed=4, embed_dim=24, image_size=24)
    return {"root": root, "csv": csv, "oc": oc, "oc2": oc2}


def _extract(csv, teachers, out, **opts):
    records, _ = index_source(str(csv))
    loaded = {name: load_teacher(spec, name=name) for name, spec in teachers.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same as the subprocess runs (OMP_NUM_THREADS=1): bitwise-comparable stores
    try:
        return extract_features(records, loaded, str(out), ExtractOptions(progress=False, **opts))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(world):
    """An uninterrupted single-process run: the store every other run must equal."""
    out = world["root"] / "reference"
    _extract(world["csv"], {"a": f"local-dir:{world['oc']}", "b": f"local-dir:{world['oc2']}"}, out,
             chunk_rows=4, batch_size=3, candidates=4)
    return out


def test_stored_features_equal_the_libraries_outputs(world, tmp_path):
    import open_clip
    import transformers

    hf_dir = make_hf_clip_teacher(tmp_path / "hf", seed=5)
    out = tmp_path / "store"
    summary = _extract(world["csv"], {"oc": f"local-dir:{world['oc']}", "hf": f"hf:{hf_dir}"}, out,
                       chunk_rows=8, batch_size=5, candidates=5)
    store = FeatureStore(out)
    records, _ = index_source(str(world["csv"]))
    assert store.sample_ids == [r.sample_id for r in records] and store.num_samples == 30
    good = [i for i in range(30) if i not in BROKEN]
    images = [Image.open(records[i].image).convert("RGB") for i in good]
    captions = [records[i].caption for i in good]

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{world['oc']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{world['oc']}")
    with torch.no_grad():
        ref_img = F.normalize(model.eval().encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        ref_txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    np.testing.assert_allclose(store.image_features("oc")[good].astype(np.float32), ref_img.numpy(), atol=1e-3)
    np.testing.assert_allclose(store.text_features("oc")[good].astype(np.float32), ref_txt.numpy(), atol=1e-3)

    hf = transformers.CLIPModel.from_pretrained(str(hf_dir)).eval()
    processor = transformers.CLIPImageProcessor.from_pretrained(str(hf_dir))
    tok = transformers.CLIPTokenizer.from_pretrained(str(hf_dir))
    with torch.no_grad():
        img = hf.get_image_features(**processor(images=images, return_tensors="pt"))
        txt = hf.get_text_features(**tok(captions, padding=True, truncation=True, max_length=24, return_tensors="pt"))
    ref_img = F.normalize(getattr(img, "pooler_output", img), dim=-1).numpy()
    ref_txt = F.normalize(getattr(txt, "pooler_output", txt), dim=-1).numpy()
    np.testing.assert_allclose(store.image_features("hf")[good].astype(np.float32), ref_img, atol=1e-3)
    np.testing.assert_allclose(store.text_features("hf")[good].astype(np.float32), ref_txt, atol=1e-3)
    # float16 rounding, not a looser match: the error is at most half an ulp of float16
    assert np.abs(store.image_features("hf")[good].astype(np.float32) - ref_img).max() <= 2 ** -11

    # unreadable samples keep their rows: zero features, unavailable for every teacher
    for name in ("oc", "hf"):
        assert not store.image_features(name)[list(BROKEN)].any()
        assert np.isnan(store.scores(name)[list(BROKEN)]).all()
    assert not store.available[list(BROKEN)].any()
    assert summary["skipped"] == {"unreadable_image": 2}
    assert summary["teachers"]["oc"]["rows"] == 30


def test_one_resize_serves_every_teacher_within_the_stated_cosine_of_its_own_preprocessing(world, tmp_path):
    """Images of 96 px, teachers of 32 px (two with identical preprocessing, which share one tensor) and
    24 px: each image is resized once, to 32 px. The 32-px teachers' features are those of open_clip's own
    preprocessing of the original image; the 24-px one, resized from the 32-px copy, stays within cosine
    0.99 of its own path."""
    import open_clip

    from mmkd.teachers.extract import TransformPlan

    csv = make_pairs_csv(tmp_path / "data", num_samples=12, seed=3, image_size=96)
    oc3 = make_open_clip_teacher(tmp_path / "oc3", seed=5)  # preprocessing identical to oc's
    folders = {"a": world["oc"], "b": world["oc2"], "c": oc3}
    plan = TransformPlan.of({n: load_teacher(f"local-dir:{f}").preprocess for n, f in folders.items()})
    assert plan.key["a"] == plan.key["c"] != plan.key["b"] and not plan.from_original and plan.resize.size == 32
    # a teacher of the largest size that resizes otherwise (bilinear) keeps its own resize of the original
    from open_clip.transform import image_transform

    own = {"a": load_teacher(f"local-dir:{folders['a']}").preprocess,
           "d": image_transform(32, is_train=False, interpolation="bilinear")}
    mixed = TransformPlan.of(own)
    assert mixed.from_original == {"d"}
    image = Image.open(index_source(str(csv))[0][0].image).convert("RGB")
    assert all(torch.equal(mixed.pixels(image, own)[n], own[n](image)) for n in own)
    _extract(csv, {n: f"local-dir:{f}" for n, f in folders.items()}, tmp_path / "store", chunk_rows=6,
             batch_size=6, candidates=4)
    store = FeatureStore(tmp_path / "store")
    records, _ = index_source(str(csv))
    images = [Image.open(r.image).convert("RGB") for r in records]
    for name, folder in folders.items():
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        with torch.no_grad():
            ref = F.normalize(model.eval().encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
        stored = torch.from_numpy(store.image_features(name)[:].astype(np.float32))
        if name in ("a", "c"):
            np.testing.assert_allclose(stored.numpy(), ref.numpy(), atol=1e-3)
        else:
            assert F.cosine_similarity(stored, ref, dim=-1).min() >= 0.99


def test_rank_availability_is_the_stored_margin(reference, world):
    store = FeatureStore(reference)
    records, _ = index_source(str(world["csv"]))
    for name in store.teachers:
        score, avail = np.asarray(store.scores(name)), np.asarray(store.array(name, "available"))
        readable = ~np.isnan(score)
        assert readable.sum() == 30 - len(BROKEN)
        np.testing.assert_array_equal(avail, readable & (score > 0))
        assert 0 < avail.sum() < readable.sum()  # a random tiny teacher gets some samples right, not all
        # recompute chunk 1 (rows 4..7, one broken) from the stored features: same candidates, same margin
        rows = [i for i in range(4, 8) if i not in BROKEN]
        img = store.image_features(name)[rows].astype(np.float32)
        txt = store.text_features(name)[rows].astype(np.float32)
        np.testing.assert_allclose(rank_margins(img, txt, 4, seed=0, chunk=1), score[rows], atol=5e-3)


def test_threshold_and_always_rules(world, tmp_path):
    _extract(world["csv"], {"a": f"local-dir:{world['oc']}"}, tmp_path / "always", chunk_rows=16,
             availability="always")
    store = FeatureStore(tmp_path / "always")
    assert store.available[:, 0].sum() == 30 - len(BROKEN)
    _extract(world["csv"], {"a": f"local-dir:{world['oc']}"}, tmp_path / "thr", chunk_rows=16,
             availability="threshold", threshold=0.05)
    store = FeatureStore(tmp_path / "thr")
    img, txt = (store.array("a", k).astype(np.float32) for k in ("image", "text"))
    cos = (img * txt).sum(1)
    good = np.array([i not in BROKEN for i in range(30)])
    away = np.abs(cos - 0.05) > 2e-3  # the rule ran on float32 features; skip the float16 rounding band
    np.testing.assert_array_equal(store.available[away, 0], (good & (cos >= 0.05))[away])
    assert 0 < store.available[:, 0].sum() < good.sum()


def test_reapply_availability_without_reextracting(world, reference, tmp_path, capsys):
    import shutil

    from mmkd.cli import main

    out = tmp_path / "re"
    shutil.copytree(reference, out)
    assert main(["extract", "--out", str(out), "--reapply-availability", "--availability", "threshold",
                 "--threshold", "0.1"]) == 0
    assert "mean score" in capsys.readouterr().out
    store, ref = FeatureStore(out), FeatureStore(reference)
    for name in ref.teachers:
        img, txt = (store.array(name, k).astype(np.float32) for k in ("image", "text"))
        readable = ~np.isnan(np.asarray(ref.scores(name)))
        np.testing.assert_array_equal(store.array(name, "available"), readable & ((img * txt).sum(1) >= 0.1))
        np.testing.assert_array_equal(store.image_features(name), ref.image_features(name))
    assert store.verify() == [] and store.manifest_entry("a")["settings"]["availability"] == "threshold"
    assert main(["extract", "--out", str(out), "--reapply-availability", "--availability", "rank"]) == 0
    np.testing.assert_array_equal(FeatureStore(out).available, ref.available)


def _digest(path: Path):
    """Every file of a store but its lock file (which a refused writer takes, and so rewrites)."""
    from mmkd.utils.locks import LOCK_FILE

    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def test_changed_weights_or_dimension_is_refused_before_any_row(world, reference, tmp_path):
    before = _digest(reference)
    records, _ = index_source(str(world["csv"]))
    changed = make_open_clip_teacher(tmp_path / "changed", seed=99)  # same architecture, other weights
    with pytest.raises(UsageError, match="weights changed"):
        extract_features(records, {"a": load_teacher(f"local-dir:{changed}")}, str(reference),
                         ExtractOptions(progress=False, chunk_rows=4, batch_size=3, candidates=4))
    wrong_dim = make_open_clip_teacher(tmp_path / "wide", seed=3, embed_dim=64)
    with pytest.raises(UsageError, match="embedding dim 64"):
        extract_features(records, {"b": load_teacher(f"local-dir:{wrong_dim}")}, str(reference),
                         ExtractOptions(progress=False, chunk_rows=4, batch_size=3, candidates=4))
    with pytest.raises(UsageError, match="settings"):
        extract_features(records, {"a": load_teacher(f"local-dir:{world['oc']}")}, str(reference),
                         ExtractOptions(progress=False, chunk_rows=4, batch_size=3, candidates=7))
    assert _digest(reference) == before


def test_resume_rewrites_only_uncommitted_chunks(world, reference, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(reference, out)
    # simulate a crash: chunks 2 and 7 of teacher a (and 7 of b) never committed, their rows half-written
    for teacher, chunk in (("a", 2), ("a", 7), ("b", 7)):
        (out / "teachers" / teacher / "chunks" / f"{chunk:06d}.json").unlink()
    arr = writable_array(out, "a", "image")
    arr[8:12] = 0.5
    arr.flush()
    del arr
    _extract(world["csv"], {"a": f"local-dir:{world['oc']}", "b": f"local-dir:{world['oc2']}"}, out,
             chunk_rows=4, batch_size=3, candidates=4)
    assert_same_store(out, reference)


def _count_records(store: Path, teacher: str) -> int:
    folder = store / "teachers" / teacher / "chunks"
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def _extract_cmd(world, out):
    return [sys.executable, "-m", "mmkd", "extract", "--data", str(world["csv"]), "--out", str(out),
            "--teacher", f"a=local-dir:{world['oc']}", "--teacher", f"b=local-dir:{world['oc2']}",
            "--chunk-rows", "4", "--batch-size", "3", "--candidates", "4", "--no-progress"]


@pytest.mark.slow  # three extraction subprocesses: about a minute here
def test_sigkill_at_several_points_then_rerun_gives_the_uninterrupted_store(world, reference, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMKD_TEST_COMMIT_DELAY_S": "0.4"}
    for kill_after in (2, 5):  # kill inside the commit window after this many chunks of teacher "a"
        proc = subprocess.Popen(_extract_cmd(world, out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.time() + 240
        while _count_records(out, "a") < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # now inside the next chunk's delay: rows on disk, record not yet written
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with pytest.raises(UsageError, match="incomplete"):
            FeatureStore(out)
        assert kill_after <= _count_records(out, "a") < 8
    done = run_cli(*_extract_cmd(world, out)[3:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "share" not in done.stderr and "teacher" in done.stdout and "mean score" in done.stdout
    assert_same_store(out, reference)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_equal_one_process(world, reference, tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", *_extract_cmd(world, out)[2:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_store(out, reference)
    # both ranks wrote: chunks alternate between them, and every chunk was committed once
    assert _count_records(out, "a") == 8


def test_leftover_chunks_of_one_rank_are_dealt_evenly_over_every_rank():
    """After rank 3 of 4 died, the chunks left are all c with c % 4 == 3: each rank gets a quarter of them,
    every chunk goes to exactly one rank, and each rank's share stays in chunk order."""
    from mmkd.teachers.extract import rank_chunks

    pending = {c: ["a"] for c in range(3, 400, 4)}  # 100 chunks, all = 3 mod 4
    shares = [rank_chunks(pending, rank, 4) for rank in range(4)]
    assert [len(s) for s in shares] == [25, 25, 25, 25]
    assert sorted(c for s in shares for c in s) == sorted(pending)
    assert all(s == sorted(s) for s in shares)
    for world in (2, 3, 7):  # uneven counts: shares differ by at most one chunk
        counts = [len(rank_chunks(range(10), rank, world)) for rank in range(world)]
        assert sum(counts) == 10 and max(counts) - min(counts) <= 1


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_rerun_after_one_rank_died_spreads_its_chunks(world, reference, tmp_path):
    """A 2-rank run lost rank 1 (chunks 1, 3, 5, 7 never committed): the rerun on 2 ranks writes two of
    them on each rank and the store equals the one-process store."""
    import json
    import shutil

    out = tmp_path / "rerun"
    shutil.copytree(reference, out)
    for teacher in ("a", "b"):
        for chunk in (1, 3, 5, 7):
            (out / "teachers" / teacher / "chunks" / f"{chunk:06d}.json").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
           "-m", *_extract_cmd(world, out)[2:]]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_store(out, reference)
    writers = [json.loads((out / "teachers" / "a" / "chunks" / f"{c:06d}.json").read_text())["rank"]
               for c in (1, 3, 5, 7)]
    assert sorted(writers) == [0, 0, 1, 1]


def test_cli_recipe_prints_the_table_and_usage_errors(world, tmp_path, capsys):
    from mmkd.cli import main

    recipe = tmp_path / "extract.yaml"
    out = tmp_path / "r"
    recipe.write_text(f"data: {world['csv']}\nout: {out}\nteachers:\n  a: local-dir:{world['oc']}\n"
                      f"chunk_rows: 16\navailability: always\n")
    assert main(["extract", "--config", str(recipe), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "mean score" in printed.out and "a " in printed.out and "unreadable image 2" in printed.err
    assert FeatureStore(out).manifest["teachers"][0]["settings"]["availability"] == "always"
    assert main(["extract", "--config", str(recipe), "--teacher", "zz=local-dir:/does/not/exist"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["extract", "--teacher", "a=x"]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "--out" in err
    assert main(["extract", "--data", str(world["csv"]), "--out", str(tmp_path / "o"), "--teacher", "mystery"]) == 2
    assert "not a known teacher" in capsys.readouterr().err


BF16_COSINE_TOLERANCE = 0.99  # stated in docs/PERFORMANCE.md; bench/bench_extract_precision.py measures real sizes


def test_bf16_extraction_stays_within_the_stated_cosine_of_fp32(world, tmp_path):
    """bf16 autocast changes only the arithmetic: every stored feature stays within the stated cosine of
    open_clip's own fp32 output, the precision is recorded, and a resume in another precision is refused."""
    import open_clip

    out = tmp_path / "bf16"
    _extract(world["csv"], {"oc": f"local-dir:{world['oc']}"}, out, chunk_rows=8, batch_size=5, candidates=5,
             precision="bf16")
    store = FeatureStore(out)
    records, _ = index_source(str(world["csv"]))
    good = [i for i in range(30) if i not in BROKEN]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{world['oc']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{world['oc']}")
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(records[i].image).convert("RGB")) for i in good])
        ref_img = F.normalize(model.eval().encode_image(pixels), dim=-1)
        ref_txt = F.normalize(model.encode_text(tokenizer([records[i].caption for i in good])), dim=-1)
    for stored, ref in ((store.image_features("oc"), ref_img), (store.text_features("oc"), ref_txt)):
        cos = F.cosine_similarity(torch.from_numpy(stored[good].astype(np.float32)), ref, dim=-1)
        assert cos.min() >= BF16_COSINE_TOLERANCE, cos.min()
        assert not torch.allclose(torch.from_numpy(stored[good].astype(np.float32)), ref, atol=2 ** -11)  # really bf16
    assert store.manifest_entry("oc")["settings"]["precision"] == "bf16"

    partial = tmp_path / "partial"
    _extract(world["csv"], {"oc": f"local-dir:{world['oc']}"}, partial, chunk_rows=8, batch_size=5, candidates=5,
             precision="bf16")
    with pytest.raises(UsageError, match="precision"):
        _extract(world["csv"], {"oc": f"local-dir:{world['oc']}"}, partial, chunk_rows=8, batch_size=5,
                 candidates=5, precision="fp32")
