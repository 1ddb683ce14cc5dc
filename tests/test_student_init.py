"""Student initialisation: pretrained towers (image from a CLIP checkpoint, text from an HF folder),
[CLS] pooling, the MMKD-CLIP authors' checkpoint layout, and `--init` of another architecture.

Sources are tiny real models written in their libraries' formats: an open_clip CLIP saved as a
training checkpoint (`state_dict`, `module.` keys, as MetaCLIP's b16_400m.pt), and a BERT saved by
transformers as BertForMaskedLM (`bert.` prefix and an MLM head, as BiomedBERT is published).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from mmkd.errors import UsageError
from mmkd.models.student import build_open_clip_model, create_student

WORDS = "a chest x ray of the lung with nodule red green blue square disc".split()
# mmkd-tiny-vit-hf's image tower (the student under test)
TINY_VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}


def _bert_folder(folder: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A BERT published as BertForMaskedLM (bert.* + cls.predictions.*), with a WordPiece vocab."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(dict.fromkeys(vocab)), hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    BertForMaskedLM(config).save_pretrained(str(folder))
    return folder


def _clip_checkpoint(path: Path, vision: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """A whole open_clip CLIP (ViT + CLIP text tower) saved as a DDP training checkpoint; returns its state."""
    torch.manual_seed(seed)
    model = build_open_clip_model({"embed_dim": 64, "quick_gelu": True, "vision_cfg": vision,
                                   "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2,
                                                "layers": 1}})
    with torch.no_grad():
        model.logit_scale.fill_(3.3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 32, "name": "b16_400m", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return state


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    bert = _bert_folder(root / "biomedbert")
    clip_state = _clip_checkpoint(root / "b16_400m.pt", TINY_VISION)
    return root, bert, clip_state


def test_pretrained_towers_equal_the_source_tensors(sources):
    from transformers import AutoModel

    root, bert, clip_state = sources
    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), image_init=str(root / "b16_400m.pt"),
                             seed=0)
    own = student.model.state_dict()
    visual = [k for k in own if k.startswith("visual.")]
    assert visual and all(torch.equal(own[k], clip_state[k]) for k in visual)
    assert torch.equal(own["logit_scale"], clip_state["logit_scale"])
    # the text tower equals what transformers' own from_pretrained makes of the MaskedLM checkpoint
    reference = AutoModel.from_pretrained(str(bert), add_pooling_layer=False).state_dict()
    text = {k[len("text.transformer."):]: v for k, v in own.items() if k.startswith("text.transformer.")}
    assert set(text) - {"embeddings.position_ids"} == set(reference) - {"embeddings.position_ids"}
    assert all(torch.equal(text[k], reference[k]) for k in reference if not k.endswith("position_ids"))

    image, txt = student.source["towers"]["image"], student.source["towers"]["text"]
    assert image["init"] == "pretrained" and image["num_loaded"] == image["num_tensors"] == len(visual)
    assert image["missing"] == [] and image["mismatched"] == []
    clip_text_keys = [k for k in clip_state if not k.startswith("visual.") and k != "logit_scale"]
    assert image["other_towers"] == len(clip_text_keys)  # MetaCLIP's CLIP text tower is ignored
    assert txt["init"] == "pretrained" and txt["missing"] == ["text.proj.0.weight", "text.proj.2.weight"]
    assert any(k.startswith("cls.predictions.") for k in txt["unexpected"])  # the MLM head is not the tower


def test_cls_pooling_is_the_last_hidden_state_of_cls_through_the_head(sources):
    from transformers import AutoModel, BertTokenizer

    _, bert, _ = sources
    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), seed=0)
    model = student.model.eval()
    ids = student.tokenizer(["a chest x ray", "red square with nodule of the lung"])
    reference = AutoModel.from_pretrained(str(bert), add_pooling_layer=False).eval()
    with torch.no_grad():
        mask = (ids != 0).long()
        cls = reference(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        want = model.text.proj(cls)
        got = model.encode_text(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert ids[0, 0].item() == BertTokenizer(str(bert / "vocab.txt")).cls_token_id
    for name in ("mmkd-b16", "mmkd-tiny-vit-hf"):
        cfg = json.loads((Path(__file__).parents[1] / "src/mmkd/models/configs" / f"{name}.json").read_text())
        assert cfg["text_cfg"]["hf_pooler_type"] == "cls_last_hidden_state_pooler"
    assert not any("pooler" in k for k in model.state_dict())  # no BERT pooler head is built


def test_partial_image_init_is_reported_and_keeps_the_rest(sources, tmp_path):
    root, bert, _ = sources
    one_layer = _clip_checkpoint(tmp_path / "one_layer.pt", {**TINY_VISION, "layers": 1}, seed=4)
    fresh = create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), seed=0, text_pretrained=False)
    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), image_init=str(tmp_path / "one_layer.pt"),
                             image_init_logit_scale=False, seed=0, text_pretrained=False)
    report = student.source["towers"]["image"]
    block1 = [k for k in fresh.model.state_dict() if k.startswith("visual.transformer.resblocks.1.")]
    assert sorted(report["missing"]) == sorted(block1) and report["num_loaded"] == report["num_tensors"] - len(block1)
    own, ref = student.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in block1)  # left at their initialisation
    assert torch.equal(own["visual.transformer.resblocks.0.attn.in_proj_weight"],
                       one_layer["visual.transformer.resblocks.0.attn.in_proj_weight"])
    assert torch.equal(own["logit_scale"], ref["logit_scale"])  # image_init_logit_scale false
    assert student.source["towers"]["text"] == {"init": "random", "why": "--model.text_pretrained false"}


def test_an_init_below_half_of_a_tower_is_refused(sources, tmp_path):
    root, bert, _ = sources
    _clip_checkpoint(tmp_path / "wide.pt", {**TINY_VISION, "width": 96, "head_width": 32}, seed=5)
    with pytest.raises(UsageError, match=r"--model.image_init: .*less than half.*another shape"):
        create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), image_init=str(tmp_path / "wide.pt"))
    wide_bert = _bert_folder(tmp_path / "bert48", hidden=48)
    text_only = tmp_path / "text-of-other-size"
    text_only.mkdir()
    for f in ("vocab.txt", "tokenizer_config.json"):
        (text_only / f).write_text((bert / f).read_text())
    (text_only / "config.json").write_text((bert / "config.json").read_text())
    (text_only / "model.safetensors").write_bytes((wide_bert / "model.safetensors").read_bytes())
    with pytest.raises(UsageError, match=r"--model.hf_text_path: .*less than half"):
        create_student("mmkd-tiny-vit-hf", hf_text_path=str(text_only))
    # the CLI: exit 2, the reasons, no traceback
    from helpers import make_pairs

    table = make_pairs(tmp_path / "data", n=8)
    r = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "run"), "--model", "mmkd-tiny-vit-hf",
                "--model.hf_text_path", str(bert), "--model.image_init", str(tmp_path / "wide.pt"),
                "--batch-size", "4", "--train.progress", "false")
    assert r.returncode == 2 and "less than half" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_authors_student_checkpoint_layout_loads(sources, tmp_path):
    root, bert, _ = sources
    source = create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), seed=3, text_pretrained=False)
    state = source.model.state_dict()
    authors = {("text_encoder." + k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
    assert any(k.startswith("text_encoder.transformer.") for k in authors)
    torch.save({"epoch": 20, "name": "b16_kd", "state_dict": authors, "optimizer": {}}, tmp_path / "MMKD_B16.pth")
    student = create_student("mmkd-tiny-vit-hf", hf_text_path=str(bert), init=str(tmp_path / "MMKD_B16.pth"))
    assert student.source["init"]["layout"] == "mmkd-clip-authors"
    loaded = student.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_init_of_another_architecture_names_the_tensors_and_the_fix(tmp_path):
    from helpers import make_pairs

    table = make_pairs(tmp_path / "data", n=8)
    r = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "s1"), "--model", "mmkd-demo-vit",
                "--batch-size", "4", "--max-steps", "1", "--train.progress", "false")
    assert r.returncode == 0, r.stderr
    r = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "s2"), "--init", str(tmp_path / "s1"),
                "--batch-size", "4", "--max-steps", "1", "--train.progress", "false")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "another shape" in r.stderr and "visual." in r.stderr and "'mmkd-demo-vit'" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) < 6, r.stderr


def test_run_summary_records_each_tower(sources, tmp_path):
    from helpers import make_pairs

    root, bert, _ = sources
    table = make_pairs(tmp_path / "data", n=8)
    r = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "run"), "--model", "mmkd-tiny-vit-hf",
                "--model.hf_text_path", str(bert), "--model.image_init", str(root / "b16_400m.pt"),
                "--batch-size", "4", "--max-steps", "1", "--train.progress", "false")
    assert r.returncode == 0, r.stderr
    towers = json.loads((tmp_path / "run" / "summary.json").read_text())["init"]["towers"]
    assert towers["image"]["num_loaded"] == towers["image"]["num_tensors"] > 0
    assert towers["text"]["num_loaded"] == towers["text"]["num_tensors"] - 2  # the projection head is new
    assert "image tower <- " in r.stderr and "text tower <- " in r.stderr


def test_training_augmentation_is_the_authors_random_resized_crop_seeded_per_sample(tmp_path):
    import yaml
    from PIL import Image
    from torchvision.transforms import InterpolationMode, RandomResizedCrop, Resize

    from mmkd.data.pairs import PairDataset, index_source
    from mmkd.models.student import build_transforms, default_preprocess_cfg, resolve_model_config
    from mmkd.training.augment import SeededSamples
    from helpers import make_pairs

    pp = default_preprocess_cfg(resolve_model_config("mmkd-b16")[0])
    train, evaluation = build_transforms(pp)
    crop = train.transforms[0]
    assert isinstance(crop, RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.9, 1.0) and crop.interpolation == InterpolationMode.BICUBIC
    assert isinstance(evaluation.transforms[0], Resize)
    assert build_transforms(pp, "none")[0] is not None and not isinstance(build_transforms(pp, "none")[0].transforms[0],
                                                                          RandomResizedCrop)
    image = Image.fromarray((torch.rand(300, 260, 3) * 255).byte().numpy())
    crops = {tuple(train(image).shape) for _ in range(3)}
    assert crops == {(3, 224, 224)}

    table = make_pairs(tmp_path / "data", n=4, size=64)
    records = index_source(str(table))[0]
    tiny_train = build_transforms(default_preprocess_cfg(resolve_model_config("mmkd-tiny-vit")[0]),
                                  crop_scale_min=0.3)[0]
    seeded = SeededSamples(PairDataset(records, tiny_train), seed=5)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    pending = torch.cuda._lazy_seed_tracker.get_calls()  # the seeding torch keeps for a CUDA not yet started
    first = seeded[2]["image"]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is untouched
    assert torch.cuda._lazy_seed_tracker.get_calls() == pending  # and no device's seed set (nor its stack walked)
    torch.manual_seed((5 * 1_000_003 * 2_147_483_647 + 2) % (2 ** 63 - 1))  # the crop is the one of that seed
    assert torch.equal(PairDataset(records, tiny_train)[2]["image"], first)
    torch.random.set_rng_state(state)
    assert torch.equal(seeded[2]["image"], first)  # a pure function of (seed, epoch, index)
    seeded.epoch = 1
    assert not torch.equal(seeded[2]["image"], first)  # a new crop in the next epoch

    r = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "run"), "--batch-size", "2",
                "--max-steps", "1", "--train.progress", "false", "--data.crop_scale_min", "0.5")
    assert r.returncode == 0, r.stderr
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert saved["augment"] == "random-resized-crop" and saved["crop_scale_min"] == 0.5


def test_distill_init_of_a_run_with_an_hf_text_tower_needs_no_text_path(sources, tmp_path):
    """A recipe naming the run's architecture (`model.name: mmkd-b16` in distill-paper.yaml) with --init RUN:
    the student is built from the run's own config, which knows its local text tower; weights equal the run's."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from helpers import make_pairs
    from mmkd.models.student import create_student
    from mmkd.training.cli_distill import student_from_init
    from mmkd.utils.runs import latest_checkpoint

    root, bert, _ = sources
    table = make_pairs(tmp_path / "data", n=8)
    r = run_cli("pretrain", "--data", str(table), "--out", str(tmp_path / "run"), "--model", "mmkd-tiny-vit-hf",
                "--model.hf_text_path", str(bert), "--batch-size", "4", "--max-steps", "1",
                "--train.progress", "false")
    assert r.returncode == 0, r.stderr
    model = SimpleNamespace(name="mmkd-tiny-vit-hf", init=str(tmp_path / "run"), context_length=0, hf_text_path="")
    student_from_init(SimpleNamespace(model=model, train=SimpleNamespace(resume="", out=str(tmp_path / "s2"))))
    student = create_student(model.name, model.init, model.hf_text_path)
    saved = load_file(str(latest_checkpoint(tmp_path / "run") / "open_clip_model.safetensors"))
    state = student.model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
