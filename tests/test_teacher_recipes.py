"""The nine teacher recipes, the paper's extraction recipe, and `mmkd teachers --check DIR`.

`teachers_root` holds all nine teachers in their published layouts (reduced widths, published
embedding dims, random values): open_clip folders for BMCA-CLIP/BiomedCLIP/QuiltNet/GenMedCLIP,
transformers CLIPModel folders for PLIP/PubMedCLIP, and the released containers of
UniMed-CLIP/PMC-CLIP/MedCLIP. `check_folder` must find and load every one.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, run_cli
from mmkd.errors import UsageError
from mmkd.teachers.recipes import RECIPES, check_folder

WORDS = "chest x ray histology slide a of the tumour lung".split()


def _bert(hidden: int, heads: int = 2, layers: int = 1):
    from transformers import BertConfig

    return BertConfig(vocab_size=40, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=64, max_position_embeddings=300)


BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def _biomedclip_folder(folder: Path, text_dir: Path) -> None:
    """BiomedCLIP's hub layout: open_clip_config.json naming the BiomedBERT hub id, open_clip_pytorch_model.bin.
    The text tower's config and tokenizer come from the Hugging Face cache (see `hub_cache`)."""
    from mmkd.models.student import build_open_clip_model

    model_cfg = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                  "patch_size": 8},
                 "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir),
                              "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                              "context_length": 256}}
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    model = build_open_clip_model(model_cfg)
    model_cfg["text_cfg"].update(hf_model_name=BIOMEDBERT, hf_tokenizer_name=BIOMEDBERT)  # as published
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")


