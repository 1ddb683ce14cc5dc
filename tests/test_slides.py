"""Slides as bags: tissue detection, tiling counts, patch folders, the per-slide embedding cache."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

TILE = 32
TISSUE = (190, 90, 160)  # H&E-like pink: saturation ~0.53
BACKGROUND = 235  # light grey glass


def synthetic_slide(rows: int = 6, cols: int = 9, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """A [rows*TILE, cols*TILE + 10, 3] image (the 10 extra columns cannot hold a full tile) on a grey,
    slightly noisy background; returns it and the (x, y) of the tiles that must be kept.

    Full tissue tiles, one tile 3/4 tissue (kept at min_tissue_fraction 0.5), one 1/4 tissue (skipped).
    """
    rng = np.random.default_rng(seed)
    img = np.clip(BACKGROUND + rng.normal(0, 4, (rows * TILE, cols * TILE + 10, 3)), 0, 255).astype(np.uint8)
    expected = set()
    for r, c in [(0, 1), (1, 1), (1, 2), (2, 5), (3, 5), (3, 6), (4, 0), (5, 8)]:
        img[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = TISSUE
        expected.add((c * TILE, r * TILE))
    img[0:TILE, 4 * TILE:4 * TILE + 24] = TISSUE  # 24/32 = 0.75 tissue
    expected.add((4 * TILE, 0))
    img[5 * TILE:6 * TILE, 3 * TILE:3 * TILE + 8] = TISSUE  # 0.25 tissue
    img[2 * TILE:3 * TILE, cols * TILE:] = TISSUE  # tissue in the strip no full tile covers
    return img, expected


@pytest.fixture(scope="module")
def tiny_model():
    from mmkd.models.adapter import OpenClipEncoder
    from mmkd.models.student import create_student

    s = create_student("mmkd-tiny-vit", seed=0)
    return OpenClipEncoder(s.model, s.eval_transform, s.tokenizer, name="tiny")


def test_saturation_separates_tissue_from_background():
    from mmkd.evaluation.slides import saturation, tissue_mask

    rgb = np.array([[[255, 255, 255], [128, 128, 128], [0, 0, 0], list(TISSUE), [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_allclose(saturation(rgb)[0], [0, 0, 0, (190 - 90) / 190, 1.0], rtol=1e-6)
    assert tissue_mask(rgb, 0.08).tolist() == [[False, False, False, True, True]]


@pytest.mark.parametrize("suffix", ["png", "tiff"])
def test_tiling_skips_background_and_yields_expected_count(tmp_path, suffix):
    from PIL import Image

    from mmkd.evaluation.slides import TiledImage, TilingConfig, open_patches

    img, expected = synthetic_slide()
    path = tmp_path / f"slide.{suffix}"
    Image.fromarray(img).save(path)
    patches = open_patches(path, TilingConfig(tile_size=TILE), "s1")
    assert isinstance(patches, TiledImage)
    assert len(patches) == len(expected) == 9  # of 6 x 9 = 54 grid tiles
    assert {tuple(c) for c in patches.coords.tolist()} == expected
    first = patches.load(0)
    assert first.size == (TILE, TILE) and np.asarray(first).mean(axis=(0, 1)).round().tolist() == list(TISSUE)
    # a stricter tissue fraction drops the 3/4 tile; a zero threshold keeps every full tile
    assert len(open_patches(path, TilingConfig(tile_size=TILE, min_tissue_fraction=0.8), "s1")) == 8
    assert len(open_patches(path, TilingConfig(tile_size=TILE, saturation_threshold=0.0), "s1")) == 54


def test_grid_with_overlap_and_transparent_background(tmp_path):
    from PIL import Image

    from mmkd.evaluation.slides import TilingConfig, open_patches, tile_grid

    assert len(tile_grid(100, 70, 32, 16)) == 5 * 3  # y in 0..64 (5), x in 0..32 (3)
    assert len(tile_grid(20, 70, 32, 32)) == 0
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)  # fully transparent = background
    rgba[:32, :32] = (*TISSUE, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    patches = open_patches(tmp_path / "alpha.png", TilingConfig(tile_size=32), "a")
    assert patches.coords.tolist() == [[0, 0]]


def test_tissue_fraction_on_a_downsampled_mask_matches_full_resolution():
    """The OpenSlide path finds tissue on a low-resolution level; the summed-area lookup must agree."""
    from mmkd.evaluation.slides import TilingConfig, select_tissue_tiles, tissue_mask

    img, expected = synthetic_slide()
    full = select_tissue_tiles(tissue_mask(img, 0.08), img.shape[0], img.shape[1], TilingConfig(tile_size=TILE))
    small_mask = tissue_mask(img[::4, ::4], 0.08)  # a level with downsample 4
    small = select_tissue_tiles(small_mask, img.shape[0], img.shape[1], TilingConfig(tile_size=TILE), downsample=4)
    assert {tuple(c) for c in small.tolist()} == {tuple(c) for c in full.tolist()} == expected


def test_max_patches_is_a_stable_subset(tmp_path):
    from PIL import Image

    from mmkd.evaluation.slides import TilingConfig, open_patches

    img, expected = synthetic_slide()
    Image.fromarray(img).save(tmp_path / "s.png")
    a = open_patches(tmp_path / "s.png", TilingConfig(tile_size=TILE, max_patches=4), "slide-a").coords
    b = open_patches(tmp_path / "s.png", TilingConfig(tile_size=TILE, max_patches=4), "slide-a").coords
    assert len(a) == 4 and a.tolist() == b.tolist() and {tuple(c) for c in a.tolist()} <= expected


def test_openslide_formats_need_the_extra(tmp_path, monkeypatch):
    """Without openslide-python an .svs names the extra; with it, a file OpenSlide cannot read says so."""
    import sys

    from mmkd.errors import DataError, UsageError
    from mmkd.evaluation.slides import TilingConfig, open_patches

    (tmp_path / "x.svs").write_bytes(b"not really a slide")
    with pytest.raises(DataError, match="OpenSlide does not recognise"):
        open_patches(tmp_path / "x.svs", TilingConfig(), "x")
    monkeypatch.setitem(sys.modules, "openslide", None)  # how Python marks a module as not importable
    with pytest.raises(UsageError, match="openslide-python") as err:
        open_patches(tmp_path / "x.svs", TilingConfig(), "x")
    assert not isinstance(err.value, DataError)


def write_slides(root: Path, seed: int = 0) -> Path:
    """Two slides: one large PNG (tiled) and one folder of patch images; returns the folder."""
    from PIL import Image

    img, _ = synthetic_slide(seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(root / "big.png")
    (root / "patches" / "p").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (TILE, TILE, 3), dtype=np.uint8)).save(root / "patches" / "p" / f"{i}.png")
    with open(root / "slides.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "path", "label", "time", "event", "patient_id"])
        w.writerow(["big", "big.png", "tumor", "3.5", "1", "P1"])
        w.writerow(["folder", "patches/p", "normal", "7", "0", ""])
    return root


def test_read_table_and_errors(tmp_path):
    from mmkd.errors import DataError
    from mmkd.evaluation.slides import read_slides_table

    root = write_slides(tmp_path / "ok")
    big, folder = read_slides_table(root)
    assert big.source == (root / "big.png").resolve() and big.label == "tumor"
    assert (big.time, big.event, big.patient_id) == (3.5, 1, "P1")
    assert folder.patient_id is None and folder.event == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "slides.csv").write_text("slide_id,path,event\na,missing.png,2\na,also.png,x\n")
    with pytest.raises(DataError) as err:
        read_slides_table(bad)
    message = str(err.value)
    assert "missing.png" in message and "appears twice" in message and "event" in message
    (bad / "slides.csv").write_text("id,file\n")
    with pytest.raises(DataError, match="slide_id"):
        read_slides_table(bad / "slides.csv")


def test_embeddings_cached_per_slide_keyed_by_model(tmp_path, tiny_model, monkeypatch):
    from safetensors import safe_open

    from mmkd.evaluation.runner import FeatureCache
    from mmkd.evaluation.slides import TilingConfig, embed_slide, read_slides_table

    root = write_slides(tmp_path / "data")
    big, folder = read_slides_table(root)
    cache = FeatureCache(tmp_path / "cache")
    tiling = TilingConfig(tile_size=TILE)
    out = embed_slide(tiny_model, big, tiling, cache, "toy")
    assert out["features"].shape == (9, tiny_model.embed_dim) and out["coords"].shape == (9, 2)
    assert np.allclose(out["features"].norm(dim=1).numpy(), 1.0, atol=1e-5)
    folder_out = embed_slide(tiny_model, folder, tiling, cache, "toy")
    assert folder_out["features"].shape == (5, tiny_model.embed_dim) and (folder_out["coords"] == -1).all()

    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert [f.stem for f in files] == ["big", "folder"]
    assert files[0].parent.parent.parent.name == cache.model_key(tiny_model)  # <model>/<dataset>/slides/<id>
    with safe_open(str(files[0]), framework="pt") as f:
        assert set(f.keys()) == {"features", "coords"}

    # a fresh cache object on the same folder hits the disk without opening the slide again
    again = FeatureCache(tmp_path / "cache")
    with monkeypatch.context() as m:
        m.setattr("mmkd.evaluation.slides.open_patches", lambda *a: pytest.fail("a cache hit opened the slide"))
        assert np.allclose(embed_slide(tiny_model, big, tiling, again, "toy")["features"], out["features"])
        assert (again.hits, again.misses) == (1, 0)
    # a changed slide file is a new fingerprint: encoded again
    stat = (root / "big.png").stat()
    os.utime(root / "big.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    embed_slide(tiny_model, big, tiling, again, "toy")
    assert again.misses == 1
    # other tiling settings are another cache entry
    embed_slide(tiny_model, big, TilingConfig(tile_size=TILE, min_tissue_fraction=0.8), again, "toy")
    assert again.misses == 2


def test_bad_tiling_option_names_the_key():
    from mmkd.errors import UsageError
    from mmkd.evaluation.slides import TilingConfig

    with pytest.raises(UsageError) as err:
        TilingConfig.from_options({"tile_size": 0, "saturation_threshold": 3}, where="datasets.tcga")
    assert "datasets.tcga.tile_size" in str(err.value) and "datasets.tcga.saturation_threshold" in str(err.value)
    assert TilingConfig.from_options({"tile_size": 256, "path": "x"}).tile_size == 256


def test_openslide_tiled_tiff_is_tiled_at_level_zero(tmp_path):
    """A tiled TIFF goes through OpenSlide (the `slides` extra); tissue is found on a 32x thumbnail."""
    import openslide  # noqa: F401  (the `slides` extra, installed by the `test` extra)
    import tifffile
    from mmkd.evaluation.slides import TiledOpenSlide, TilingConfig, open_patches

    img, expected = synthetic_slide(rows=12, cols=16)
    big = np.kron(img, np.ones((4, 4, 1), dtype=np.uint8))  # every 32 px tile becomes 128 px
    tifffile.imwrite(tmp_path / "slide.tif", big, tile=(256, 256), photometric="rgb")
    patches = open_patches(tmp_path / "slide.tif", TilingConfig(tile_size=128), "s")
    assert isinstance(patches, TiledOpenSlide)
    assert {tuple(c) for c in (patches.coords // 4).tolist()} == expected
    x, y = patches.coords[0]
    assert np.array_equal(np.asarray(patches.load(0)), big[y:y + 128, x:x + 128])
