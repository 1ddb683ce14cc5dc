"""Untrusted files: nothing is unpickled with code, pickles that would run code are refused with a
clear message (and the payload never runs), no `pipe:` URLs, forged safetensors fail cleanly."""

from __future__ import annotations

import json
import re
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
import torch

from mmkd.cli import main
from mmkd.errors import UsageError
from mmkd.models.weights import read_state_dict
from rel_helpers import add_member, make_pairs, one_thread, png_bytes

SRC = Path(__file__).resolve().parents[2] / "src" / "mmkd"


class Payload:
    """Unpickling this creates the file `marker` (via builtins.open): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_file(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": Payload(marker)}, path)
    return path


def test_no_code_path_unpickles():
    problems = []
    for file in sorted(SRC.rglob("*.py")):
        text = file.read_text()
        code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may name what is avoided
        for pattern in ("weights_only=False", "pickle.load", "pickle.loads", "allow_pickle=True", "dill.load",
                        "joblib.load", "trust_remote_code=True"):
            if pattern in code:
                problems.append(f"{file.relative_to(SRC)}: {pattern}")
        for call in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", code):
            if "weights_only=True" not in call.group(0):
                problems.append(f"{file.relative_to(SRC)}: {call.group(0)}")
    assert not problems, problems


def test_malicious_pickles_are_refused_everywhere_and_never_run(tmp_path, capsys):
    from mmkd.teachers import load_teacher
    from mmkd.teachers.testing import make_hf_clip_teacher, make_open_clip_teacher

    marker = tmp_path / "PAYLOAD_RAN"
    evil = evil_file(tmp_path / "evil.pt", marker)
    shutil.copy(evil, tmp_path / "evil.bin")
    refused = []

    for path in (evil, tmp_path / "evil.bin"):  # the weights reader behind --init and ARCH@FILE
        with pytest.raises(UsageError, match="(?s)refused to load.*weights_only=True"):
            read_state_dict(path)
        refused.append(path.name)

    data = make_pairs(tmp_path / "data", n=8)
    capsys.readouterr()
    with one_thread():
        code = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--init", str(evil),
                     "--batch-size", "4", "--train.progress", "false"])
    err = capsys.readouterr().err
    assert code == 2 and "refused to load" in err and "Traceback" not in err, err
    refused.append("--init")

    with pytest.raises(UsageError, match="refused to load"):
        load_teacher(f"ViT-B-32@{evil}")
    refused.append("ARCH@FILE")

    oc = make_open_clip_teacher(tmp_path / "oc")  # an open_clip folder whose weights were replaced
    (oc / "open_clip_model.safetensors").unlink()
    shutil.copy(evil, oc / "open_clip_pytorch_model.bin")
    with pytest.raises(UsageError, match="could not load"):
        load_teacher(f"local-dir:{oc}")
    refused.append("local-dir:")

    hf = make_hf_clip_teacher(tmp_path / "hf")  # a transformers folder, the same
    (hf / "model.safetensors").unlink()
    shutil.copy(evil, hf / "pytorch_model.bin")
    with pytest.raises(UsageError, match="could not load"):
        load_teacher(f"hf:{hf}")
    refused.append("hf:")

    from transformers import BertConfig

    from mmkd.teachers.custom import published

    text = published.write_text_folder(tmp_path / "medclip" / "text", BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64), ["a", "b"])
    assert text.is_dir()
    for prefix in ("medclip", "pmc-clip", "unimed-clip"):
        folder = tmp_path / "medclip"
        (folder / "model_config.json").write_text("{}")  # the weights are refused whatever the config says
        with pytest.raises(UsageError, match="weights_only=True|refused"):
            load_teacher(f"{prefix}:{folder}?weights={evil}")
        refused.append(f"{prefix}:")
    assert not marker.exists(), "a pickle payload ran"
    assert len(refused) == 9


def test_no_pipe_urls_and_no_pickle_members_in_shards(tmp_path, capsys):
    from mmkd.data.pairs import PairDataset, index_source

    marker = tmp_path / "PIPE_RAN"
    for spec in (f"pipe:touch {marker}", "pipe:curl -s http://example.com/shard.tar", "https://x/shard-{0..3}.tar",
                 "s3://bucket/shard.tar"):
        with pytest.raises(UsageError, match="URL or pipe"):
            index_source(spec)
    capsys.readouterr()
    assert main(["extract", "--data", f"pipe:touch {marker}", "--out", str(tmp_path / "store"),
                 "--teacher", "x=local-dir:/nowhere", "--no-progress"]) == 2
    assert main(["pretrain", "--data", f"pipe:touch {marker}", "--out", str(tmp_path / "run")]) == 2
    assert not marker.exists()

    shard = tmp_path / "shard.tar"  # a sample with a webdataset pickle member (.pyd): ignored, never loaded
    import pickle

    with tarfile.open(shard, "w") as tf:
        add_member(tf, "a.png", png_bytes())
        add_member(tf, "a.txt", b"a red disc")
        add_member(tf, "a.pyd", pickle.dumps(Payload(marker)))
    records, _ = index_source(str(shard))
    item = PairDataset(records)[0]
    assert item["caption"] == "a red disc" and not marker.exists()


def _forgeries(good: bytes) -> dict[str, bytes]:
    (header_len,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8:8 + header_len])
    name = next(k for k in header if k != "__metadata__")
    beyond = dict(header)
    beyond[name] = {**header[name], "data_offsets": [0, 10 ** 9]}
    beyond_bytes = json.dumps(beyond).encode()
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "huge_header_length": struct.pack("<Q", 2 ** 62) + good[8:],
        "header_not_json": struct.pack("<Q", 12) + b"{not json!!}" + good[8 + header_len:],
        "offsets_beyond_file": struct.pack("<Q", len(beyond_bytes)) + beyond_bytes + good[8 + header_len:],
        "a_pickle_named_safetensors": b"\x80\x04\x95" + good[3:64],
    }


def test_forged_safetensors_fail_cleanly(tmp_path, capsys):
    from safetensors.torch import save_file

    from mmkd.training.checkpoint import latest_checkpoint

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32), "b": torch.zeros(3)}, str(good))
    forged = _forgeries(good.read_bytes())
    for name, data in forged.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(UsageError, match="not a readable safetensors file"):
            read_state_dict(path)

    data = make_pairs(tmp_path / "data", n=8)
    args = ["pretrain", "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "4",
            "--train.progress", "false"]
    capsys.readouterr()
    with one_thread():
        code = main(args[:5] + ["--init", str(tmp_path / "truncated.safetensors")] + args[5:])
        err = capsys.readouterr().err
        assert code == 2 and "truncated or forged" in err and "Traceback" not in err, err
        assert main(args) == 0
        ckpt = latest_checkpoint(tmp_path / "run")  # damage a finished checkpoint, then resume from it
        weights = ckpt / "open_clip_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        capsys.readouterr()
        code = main(args + ["--resume", "latest"])
    err = capsys.readouterr().err
    assert code == 2 and "is unreadable" in err and "earlier checkpoint" in err and "Traceback" not in err, err