def _bmc_clip_cf(path: Path) -> None:
    """BMC_CLIP_CF.pt as BIOMEDICA publishes it (an open_clip training checkpoint, module. keys), but of a
    tiny CLIP: the published ViT-L-14 is written by `make paper-dry-run` (too large for a fast test)."""
    from mmkd.models.student import build_open_clip_model

    torch.manual_seed(0)
    model = build_open_clip_model({"embed_dim": 768, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                    "head_width": 16, "patch_size": 8},
                                   "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                                "layers": 1}})
    path.parent.mkdir(parents=True)
    torch.save({"epoch": 10, "name": "bmc_clip_cf", "state_dict": {f"module.{k}": v for k, v in
                                                                   model.state_dict().items()}}, path)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding (a tiny) BiomedBERT under its hub id, used offline."""
    import huggingface_hub.constants as hub_constants

    from mmkd.teachers.custom import published
    from mmkd.teachers.testing import write_hub_cache

    cache = tmp_path_factory.mktemp("hf-cache")
    text = published.write_text_folder(cache.parent / "biomedbert-src", _bert(32), WORDS)
    write_hub_cache(cache, BIOMEDBERT, text)
    saved = hub_constants.HF_HUB_CACHE, hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_CACHE, hub_constants.HF_HUB_OFFLINE = str(cache), True
    yield cache, text
    hub_constants.HF_HUB_CACHE, hub_constants.HF_HUB_OFFLINE = saved


@pytest.fixture(scope="module")
def teachers_root(tmp_path_factory, hub_cache):
    """The nine teacher folders laid out as their published repositories list their files."""
    from transformers import SwinConfig

    from mmkd.teachers.custom import medclip, pmc_clip, published, unimed_clip
    from mmkd.teachers.testing import make_hf_clip_teacher, make_open_clip_teacher

    root = tmp_path_factory.mktemp("teachers")
    _bmc_clip_cf(root / "bmca-clip" / "BMC_CLIP_CF.pt")
    make_open_clip_teacher(root / "quiltnet", seed=1, embed_dim=512, weights_name="open_clip_pytorch_model.bin")
    make_open_clip_teacher(root / "genmedclip", seed=2, embed_dim=512, weights_name="open_clip_pytorch_model.bin")
    make_hf_clip_teacher(root / "plip", seed=3, projection_dim=512)
    make_hf_clip_teacher(root / "pubmedclip", seed=4, projection_dim=512)
    _biomedclip_folder(root / "biomedclip", hub_cache[1])

    torch.manual_seed(5)
    text = published.write_text_folder(root / "unimed-clip" / "text", _bert(32), WORDS)
    ucfg = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8}}
    published.save_unimed_clip(root / "unimed-clip", unimed_clip.build_model(ucfg, text), ucfg,
                               file_name="unimed-clip-vit-b16.pt")  # the Hub copy's name

    bert768 = _bert(768, heads=12)  # PMC-CLIP's embedding (768) equals its text width
    published.write_text_folder(root / "pmc-clip" / "text", bert768, WORDS)
    cfg = pmc_clip.PmcClipConfig(image_size=64, vision_layers=(1, 1, 1, 1), vision_width=8, vision_head_width=8,
                                 context_length=16, vocab_size=40, text_heads=12, fusion_layers=1)
    published.save_pmc_clip(root / "pmc-clip", pmc_clip.build_model(cfg, bert768))

    bert = _bert(32, layers=2)  # MedCLIP pools hidden layers 1, 2 and the last
    published.write_text_folder(root / "medclip" / "text", bert, WORDS)
    swin = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
    published.save_medclip(root / "medclip", medclip.build_model("swin", bert, swin))
    return root


def test_recipes_cover_the_nine_registry_teachers():
    from mmkd.teachers.registry import KNOWN_TEACHERS

    assert list(RECIPES) == list(KNOWN_TEACHERS) and len(RECIPES) == 9
    prefixes = {"open_clip": "local-dir:", "transformers": "hf:"}
    for name, recipe in RECIPES.items():
        info = KNOWN_TEACHERS[name]
        assert recipe.embed_dim == info.embed_dim and recipe.context_length == info.context_length, name
        expected = prefixes.get(info.loader) if info.spec_template.startswith(("local-dir:", "hf:")) else None
        assert recipe.spec_template.startswith(expected or info.spec_template.split("{")[0]), name
        assert recipe.licence and recipe.obtain and recipe.preprocessing, name
    assert len({r.folder for r in RECIPES.values()}) == 9
    reference = ROOT / "tests" / "data" / "mmkd-reference" / "MMKDCLIP_DATA" / "features"
    authors_keys = {k.rsplit("_", 1)[0] for path in reference.glob("*/*/clips_output.pt")
                    for k in torch.load(path, weights_only=True)}
    assert authors_keys == {r.store_key for r in RECIPES.values()} - {"MedCLIP"}  # the eight in the authors' data


def test_extract_recipe_lists_the_nine_teachers_in_the_documented_layout():
    from mmkd.teachers import cli_extract

    path = ROOT / "configs" / "mmkd_b16" / "extract.yaml"
    recipe = yaml.safe_load(path.read_text())
    assert recipe["teachers"] == {name: r.spec("teachers") for name, r in RECIPES.items()}
    parser = argparse.ArgumentParser()
    cli_extract.add_arguments(parser)
    options = cli_extract._options(parser.parse_args(["--config", str(path)]))  # the extract command's own check
    assert len(options["teachers"]) == 9 and options["data_format"] == "webdataset"


def test_check_folder_finds_and_loads_the_published_layouts(teachers_root):
    results = check_folder(teachers_root)
    assert [r.name for r in results] == list(RECIPES)
    by_name = {r.name: r for r in results}
    # BMC_CLIP_CF.pt is read as the published ViT-L-14: the tiny stand-in is found, opened (module. keys,
    # state_dict container) and refused for its shapes; `make paper-dry-run` checks the full-size one.
    bmca = by_name.pop("BMCA-CLIP")
    assert bmca.status == "error" and "do not fit architecture 'ViT-L-14'" in bmca.message, bmca.message
    assert bmca.spec == f"ViT-L-14@{teachers_root / 'bmca-clip' / 'BMC_CLIP_CF.pt'}"
    failed = {name: r.message for name, r in by_name.items() if not r.ok}
    assert not failed
    assert {n: r.embed_dim for n, r in by_name.items()} == {n: RECIPES[n].embed_dim for n in by_name}
    assert all(r.provenance.get("sha256") or r.provenance.get("weights") for r in by_name.values())
    assert by_name["BiomedCLIP"].provenance["tokenizer"]["context_length"] == 256  # the cached BiomedBERT's


def test_registry_facts_match_the_published_repositories():
    from mmkd.teachers.registry import KNOWN_TEACHERS

    assert KNOWN_TEACHERS["BMCA-CLIP"].hub_id == "BIOMEDICA/BMC_CLIP_CF"
    assert RECIPES["BMCA-CLIP"].markers == ("BMC_CLIP_CF.pt",)
    assert KNOWN_TEACHERS["GenMedCLIP"].spec == "hf-hub:wisdomik/GenMedClip"
    for info in (KNOWN_TEACHERS["UniMed-CLIP"], RECIPES["UniMed-CLIP"]):
        assert info.licence.startswith("CC BY-NC 4.0") and "SA" not in info.licence
    # github.com/RyanWangZf/MedCLIP has an MIT LICENSE file (commit 75d1545); its setup.py classifier says BSD
    for info in (KNOWN_TEACHERS["MedCLIP"], RECIPES["MedCLIP"]):
        assert info.licence.startswith("MIT (LICENSE of") and "BSD" in info.licence


def test_check_cli_reports_missing_incomplete_and_broken_teachers_without_traceback(teachers_root, tmp_path):
    shutil.copytree(teachers_root / "medclip", tmp_path / "medclip")
    shutil.copytree(teachers_root / "pmc-clip", tmp_path / "pmc-clip")
    checkpoint = tmp_path / "pmc-clip" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])  # an interrupted download
    (tmp_path / "quiltnet").mkdir()
    proc = run_cli("teachers", "--check", str(tmp_path), "--json", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    status = {r["name"]: r for r in json.loads(proc.stdout)}
    assert status["MedCLIP"]["status"] == "ok" and status["MedCLIP"]["embed_dim"] == 512
    assert status["PMC-CLIP"]["status"] == "error" and "truncated or corrupt" in status["PMC-CLIP"]["message"]
    assert status["QuiltNet"]["status"] == "incomplete" and "open_clip_config.json" in status["QuiltNet"]["message"]
    assert status["PLIP"]["status"] == "missing" and "vinid/plip" in status["PLIP"]["message"]
    assert str(tmp_path / "plip") in status["PLIP"]["message"]  # the hint names the folder it checked
    assert str(tmp_path / "quiltnet") in status["QuiltNet"]["message"]
    with pytest.raises(UsageError, match="--check: .* is not a folder"):
        check_folder(tmp_path / "nowhere")  # the CLI prints UsageErrors without a traceback, exit code 2
