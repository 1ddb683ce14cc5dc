import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from helpers import make_pairs
from mmkd.config import DataConfig
from mmkd.data.pairs import PairDataset, Skip, collate_pairs, index_source
from mmkd.data.sampler import ResumableBatchSampler
from mmkd.errors import UsageError


def _png_bytes(mode="RGB", size=(16, 16)):
    buf = io.BytesIO()
    Image.new(mode, size, color=128 if mode in ("L", "LA") else None).save(buf, format="PNG")
    return buf.getvalue()


def test_csv_and_jsonl_paths_are_relative_to_the_file(tmp_path):
    for fmt in ("csv", "jsonl"):
        table = make_pairs(tmp_path / fmt, n=8, fmt=fmt)
        records, skips = index_source(str(table))
        assert len(records) == 8 and not skips
        ds = PairDataset(records)
        item = ds[3]
        assert item["caption"] == "a yellow square" and item["sample_id"] == "s00003" and item["modality"] == "toy"
        assert item["image"].size == (32, 32)


def test_custom_column_names(tmp_path):
    (tmp_path / "a.png").write_bytes(_png_bytes())
    (tmp_path / "t.csv").write_text("file,text\na.png,hello\n")
    with pytest.raises(UsageError, match="image_key"):
        index_source(str(tmp_path / "t.csv"))
    records, _ = index_source(str(tmp_path / "t.csv"), image_key="file", caption_key="text")
    assert PairDataset(records)[0]["caption"] == "hello"


def test_grayscale_and_rgba_are_converted(tmp_path):
    (tmp_path / "g.png").write_bytes(_png_bytes("L"))
    (tmp_path / "a.png").write_bytes(_png_bytes("RGBA"))
    (tmp_path / "t.csv").write_text("image,caption\ng.png,grey\na.png,alpha\n")
    ds = PairDataset(index_source(str(tmp_path / "t.csv"))[0])
    assert ds[0]["image"].mode == "RGB" and ds[1]["image"].mode == "RGB"


def test_bad_samples_are_skipped_with_reasons(tmp_path):
    good = _png_bytes()
    (tmp_path / "ok.png").write_bytes(good)
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "html.jpg").write_bytes(b"<html><body>not found</body></html>")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "t.csv").write_text(
        "image,caption\nok.png,fine\ntrunc.png,x\nhtml.jpg,x\nempty.png,x\nmissing.png,x\nok.png,\nok.png,   \n")
    ds = PairDataset(index_source(str(tmp_path / "t.csv"))[0])
    reasons = [it.reason if isinstance(it, Skip) else "ok" for it in (ds[i] for i in range(len(ds)))]
    assert reasons == ["ok", "unreadable_image", "unreadable_image", "unreadable_image", "missing_file",
                       "empty_caption", "empty_caption"]


def test_decompression_bomb_is_skipped(tmp_path):
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    (tmp_path / "t.csv").write_text("image,caption\nbig.png,huge\n")
    ds = PairDataset(index_source(str(tmp_path / "t.csv"))[0], max_image_pixels=1_000_000)
    assert isinstance(ds[0], Skip) and ds[0].reason == "decompression_bomb"


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def test_webdataset_shards_txt_and_json_captions(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tf:
        _add(tf, "a.jpg", _png_bytes())  # PIL sniffs the real format
        _add(tf, "a.txt", b"caption a")
        _add(tf, "b.png", _png_bytes("L"))
        _add(tf, "b.json", json.dumps({"caption": "caption b", "pmcid": "PMC1"}).encode())
        _add(tf, "c.png", _png_bytes())
        _add(tf, "c.txt", b"\xff\xfe\xfa")  # not UTF-8
        _add(tf, "d.txt", b"no image")
    records, skips = index_source(str(tmp_path))
    assert [r.sample_id for r in records] == ["shard-000000/a", "shard-000000/b", "shard-000000/c", "shard-000000/d"]
    ds = PairDataset(records)
    assert ds[0]["caption"] == "caption a" and ds[1]["caption"] == "caption b"
    assert ds[2].reason == "bad_caption_encoding" and ds[3].reason == "missing_image"


def test_truncated_shard_keeps_earlier_members(tmp_path):
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        for i in range(4):
            _add(tf, f"{i}.png", _png_bytes())
            _add(tf, f"{i}.txt", f"c{i}".encode())
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    records, skips = index_source(str(shard))
    assert 1 <= len(records) < 4
    ds = PairDataset(records)
    readable = [i for i in range(len(ds)) if not isinstance(ds[i], Skip)]
    assert readable, "members before the damage must stay readable"


def test_pipe_urls_are_refused(tmp_path):
    with pytest.raises(UsageError, match="pipe"):
        index_source("pipe:curl http://x/a.tar", fmt="webdataset")


def test_collate_drops_skips_and_counts():
    import torch

    items = [{"image": torch.zeros(3, 4, 4), "caption": "x", "index": 0, "sample_id": "a", "modality": ""},
             Skip("missing_file"), Skip("missing_file"), Skip("empty_caption")]
    batch = collate_pairs(items)
    assert len(batch) == 1 and batch.skipped == Counter({"missing_file": 2, "empty_caption": 1})


def test_sampler_ranks_partition_the_global_batch_and_resume():
    full = list(ResumableBatchSampler(40, 8, seed=3))
    r0 = list(ResumableBatchSampler(40, 8, rank=0, world_size=2, seed=3))
    r1 = list(ResumableBatchSampler(40, 8, rank=1, world_size=2, seed=3))
    assert [a + b for a, b in zip(r0, r1)] == full
    s = ResumableBatchSampler(40, 8, seed=3)
    s.set_position(0, 2)
    assert list(s) == full[2:]
    s.set_position(1, 0)
    assert list(s) != full and sorted(sum(list(s), [])) == sorted(sum(full, []))


def test_missing_data_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        PairDataset.from_config(DataConfig(path=str(tmp_path / "nope.csv")))
    _ = np
