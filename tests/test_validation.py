"""Validation during training (`--val.data`, `--val.datasets`, `--val.keep_best`, `--init RUN:best`)."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from helpers import make_pairs


def test_keep_best_keeps_the_best_value_and_its_weights(tmp_path):
    """Lower is better for a loss: of 3.0, 2.0, 2.5 the student of the 2.0 is kept, and a resumed run
    compares against it; the files are real checkpoints that load as the student."""
    from safetensors.torch import load_file

    from mmkd.config import build_config
    from mmkd.models.student import create_student
    from mmkd.training.validation import Validator
    from mmkd.utils.dist import env_dist_info

    table = make_pairs(tmp_path / "data", n=8)
    cfg = build_config(None, ["--data", str(table), "--model", "mmkd-tiny-vit", "--val.data", str(table),
                              "--val.keep_best", "val/clip_loss"])
    student = create_student("mmkd-tiny-vit", seed=0)
    param = "logit_scale"

    def validate(validator, step, value):
        with torch.no_grad():
            student.model.logit_scale.fill_(float(step))
        validator._keep_best(step, {"val/clip_loss": value})

    v = Validator(cfg, student, tmp_path, env_dist_info(), torch.device("cpu"), resumed=False)
    for step, value in [(1, 3.0), (2, 2.0), (3, 2.5)]:
        validate(v, step, value)
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert (best["step"], best["value"]) == (2, 2.0)
    assert load_file(str(tmp_path / "best" / "open_clip_model.safetensors"))[param].item() == 2.0
    resumed = Validator(cfg, student, tmp_path, env_dist_info(), torch.device("cpu"), resumed=True)
    validate(resumed, 4, 2.2)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 2
    validate(resumed, 5, 1.5)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 5
    loaded = create_student(str(tmp_path / "best"))
    assert loaded.model.logit_scale.item() == 5.0


def test_val_options_are_checked(tmp_path):
    from mmkd.config import build_config
    from mmkd.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        build_config(None, ["--data", "x.csv", "--val.keep_best", "val/clip_loss", "--val.every", "-1"])
    text = str(e.value)
    assert "val.keep_best: 'val/clip_loss' needs validation pairs; give --val.data PAIRS" in text
    assert "val.every: -1 is not allowed" in text
    with pytest.raises(ConfigError, match="val.keep_best: 'accuracy' is not a validation metric"):
        build_config(None, ["--data", "x.csv", "--val.data", "v.csv", "--val.keep_best", "accuracy"])


@pytest.mark.slow
def test_pretrain_validates_keeps_the_best_and_init_run_best_loads_it(tmp_path):
    """A tiny stage 1 validating every step: the kept step is the lowest logged val/clip_loss, that value
    equals the loss recomputed with open_clip's own loaders on RUN/best, TensorBoard has it, and a second
    run started with --init RUN:best loads exactly that file."""
    import open_clip
    import torch.nn.functional as F
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mmkd.utils.io import sha256_file

    table = make_pairs(tmp_path / "data", n=32)
    val = make_pairs(tmp_path / "val", n=12, seed=1)
    run = tmp_path / "run"
    r = run_cli("pretrain", "--data", str(table), "--model", "mmkd-tiny-vit", "--out", str(run), "--batch-size", "8",
                "--max-steps", "4", "--lr", "1e-3", "--optim.warmup_steps", "0", "--train.progress", "false",
                "--val.data", str(val), "--val.every", "1", "--val.encode_batch_size", "6", "--val.keep_best", "val/clip_loss")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {x["step"]: x["val/clip_loss"] for x in lines if "val/clip_loss" in x}
    assert sorted(logged) == [1, 2, 3, 4]
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["step"] == min(logged, key=logged.get) and best["value"] == logged[best["step"]]

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run / 'best'}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{run / 'best'}")
    rows = [x.split(",") for x in val.read_text().splitlines()[1:]]
    with torch.no_grad():
        img = F.normalize(model.eval().encode_image(torch.stack([preprocess(Image.open(val.parent / p).convert("RGB"))
                                                                  for p, *_ in rows])), dim=-1).double()
        txt = F.normalize(model.encode_text(tokenizer([c for _, c, *_ in rows])), dim=-1).double()
        scale = model.logit_scale.exp().double()
    losses = []
    for start in (0, 6):
        logits = scale * img[start:start + 6] @ txt[start:start + 6].T
        diag = logits.diagonal()
        losses += list(((logits.logsumexp(1) - diag) + (logits.logsumexp(0) - diag)).numpy() / 2)
    assert best["value"] == pytest.approx(float(np.mean(losses)), rel=1e-4)

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/clip_loss")] == [1, 2, 3, 4]

    second = tmp_path / "second"
    r = run_cli("pretrain", "--data", str(table), "--model", "mmkd-tiny-vit", "--out", str(second), "--batch-size", "8",
                "--max-steps", "1", "--train.progress", "false", "--init", f"{run}:best")
    assert r.returncode == 0, r.stderr[-3000:]
    init = json.loads((second / "summary.json").read_text())["init"]["init"]
    assert init["sha256"] == sha256_file(run / "best" / "open_clip_model.safetensors")
    r = run_cli("pretrain", "--data", str(table), "--model", "mmkd-tiny-vit", "--out", str(tmp_path / "third"),
                "--init", f"{second}:best")
    assert r.returncode == 2 and "kept no best checkpoint" in r.stderr and "Traceback" not in r.stderr
