"""Teachers: open_clip and transformers adapters against the libraries' own outputs, the hub
cache path, provenance, the registry, and the errors a user sees."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmkd
from mmkd.errors import UsageError
from mmkd.teachers import CUSTOM_PREFIXES, load_teacher
from mmkd.teachers.testing import make_hf_clip_teacher, make_open_clip_teacher
from mmkd.utils.io import sha256_file

TEXTS = ["chest x-ray with a nodule in the left lung", "fundus photograph", "a blood smear with many cells " * 6]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 52, 3), dtype=np.uint8)) for i in range(3)]


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    return make_open_clip_teacher(tmp_path_factory.mktemp("oc") / "tiny", seed=1, mean=(0.5, 0.4, 0.3),
                                  std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    return make_hf_clip_teacher(tmp_path_factory.mktemp("hf") / "tiny-clip", seed=2)


def test_open_clip_local_dir_matches_open_clip(open_clip_dir, images):
    import open_clip

    teacher = mmkd.load_teacher(f"local-dir:{open_clip_dir}", name="oc")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")
    model.eval()
    pixels = torch.stack([preprocess(im) for im in images])
    with torch.no_grad():
        ref_img = F.normalize(model.encode_image(pixels), dim=-1)
        ref_txt = F.normalize(model.encode_text(tokenizer(TEXTS)), dim=-1)
    ours = teacher.encode_image(torch.stack([teacher.preprocess(im) for im in images]))
    torch.testing.assert_close(ours, ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(teacher.encode_text(TEXTS), ref_txt, atol=1e-6, rtol=0)
    assert teacher.name == "oc" and teacher.embed_dim == 48
    prov = teacher.provenance
    assert prov["weights"] == {"open_clip_model.safetensors": sha256_file(open_clip_dir / "open_clip_model.safetensors")}
    assert prov["preprocess"]["mean"] == [0.5, 0.4, 0.3] and prov["preprocess"]["size"] == [32, 32]
    assert prov["tokenizer"]["context_length"] == 32 and "open_clip_torch" in prov["versions"]


def test_hf_clip_matches_transformers(hf_clip_dir, images):
    import transformers

    teacher = load_teacher(f"hf:{hf_clip_dir}")
    model = transformers.CLIPModel.from_pretrained(str(hf_clip_dir)).eval()
    processor = transformers.CLIPImageProcessor.from_pretrained(str(hf_clip_dir))
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(hf_clip_dir))
    with torch.no_grad():
        out = model.get_image_features(**processor(images=images, return_tensors="pt"))
        ref_img = F.normalize(getattr(out, "pooler_output", out), dim=-1)
        tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
        out = model.get_text_features(**tokens)
        ref_txt = F.normalize(getattr(out, "pooler_output", out), dim=-1)
    ours = teacher.encode_image(torch.stack([teacher.preprocess(im) for im in images]))
    torch.testing.assert_close(ours, ref_img, atol=1e-6, rtol=0)
    torch.testing.assert_close(teacher.encode_text(TEXTS), ref_txt, atol=1e-6, rtol=0)
    assert ours.dtype == torch.float32 and teacher.embed_dim == 40
    assert teacher.provenance["tokenizer"]["context_length"] == 24
    assert teacher.provenance["weights"] == {"model.safetensors": sha256_file(hf_clip_dir / "model.safetensors")}


def test_siglip_folder_is_detected_and_pads_to_context(tmp_path, images):
    folder = make_hf_clip_teacher(tmp_path / "sig", kind="siglip")
    teacher = load_teacher(str(folder))  # a plain folder: config.json -> transformers
    feats = teacher.encode_image(torch.stack([teacher.preprocess(im) for im in images]))
    assert feats.shape == (3, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3))
    assert teacher.provenance["loader"] == "transformers:SiglipModel"
    assert teacher.tokenize(["a"])["input_ids"].shape[1] == 24


def _fake_hub_cache(cache, repo_id, source):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)


def test_hf_hub_teacher_is_used_from_the_local_cache(tmp_path, monkeypatch, open_clip_dir, images):
    _fake_hub_cache(tmp_path / "hub", "someorg/tiny-teacher", open_clip_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = load_teacher("hf-hub:someorg/tiny-teacher")
    local = load_teacher(f"local-dir:{open_clip_dir}")
    assert teacher.provenance["loader"] == "open_clip:hf-hub"
    assert teacher.provenance["weights"] == local.provenance["weights"]
    pixels = teacher.preprocess(images[0])[None]
    torch.testing.assert_close(teacher.encode_image(pixels), local.encode_image(pixels))


def test_missing_known_teacher_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError) as err:
        load_teacher("QuiltNet")
    msg = str(err.value)
    assert "wisdomik/QuiltNet-B-32" in msg and "huggingface-cli download" in msg and "QuiltNet=local-dir:PATH" in msg
    with pytest.raises(UsageError, match="PLIP=hf:PATH"):
        load_teacher("plip")
    with pytest.raises(UsageError, match="GenMedCLIP=local-dir:PATH"):
        load_teacher("GenMedCLIP")


def test_custom_prefix_without_its_module_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(CUSTOM_PREFIXES, "nope-clip:", "mmkd.teachers.custom.nope_clip")
    with pytest.raises(UsageError, match="mmkd.teachers.custom.nope_clip"):
        load_teacher("nope-clip:/somewhere")


def test_bad_specs_name_the_fix(tmp_path, open_clip_dir):
    with pytest.raises(UsageError, match="does not exist"):
        load_teacher(f"local-dir:{tmp_path / 'nowhere'}")
    with pytest.raises(UsageError, match="cannot load"):
        load_teacher("definitely-not-a-teacher")
    empty = tmp_path / "noweights"
    shutil.copytree(open_clip_dir, empty)
    (empty / "open_clip_model.safetensors").unlink()
    with pytest.raises(UsageError, match="no weights"):
        load_teacher(f"local-dir:{empty}")
    with pytest.raises(UsageError, match="do not fit architecture"):
        load_teacher(f"RN50@{open_clip_dir / 'open_clip_model.safetensors'}")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UsageError, match="not supported"):
        load_teacher(f"hf:{bert}")


def test_registry_lists_nine_teachers(capsys):
    import argparse

    from mmkd.teachers import cli
    from mmkd.teachers.registry import KNOWN_TEACHERS, find_known

    assert len(KNOWN_TEACHERS) == 9
    assert cli.run(argparse.Namespace(json=False, check="")) == 0
    out = capsys.readouterr().out
    for name in ("BMCA-CLIP", "BiomedCLIP", "UniMed-CLIP", "PMC-CLIP", "QuiltNet", "GenMedCLIP", "PLIP",
                 "PubMedCLIP", "MedCLIP"):
        assert name in out
    assert find_known("pmcclip").embed_dim == 768 and find_known("bmca_clip").embed_dim == 768
    assert {t.loader for t in KNOWN_TEACHERS.values()} >= {"open_clip", "transformers"}
