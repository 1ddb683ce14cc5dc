"""Shards read as the user meant them: the caption key they named, every sample of a shard
counted, and the same sample ids whichever path leads to the shards.

One test per case; shards are real tar files written with the tarfile module, commands run
in-process through `mmkd.cli.main`.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

from mmkd.data.pairs import index_source, read_caption
from rel_helpers import add_member, cli, png_bytes


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            add_member(tf, name, data)
    return path


def test_caption_key_names_the_json_field_even_when_a_txt_member_exists(tmp_path):
    meta = {"title": "axial CT of the chest", "article_license": "CC BY"}
    shard = _shard(tmp_path / "shards" / "000000.tar", [
        ("a.png", png_bytes()), ("a.txt", b"Figure 3: see text"), ("a.json", json.dumps(meta).encode())])
    records, _ = index_source(str(shard.parent), caption_key="title", progress=False)
    assert read_caption(records[0]) == "axial CT of the chest"
    default, _ = index_source(str(shard.parent), progress=False)  # BIOMEDICA: the .txt is the caption
    assert read_caption(default[0]) == "Figure 3: see text"


def test_a_key_held_twice_in_a_shard_is_counted_not_dropped_in_silence(tmp_path, capsys):
    shard = _shard(tmp_path / "shards" / "000000.tar", [
        ("a.png", png_bytes(color=(200, 0, 0))), ("a.txt", b"first a"),
        ("b.png", png_bytes(color=(0, 200, 0))), ("b.txt", b"b"),
        ("a.png", png_bytes(color=(0, 0, 200))), ("a.txt", b"second a")])
    records, problems = index_source(str(shard.parent), progress=False)
    assert [r.sample_id for r in records] == ["000000/a", "000000/b"]
    assert read_caption(records[0]) == "first a"  # the first copy is kept, as in file order
    assert problems["duplicate_key"] == 1
    code, out = cli(capsys, "data", "index", "--data", shard.parent, "--no-progress")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["duplicate_keys"] == 1
    assert "000000.tar" in out and "'a'" in out  # the warning names the shard and the key


def test_data_through_a_symlink_gives_the_same_ids_and_subsets(tmp_path, capsys):
    _shard(tmp_path / "nest" / "commercial" / "000000.tar", [("k.png", png_bytes()), ("k.txt", b"a red disc")])
    _shard(tmp_path / "nest" / "other" / "000000.tar", [("k.png", png_bytes()), ("k.txt", b"a blue disc")])
    os.symlink(tmp_path / "nest", tmp_path / "link")
    direct, _ = index_source(str(tmp_path / "nest"), progress=False)
    linked, _ = index_source(str(tmp_path / "link"), progress=False)
    assert [r.sample_id for r in linked] == [r.sample_id for r in direct] == ["commercial/000000/k",
                                                                            "other/000000/k"]
    code, out = cli(capsys, "data", "select", "--data", tmp_path / "link", "--select", "subset=commercial",
                     "--out", tmp_path / "sel", "--no-progress")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["selected"] == 1
