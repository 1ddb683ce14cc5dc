"""`mmkd align --arch authors`: the MMKD-CLIP authors' autoencoder (wangshansong1/MMKD-CLIP @ 127544c,
src/open_clip/models_ae.py MultiCLIP_AE) and its loss, checked on a real feature store against a float64
transcription of their forward written here in their own data layout (per sample, the list of its
available teachers' features; models_ae.py:80-85, 107-144)."""

import numpy as np
import pytest
import torch

from helpers import make_pairs, write_store
from mmkd.data.feature_store import FeatureStore
from mmkd.models.alignment import _reconstruction_step, build_alignment, load_alignment, save_alignment


def _np(layer):
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def _their_loss(model, image_feats, text_feats, clip_names):
    """MultiCLIP_AE.forward without noise and dropout (eval mode), float64: the mean of the per-item MSEs."""
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731

    def lin(layer, a):
        w, b = _np(layer)
        return a @ w.T + b

    def recon(name, x, enc, dec):
        h = lin(model.proj[name], x)
        h = relu(lin(enc[3], relu(lin(enc[0], h))))
        return lin(model.dec_proj[name], lin(dec[2], relu(lin(dec[0], h))))

    losses = []
    for img_list, txt_list, names in zip(image_feats, text_feats, clip_names):
        for img, txt, name in zip(img_list, txt_list, names):
            losses.append(np.mean((recon(name, img, model.encoder["image"], model.decoder["image"]) - img) ** 2))
            losses.append(np.mean((recon(name, txt, model.encoder["text"], model.decoder["text"]) - txt) ** 2))
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("align-authors")
    return FeatureStore(write_store(make_pairs(root / "data", n=24), root / "store", dims=(24, 40)))


def test_authors_loss_matches_their_forward_in_float64(store):
    torch.manual_seed(0)
    model = build_alignment("authors", {"t0": 24, "t1": 40}, 16, hidden_dim=12).eval()
    idx = np.arange(20)
    got = _reconstruction_step(model, store, idx, ["t0", "t1"], 0.0, 0.07).item()
    batch = store.rows(idx, teachers=["t0", "t1"])
    names = [[t for j, t in enumerate(["t0", "t1"]) if batch["available"][s, j]] for s in range(len(idx))]
    image_feats = [[batch["image"][t][s].astype(np.float64) for t in ns] for s, ns in enumerate(names)]
    text_feats = [[batch["text"][t][s].astype(np.float64) for t in ns] for s, ns in enumerate(names)]
    want = _their_loss(model, image_feats, text_feats, names)
    assert 0 < sum(map(len, names)) < 2 * len(idx)  # t0 teaches only some rows: the weighting matters
    assert got == pytest.approx(want, rel=1e-5)
    # mmkd's weighting (per-teacher means, summed) is another number on the same batch
    mmkd = build_alignment("mmkd", {"t0": 24, "t1": 40}, 16)
    mmkd.proj.load_state_dict(model.proj.state_dict())
    assert abs(_reconstruction_step(mmkd, store, idx, ["t0", "t1"], 0.0, 0.07).item() - want) > 1e-3


def test_training_mode_adds_noise_and_dropout(store):
    torch.manual_seed(0)
    model = build_alignment("authors", {"t0": 24, "t1": 40}, 16)
    idx = np.arange(16)
    evaluated = _reconstruction_step(model.eval(), store, idx, ["t0", "t1"], 0.0, 0.07).item()
    trained = _reconstruction_step(model.train(), store, idx, ["t0", "t1"], 0.0, 0.07).item()
    assert trained != pytest.approx(evaluated, rel=1e-6)
    quiet = build_alignment("authors", {"t0": 24, "t1": 40}, 16, dropout=0.0, noise_std=0.0)
    quiet.load_state_dict(model.state_dict())
    assert _reconstruction_step(quiet.train(), store, idx, ["t0", "t1"], 0.0, 0.07).item() == \
        pytest.approx(evaluated, rel=1e-6)


def test_saved_authors_alignment_loads_as_theirs(store, tmp_path):
    model = build_alignment("authors", {"t0": 24, "t1": 40}, 16, hidden_dim=8)
    save_alignment(model, tmp_path / "a.safetensors", store, {})
    loaded = load_alignment(tmp_path / "a.safetensors", store)
    assert loaded.arch == "authors" and loaded.hidden_dim == 8
    x = torch.randn(3, 40)
    torch.testing.assert_close(loaded.encode_many({"t1": x}, "image")["t1"], model.proj["t1"](x))


def test_target_norm_range_is_that_of_the_released_targets():
    """TARGET_NORM_RANGE (what `mmkd align` warns against) is the min and max norm of the authors' released
    projected features (tests/data/mmkd-reference, copied from their repository), to two decimals."""
    from pathlib import Path

    from mmkd.models.alignment import TARGET_NORM_RANGE

    files = sorted((Path(__file__).parent / "data" / "mmkd-reference" / "MMKDCLIP_DATA" / "features").rglob(
        "clips_project_output.pt"))
    assert len(files) == 8
    norms = [float(v.float().norm()) for f in files for v in torch.load(f, weights_only=True).values()]
    assert (round(min(norms), 2), round(max(norms), 2)) == TARGET_NORM_RANGE
