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


def _biomedclip_folder(folder: Path, text_dir: Path) -> None:
    """BiomedCLIP's hub layout: open_clip_config.json (HF text tower), open_clip_pytorch_model.bin, tokenizer."""
    from mmkd.models.student import build_open_clip_model

    model_cfg = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                                  "patch_size": 8},
                 "text_cfg": {"hf_model_name": str(text_dir), "hf_tokenizer_name": str(text_dir),
                              "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                              "context_length": 256}}
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    model = build_open_clip_model(model_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(text_dir / name, folder / name)


@pytest.fixture(scope="module")
def teachers_root(tmp_path_factory):
    from transformers import SwinConfig

    from mmkd.teachers.custom import medclip, pmc_clip, published, unimed_clip
    from mmkd.teachers.testing import make_hf_clip_teacher, make_open_clip_teacher

    root = tmp_path_factory.mktemp("teachers")
    make_open_clip_teacher(root / "bmca-clip", seed=0, embed_dim=768)
    make_open_clip_teacher(root / "quiltnet", seed=1, embed_dim=512)
    make_open_clip_teacher(root / "genmedclip", seed=2, embed_dim=512)
    make_hf_clip_teacher(root / "plip", seed=3, projection_dim=512)
    make_hf_clip_teacher(root / "pubmedclip", seed=4, projection_dim=512)
    shared_text = published.write_text_folder(root / "_biomedbert", _bert(32), WORDS)
    _biomedclip_folder(root / "biomedclip", shared_text)

    torch.manual_seed(5)
    text = published.write_text_folder(root / "unimed-clip" / "text", _bert(32), WORDS)
    ucfg = {"embed_dim": 512, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8}}
    published.save_unimed_clip(root / "unimed-clip", unimed_clip.build_model(ucfg, text), ucfg)

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
        expected = prefixes.get(info.loader) or info.spec_template.split("{")[0]
        assert recipe.spec_template.startswith(expected), name
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


def test_check_folder_finds_and_loads_all_nine(teachers_root):
    results = check_folder(teachers_root)
    assert [r.name for r in results] == list(RECIPES)
    failed = {r.name: r.message for r in results if not r.ok}
    assert not failed
    assert {r.name: r.embed_dim for r in results} == {name: r.embed_dim for name, r in RECIPES.items()}
    assert all(r.provenance.get("sha256") or r.provenance.get("weights") for r in results)


def test_check_cli_reports_missing_incomplete_and_broken_teachers_without_traceback(teachers_root, tmp_path):
    shutil.copytree(teachers_root / "medclip", tmp_path / "medclip")
    shutil.copytree(teachers_root / "pmc-clip", tmp_path / "pmc-clip")
    checkpoint = tmp_path / "pmc-clip" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])  # an interrupted download
    (tmp_path / "quiltnet").mkdir()
    proc = run_cli("teachers", "--check", str(tmp_path), "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    status = {r["name"]: r for r in json.loads(proc.stdout)}
    assert status["MedCLIP"]["status"] == "ok" and status["MedCLIP"]["embed_dim"] == 512
    assert status["PMC-CLIP"]["status"] == "error" and "truncated or corrupt" in status["PMC-CLIP"]["message"]
    assert status["QuiltNet"]["status"] == "incomplete" and "open_clip_config.json" in status["QuiltNet"]["message"]
    assert status["PLIP"]["status"] == "missing" and "vinid/plip" in status["PLIP"]["message"]
    with pytest.raises(UsageError, match="--check: .* is not a folder"):
        check_folder(tmp_path / "nowhere")  # the CLI prints UsageErrors without a traceback, exit code 2
