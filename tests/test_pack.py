"""`mmkd data pack` and shard-ordered reading: packed shards name the same samples in the same order
as the originals, their pixels are resized copies, and a loader reads them shard by shard.

Originals are BIOMEDICA-shaped webdataset shards written here with the tarfile module (licence
folders, <key>.jpg / .txt / .json members, full-size JPEGs); teachers are tiny random open_clip
models saved in their library's own format.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from helpers import write_originals
from mmkd.cli import main

SIZE = 64  # packed shorter side; originals are 320 x 240


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    return write_originals(tmp_path_factory.mktemp("biomedica"), {"commercial/000000": 6, "commercial/000001": 5,
                                                                 "noncommercial/000000": 5})


def test_pack_keeps_ids_order_captions_and_metadata_and_resizes_the_pixels(originals, tmp_path, capsys):
    from PIL import Image

    from mmkd.data.pairs import index_source, load_image, read_caption

    sel = tmp_path / "sel"
    code, out = cli(capsys, "data", "select", "--data", originals, "--license", "commercial", "--modality-key",
                    "image_secondary_label", "--out", sel, "--no-progress")
    assert code == 0, out
    packed = tmp_path / "packed"
    code, out = cli(capsys, "data", "pack", sel, "--out", packed, "--size", SIZE, "--quality", 85, "--no-progress")
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["quality"] == 85 and summary["size"] == SIZE and summary["written"]["resized"] == 11
    assert sorted(str(p.relative_to(packed)) for p in packed.rglob("*.tar")) == ["commercial/000000.tar",
                                                                                "commercial/000001.tar"]
    want, _ = index_source(str(sel), progress=False)
    got, _ = index_source(str(packed), progress=False)
    assert list(got.sample_ids) == list(want.sample_ids) and len(got) == 11
    assert [r.modality for r in got] == [r.modality for r in want] and {r.modality for r in got} == {"disc", "square"}
    for a, b in zip(want, got):
        assert read_caption(a) == read_caption(b)
        img = load_image(b, 10 ** 8)
        assert min(img.size) == SIZE and img.size == (round(320 * SIZE / 240), SIZE)
        assert Image.open(io.BytesIO(_member(b.image))).format == "JPEG"
    # metadata and licence folders survive: selecting on the packed shards picks the same samples
    code, out = cli(capsys, "data", "select", "--data", packed, "--select", "image_secondary_label=disc",
                    "--select", "subset=commercial", "--out", tmp_path / "discs", "--no-progress")
    assert code == 0, out
    want_discs, _ = index_source(str(originals), select=["image_secondary_label=disc", "subset=commercial"],
                                 progress=False)
    got_discs, _ = index_source(str(tmp_path / "discs"), progress=False)
    assert list(got_discs.sample_ids) == list(want_discs.sample_ids) and len(got_discs) > 0


def _member(ref: tuple[str, int, int]) -> bytes:
    with open(ref[0], "rb") as f:
        f.seek(ref[1])
        return f.read(ref[2])


def test_pack_resumes_per_shard_and_refuses_other_settings(originals, tmp_path, capsys):
    packed = tmp_path / "packed"
    code, out = cli(capsys, "data", "pack", "--data", originals, "--out", packed, "--size", SIZE, "--no-progress",
                    "--workers", 2)
    assert code == 0, out
    shards = {p: p.read_bytes() for p in sorted(packed.rglob("*.tar"))}
    assert len(shards) == 3
    lost = packed / "commercial" / "000001.tar"
    lost.unlink()  # as if the run was killed before this shard was renamed into place
    (packed / "commercial" / ".000001.tar.tmp-99999").write_bytes(b"half a shard")
    code, out = cli(capsys, "data", "pack", "--data", originals, "--out", packed, "--size", SIZE, "--no-progress")
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["shards_written"], summary["shards_skipped"]) == (1, 2)
    assert {p: p.read_bytes() for p in sorted(packed.rglob("*.tar"))} == shards  # the same bytes again
    code, out = cli(capsys, "data", "pack", "--data", originals, "--out", packed, "--size", 128, "--no-progress")
    assert code == 2 and "size" in out and "Traceback" not in out
    code, out = cli(capsys, "data", "pack", "--data", originals, "--out", originals / "packed", "--no-progress")
    assert code == 2 and "overlaps" in out and not (originals / "packed").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, out = cli(capsys, "data", "pack", "--data", originals, "--out", tmp_path / "notes", "--no-progress")
    assert code == 2 and "not empty" in out and (tmp_path / "notes" / "todo.txt").read_text() == "mine"


@pytest.mark.slow
def test_teacher_features_of_packed_images_match_the_originals(originals, tmp_path, capsys):
    import torch

    from mmkd.data.pairs import index_source, load_image
    from mmkd.teachers import load_teacher
    from mmkd.teachers.testing import make_open_clip_teacher

    packed = tmp_path / "packed"
    code, out = cli(capsys, "data", "pack", "--data", originals, "--out", packed, "--size", SIZE, "--no-progress")
    assert code == 0, out
    teacher = load_teacher(f"local-dir:{make_open_clip_teacher(tmp_path / 't', seed=1, image_size=32)}")
    feats = []
    for data in (originals, packed):
        records, _ = index_source(str(data), progress=False)
        pixels = torch.stack([teacher.preprocess(load_image(r, 10 ** 8)) for r in records])
        with torch.no_grad():
            feats.append(torch.nn.functional.normalize(teacher.encode_image(pixels).double(), dim=-1))
    cosine = (feats[0] * feats[1]).sum(-1)
    assert cosine.min() >= 0.99, cosine
    # A random tiny teacher maps all images close together: each original's nearest packed image must also be
    # its own copy.
    nearest = (feats[0] @ feats[1].T).argmax(dim=1)
    assert nearest.tolist() == list(range(len(nearest)))


def test_shard_ordered_batches_cover_every_sample_once_and_read_shards_in_runs():
    from mmkd.data.sampler import ShardOrderedBatchSampler

    sizes = [3, 17, 8, 11, 5, 20, 4]  # unequal shards
    shard_of = np.repeat(np.arange(len(sizes)), sizes)  # 68 samples
    world, workers, per_rank = 2, 3, 2
    seen: dict[int, list[int]] = {}
    last: list[list[int]] = []
    for epoch in (0, 1):
        for rank in range(world):
            s = ShardOrderedBatchSampler(shard_of, per_rank * world, rank, world, seed=4, num_workers=workers,
                                         buffer=6, open_shards=1)
            s.set_position(epoch)
            batches = list(s)
            assert len(batches) == 68 // 4 and all(len(b) == per_rank for b in batches)
            seen.setdefault(epoch, []).extend(i for b in batches for i in b)
            for w in range(workers):  # a worker's batches visit each shard in one run, one after another
                stream = [shard_of[i] for b in batches[w::workers] for i in b]
                runs = [x for j, x in enumerate(stream) if j == 0 or stream[j - 1] != x]
                assert len(runs) == len(set(stream)), (epoch, rank, w, stream)
            last = batches
            s.set_position(epoch, 5)  # a resumed epoch continues with the same batches
            assert list(s) == batches[5:]
    for epoch, ids in seen.items():
        assert sorted(ids) == list(range(68)), epoch  # 68 = 17 batches of 4: nothing dropped, nothing twice
    assert seen[0] != seen[1]  # shards and samples are reshuffled every epoch
    again = ShardOrderedBatchSampler(shard_of, 4, 1, world, seed=4, num_workers=workers, buffer=6, open_shards=1)
    again.set_position(1)
    other_seed = ShardOrderedBatchSampler(shard_of, 4, 1, world, seed=5, num_workers=workers, buffer=6,
                                          open_shards=1)
    other_seed.set_position(1)
    assert list(again) == last and list(other_seed) != last  # a function of the seed (and epoch, world, workers)


def test_interleaved_shards_mix_clusters_in_a_batch_and_keep_each_shard_read_forward():
    """Shards written cluster by cluster (as BIOMEDICA's): with `open_shards` K a worker's batches mix about K
    shards, each sample is still read once per epoch, no more than K shards are open at any point of a
    worker's stream, and each shard's samples are read window after window in file order."""
    from mmkd.data.sampler import ShardOrderedBatchSampler

    sizes = [25] * 30 + [7, 13]
    shard_of = np.repeat(np.arange(len(sizes)), sizes)  # sample i's shard; file order = i
    world, workers, per_rank, buffer = 2, 2, 8, 16

    def read(open_shards: int, rank: int, epoch: int = 0) -> list[list[int]]:
        s = ShardOrderedBatchSampler(shard_of, per_rank * world, rank, world, seed=7, num_workers=workers,
                                     buffer=buffer, open_shards=open_shards)
        s.set_position(epoch)
        return list(s)

    def distinct(open_shards: int) -> float:
        return float(np.mean([len(set(shard_of[b])) for r in range(world) for b in read(open_shards, r)]))

    k = 6
    assert distinct(k) >= 2 * distinct(1), (distinct(k), distinct(1))
    ids = [i for r in range(world) for b in read(k, r, epoch=1) for i in b]
    usable = len(shard_of) // (per_rank * world) * per_rank * world
    assert len(ids) == usable and len(set(ids)) == usable  # nothing twice; only the partial last batch dropped
    for r in range(world):
        batches = read(k, r)
        for w in range(workers):
            stream = [i for b in batches[w::workers] for i in b]
            first = {}
            last = {}
            for pos, i in enumerate(stream):
                first.setdefault(shard_of[i], pos)
                last[shard_of[i]] = pos
            for pos in range(len(stream)):  # shards begun and not yet finished at this point
                assert sum(first[x] <= pos <= last[x] for x in first) <= k
            for x in first:  # a shard is read forward: samples a buffer or more apart come in file order
                mine = [(pos, i) for pos, i in enumerate(stream) if shard_of[i] == x]
                assert all(i < j for p, i in mine for q, j in mine if q - p >= buffer), (x, mine)


def test_order_and_decode_options_are_refused_where_they_cannot_work(tmp_path, capsys):
    import torch

    from helpers import make_pairs

    data = make_pairs(tmp_path / "data", n=8)
    base = ["pretrain", "--data", data, "--out", tmp_path / "run", "--batch-size", "4", "--epochs", "1",
            "--train.progress", "false"]
    code, out = cli(capsys, *base, "--data.order", "shards")
    assert code == 2 and "--data.order" in out and "Traceback" not in out
    if not torch.cuda.is_available():
        code, out = cli(capsys, *base, "--data.decode", "gpu")
        assert code == 2 and "--data.decode" in out and "cpu" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gpu_decoding_path_gives_the_cpu_pixels_when_run_on_the_cpu(originals):
    """`--data.decode gpu`'s decode-and-crop (torchvision.io.decode_jpeg + resized_crop), run here on the CPU
    device, against the training transform of CPU decoding (PIL + open_clip's RandomResizedCrop) under the
    same seed: the same crop box, the same picture up to the decoders' and resamplers' rounding."""
    import torch

    from mmkd.data.gpu_decode import EncodedPairs, decode_batch
    from mmkd.data.pairs import index_source, load_image
    from mmkd.models.student import build_transforms

    cfg = {"size": 64, "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    train_tf = build_transforms(cfg, "random-resized-crop", 0.5)[0]
    records, _ = index_source(str(originals), progress=False)
    encoded = EncodedPairs(records, (0.5, 1.0))
    for i in range(0, len(records), 3):
        torch.manual_seed(100 + i)
        want = train_tf(load_image(records[i], 10 ** 8))
        torch.manual_seed(100 + i)
        item = encoded[i]
        assert item["image"][0].dim() == 1  # still encoded: a JPEG's bytes
        got = decode_batch([item["image"]], 64, cfg["mean"], cfg["std"], "cpu")[0]
        assert got.shape == want.shape == (3, 64, 64)
        std = torch.tensor(cfg["std"])[:, None, None]
        assert ((got - want) * std).abs().mean() < 0.01, i  # < 1 % of the pixel range on average
        other = train_tf(load_image(records[(i + 1) % len(records)], 10 ** 8))
        assert ((other - want) * std).abs().mean() > 0.03  # another image is much further away
