"""PMC-CLIP, MedCLIP and UniMed-CLIP: published checkpoint layouts load strictly and encode correctly.

Checkpoints are random-valued, built with the published key names and containers through
`mmkd.teachers.custom.published`; architectures are reduced (same key names) except where noted.
`test_full_published_layouts` checks the full-size key sets and shapes against facts read from
the projects' code, without materialising weights; the slow test round-trips full-size models.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmkd.errors import UsageError
from mmkd.teachers.custom import medclip, pmc_clip, published, unimed_clip

WORDS = ("chest x ray shows no sign of disease a the lung ##s tumor brain mri ct scan of with "
         "histology slide colon adenocarcinoma glandular structures normal heart size").split()
TEXTS = ["chest x ray shows no sign of disease", "brain mri tumor"]


def tiny_bert(hidden: int = 32, vocab: int = 64, max_positions: int = 300):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=max_positions)


def probe_images() -> list[Image.Image]:
    gradient = Image.linear_gradient("L").resize((70, 50)).convert("RGB")
    return [gradient, Image.new("RGB", (40, 64), (200, 40, 90))]


def pixels(encoder) -> torch.Tensor:
    return torch.stack([encoder.preprocess(image) for image in probe_images()])


def assert_normalised(feats: torch.Tensor, rows: int, dim: int) -> None:
    assert feats.shape == (rows, dim) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(rows), atol=1e-5)


PMC_TINY = pmc_clip.PmcClipConfig(embed_dim=32, image_size=64, vision_layers=(1, 1, 2, 1), vision_width=8,
                                  vision_head_width=8, context_length=16, vocab_size=64, text_width=32,
                                  text_heads=2, fusion_layers=1)


@pytest.fixture(scope="module")
def pmc_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pmc-clip")
    bert = tiny_bert()
    published.write_text_folder(folder / "text", bert, WORDS)
    torch.manual_seed(0)
    model = pmc_clip.build_model(PMC_TINY, bert).eval()
    published.save_pmc_clip(folder, model)
    return folder, model


def test_pmc_clip_checkpoint_loads_strictly_and_reproduces_the_model(pmc_folder):
    folder, model = pmc_folder
    raw = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert set(raw) >= {"epoch", "state_dict", "optimizer"}
    assert all(k.startswith("module.") for k in raw["state_dict"])  # the published DDP container
    encoder = pmc_clip.load(str(folder))
    assert encoder.embed_dim == 32
    x = pixels(encoder)
    feats_image = encoder.encode_image(x)
    assert_normalised(feats_image, 2, 32)
    with torch.no_grad():
        expected_image = F.normalize(model.visual(x), dim=-1)
        ids = encoder.tokenizer(TEXTS)
        # PMC-CLIP's training code: pad to the context, no attention mask, [CLS] hidden state @ projection.
        hidden = model.text_encoder(input_ids=ids).last_hidden_state
        expected_text = F.normalize(hidden[:, 0] @ model.text_projection, dim=-1)
    assert torch.allclose(feats_image, expected_image, atol=1e-5)
    feats_text = encoder.encode_text(TEXTS)
    assert_normalised(feats_text, 2, 32)
    assert torch.allclose(feats_text, expected_text, atol=1e-5)
    assert ids.shape == (2, PMC_TINY.context_length)  # padded to max_length like the training code
    assert encoder.provenance["sha256"] == hashlib.sha256((folder / "checkpoint.pt").read_bytes()).hexdigest()
    assert encoder.provenance["architecture"]["fusion_layers"] == 1


def test_pmc_clip_extracted_encoder_files_give_the_same_embeddings(pmc_folder, tmp_path):
    folder, model = pmc_folder
    published.save_pmc_clip(tmp_path, model, split=True)
    published.write_text_folder(tmp_path / "text", tiny_bert(), WORDS)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == sorted(pmc_clip.SPLIT_FILES.values())
    full, split = pmc_clip.load(str(folder)), pmc_clip.load(str(tmp_path))
    x = pixels(full)
    assert torch.allclose(full.encode_image(x), split.encode_image(x), atol=1e-6)
    assert torch.allclose(full.encode_text(TEXTS), split.encode_text(TEXTS), atol=1e-6)
    assert split.provenance["architecture"]["layout"] == "split"


@pytest.fixture(scope="module")
def medclip_folder(tmp_path_factory):
    from transformers import SwinConfig

    folder = tmp_path_factory.mktemp("medclip")
    bert = tiny_bert()
    published.write_text_folder(folder / "text", bert, WORDS)
    swin = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 2], num_heads=[1, 2], window_size=4)
    torch.manual_seed(0)
    model = medclip.build_model("swin", bert, swin).eval()
    published.save_medclip(folder, model)
    return folder, model


def test_medclip_swin_checkpoint_uses_published_names_and_loads_strictly(medclip_folder):
    folder, model = medclip_folder
    raw = torch.load(folder / "pytorch_model.bin", weights_only=True)
    block = "vision_model.model.encoder.layers.1.blocks.1."
    for suffix in ("attention.self.query.weight", "attention.self.relative_position_bias_table",
                   "attention.self.relative_position_index", "attention.output.dense.weight",
                   "intermediate.dense.weight", "output.dense.weight", "layernorm_before.weight"):
        assert block + suffix in raw  # transformers-4.x Swin names, as MedCLIP saved them
    assert "text_model.projection_head.weight" in raw and "text_model.projection_head.bias" not in raw
    encoder = medclip.load(str(folder))
    assert encoder.provenance["architecture"]["vision"] == "swin" and encoder.embed_dim == 512
    x = pixels(encoder)
    assert x.shape == (2, 3, 32, 32)
    feats_image = encoder.encode_image(x)
    assert_normalised(feats_image, 2, 512)
    with torch.no_grad():
        assert torch.allclose(feats_image, F.normalize(model.encode_image(x), dim=-1), atol=1e-5)
    assert_normalised(encoder.encode_text(TEXTS), 2, 512)


def test_medclip_swin_weights_match_transformers_own_legacy_loading(medclip_folder, tmp_path):
    """Our key translation agrees with transformers' own loading of a 4.x-named Swin checkpoint."""
    from transformers import SwinModel

    folder, model = medclip_folder
    raw = torch.load(folder / "pytorch_model.bin", weights_only=True)
    prefix = "vision_model.model."
    swin_dir = tmp_path / "swin"
    swin_dir.mkdir()
    model.vision_model.model.config.save_pretrained(str(swin_dir))
    torch.save({k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}, swin_dir / "pytorch_model.bin")
    reference = SwinModel.from_pretrained(str(swin_dir)).eval()
    encoder = medclip.load(str(folder))
    x = pixels(encoder)
    with torch.no_grad():
        ours = encoder.model.vision_model.model(pixel_values=x).pooler_output
        theirs = reference(pixel_values=x).pooler_output
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_medclip_text_feature_is_the_published_pooling_and_independent_of_batch_padding(medclip_folder):
    folder, _ = medclip_folder
    encoder = medclip.load(str(folder))
    alone = encoder.encode_text([TEXTS[1]])
    batched = encoder.encode_text([TEXTS[1], TEXTS[0] + " with a normal heart size"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    # MedCLIPTextModel.forward on an unpadded caption: mean over tokens of hidden layers 1, 2 and last.
    text_model = encoder.model.text_model
    ids = encoder.tokenizer([TEXTS[1]])
    with torch.no_grad():
        states = text_model.model(input_ids=ids, output_hidden_states=True).hidden_states
        stacked = torch.stack([states[1], states[2], states[-1]])  # n_layer, batch, seqlen, dim
        reference = text_model.projection_head(stacked.permute(1, 0, 2, 3).mean(2).mean(1))
    assert torch.allclose(alone, F.normalize(reference, dim=-1), atol=1e-5)


@pytest.mark.slow  # a full torchvision ResNet-50 (~20 s here)
def test_medclip_resnet_variant_is_detected_and_preprocessing_is_grey_padded(tmp_path):
    bert = tiny_bert()
    published.write_text_folder(tmp_path / "text", bert, WORDS)
    torch.manual_seed(0)
    model = medclip.build_model("resnet50", bert).eval()
    published.save_medclip(tmp_path, model)
    raw = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert raw["vision_model.model.fc.weight"].shape == (512, 2048) and "vision_model.model.fc.bias" not in raw
    encoder = medclip.load(str(tmp_path))
    assert encoder.provenance["architecture"]["vision"] == "resnet50"
    x = pixels(encoder)[:1]
    assert x.shape == (1, 3, 224, 224)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey repeated to 3 channels
    black = (0.0 - medclip.IMG_MEAN) / medclip.IMG_STD
    assert torch.allclose(x[0, 0, 0, 0], torch.tensor(black))  # 70x50 image zero-padded to a 224 square
    feats = encoder.encode_image(x)
    assert_normalised(feats, 1, 512)
    with torch.no_grad():
        assert torch.allclose(feats, F.normalize(model.encode_image(x), dim=-1), atol=1e-4)


UNIMED_TINY = {"embed_dim": 512, "quick_gelu": True,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8}}


@pytest.fixture(scope="module")
def unimed_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unimed-clip")
    published.write_text_folder(folder / "text", tiny_bert(), WORDS)
    torch.manual_seed(0)
    model = unimed_clip.build_model(UNIMED_TINY, folder / "text").eval()
    published.save_unimed_clip(folder, model, UNIMED_TINY)
    return folder, model


def test_unimed_clip_loads_strictly_and_equals_open_clip_custom_text_clip(unimed_folder):
    """The fork's CLIP = open_clip's CustomTextCLIP with the same config (text_encoder. -> text.)."""
    from mmkd.models.student import build_open_clip_model

    folder, _ = unimed_folder
    raw = torch.load(folder / "unimed_clip_vit_b16.pt", weights_only=True)["state_dict"]
    assert "module.text_encoder.proj.0.weight" in raw and "module.visual.proj" in raw
    assert raw["module.text_encoder.proj.0.weight"].shape == (272, 32)  # (768 + 512) // 2 at full size
    encoder = unimed_clip.load(str(folder))
    text_dir = str(folder / "text")
    reference = build_open_clip_model({
        **UNIMED_TINY, "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir, "hf_proj_type": "mlp",
                                    "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}}).eval()
    state = {k[len("module."):].replace("text_encoder.", "text.", 1): v for k, v in raw.items()
             if not k.endswith("position_ids")}
    reference.load_state_dict(state, strict=True)
    x = pixels(encoder)
    ids = encoder.tokenizer(TEXTS)
    assert ids.shape == (2, 256)
    with torch.no_grad():
        assert torch.allclose(encoder.encode_image(x), F.normalize(reference.encode_image(x), dim=-1), atol=1e-5)
        assert torch.allclose(encoder.encode_text(TEXTS), F.normalize(reference.encode_text(ids), dim=-1), atol=1e-5)
    assert_normalised(encoder.encode_text(TEXTS), 2, 512)


# ---- wrong and damaged checkpoints: a UsageError naming the problem, never a traceback ----

def _resave(src: dict, path, drop: tuple[str, ...] = (), wrap=lambda s: s):
    state = {k: v for k, v in src.items() if not any(d in k for d in drop)}
    torch.save(wrap(state), path)


def test_missing_keys_are_named(pmc_folder, medclip_folder, unimed_folder, tmp_path):
    cases = [
        (pmc_clip, pmc_folder[0], "checkpoint.pt", "visual.layer3.1.", "visual.layer3.1.conv1.weight"),
        (medclip, medclip_folder[0], "pytorch_model.bin", "text_model.projection_head",
         "text_model.projection_head.weight"),
        (unimed_clip, unimed_folder[0], "unimed_clip_vit_b16.pt", "visual.transformer.resblocks.1.",
         "visual.transformer.resblocks.1.attn.in_proj_weight"),
    ]
    for module, folder, file_name, drop, named in cases:
        raw = torch.load(folder / file_name, weights_only=True)
        broken = tmp_path / module.TEACHER / file_name
        broken.parent.mkdir()
        if "state_dict" in raw:
            _resave(raw["state_dict"], broken, drop=(drop,), wrap=lambda s: {"epoch": 1, "state_dict": s})
        else:
            _resave(raw, broken, drop=(drop,))
        with pytest.raises(UsageError) as info:
            module.load(f"{folder}?weights={broken}")
        message = str(info.value)
        assert "missing key" in message and named in message and module.TEACHER in message


def test_truncated_and_wrong_files_fail_with_usage_errors(pmc_folder, medclip_folder, unimed_folder, tmp_path):
    for module, folder, file_name in ((pmc_clip, pmc_folder[0], "checkpoint.pt"),
                                      (medclip, medclip_folder[0], "pytorch_model.bin"),
                                      (unimed_clip, unimed_folder[0], "unimed_clip_vit_b16.pt")):
        data = (folder / file_name).read_bytes()
        truncated = tmp_path / f"{module.TEACHER}-truncated.pt"
        truncated.write_bytes(data[: len(data) // 2])
        with pytest.raises(UsageError, match="truncated or corrupt"):
            module.load(f"{folder}?weights={truncated}")
    # A MedCLIP file given to the PMC-CLIP adapter: the mismatch is listed, not a size-mismatch traceback.
    with pytest.raises(UsageError) as info:
        pmc_clip.load(f"{pmc_folder[0]}?weights={medclip_folder[0] / 'pytorch_model.bin'}")
    message = str(info.value)
    assert "missing key(s)" in message and "visual.conv1.weight" in message and "visual.*:" in message and "text_encoder.*:" in message
    assert "unexpected key(s)" in message and "vision_model.*:" in message and "text_model.*:" in message
    # A wrongly-shaped tensor is named with both shapes.
    raw = torch.load(unimed_folder[0] / "unimed_clip_vit_b16.pt", weights_only=True)
    raw["state_dict"]["module.visual.proj"] = torch.zeros(32, 256)
    reshaped = tmp_path / "reshaped.pt"
    torch.save(raw, reshaped)
    with pytest.raises(UsageError, match=r"visual\.proj: file \(32, 256\) vs model \(32, 512\)"):
        unimed_clip.load(f"{unimed_folder[0]}?weights={reshaped}")


def test_pickles_with_code_are_refused_and_layout_errors_say_what_to_do(medclip_folder, tmp_path):
    folder = medclip_folder[0]
    evil = tmp_path / "evil.bin"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": math.floor}, evil)  # a pickled global function
    with pytest.raises(UsageError, match="weights_only=True"):
        medclip.load(f"{folder}?weights={evil}")
    empty = tmp_path / "no-text"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes((folder / "pytorch_model.bin").read_bytes())
    with pytest.raises(UsageError, match="huggingface-cli download emilyalsentzer/Bio_ClinicalBERT"):
        medclip.load(str(empty))
    with pytest.raises(UsageError, match="unknown option"):
        medclip.load(f"{folder}?tokeniser=x")
    with pytest.raises(UsageError, match="not a folder"):
        unimed_clip.load(str(tmp_path / "nowhere"))


def test_load_teacher_dispatches_the_custom_prefixes(pmc_folder, medclip_folder, unimed_folder):
    from mmkd.teachers import load_teacher

    for prefix, folder, dim in (("pmc-clip", pmc_folder[0], 32), ("medclip", medclip_folder[0], 512),
                                ("unimed-clip", unimed_folder[0], 512)):
        teacher = load_teacher(f"{prefix}:{folder}", name=f"my-{prefix}")
        assert teacher.name == f"my-{prefix}" and teacher.embed_dim == dim
        assert_normalised(teacher.encode_text(["a lung"]), 1, dim)


# ---- full published sizes ----

def _bert_base(vocab: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)


def _shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_full_published_layouts(tmp_path):
    """Key names and shapes at full size (meta tensors), against facts from the projects' code."""
    with torch.device("meta"):
        pmc = pmc_clip.build_model(pmc_clip.PmcClipConfig(), _bert_base(30522))  # RN50_fusion4 + PubMedBERT
        med = medclip.build_model("swin", _bert_base(28996))  # Swin-T + Bio_ClinicalBERT (cased vocab)
        med_rn = medclip.build_model("resnet50", _bert_base(28996))
    shapes = _shapes(pmc.state_dict())
    assert {k: shapes[k] for k in (
        "visual.conv1.weight", "visual.layer1.0.downsample.0.weight", "visual.layer4.2.conv3.weight",
        "visual.attnpool.positional_embedding", "visual.attnpool.c_proj.weight", "text_projection",
        "mlm_projection", "positional_embedding", "img_special_token", "logit_scale",
        "fusion_module.resblocks.3.attn.in_proj_weight", "text_encoder.embeddings.word_embeddings.weight",
        "text_encoder.pooler.dense.weight")} == {
        "visual.conv1.weight": (32, 3, 3, 3), "visual.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "visual.layer4.2.conv3.weight": (2048, 512, 1, 1), "visual.attnpool.positional_embedding": (50, 2048),
        "visual.attnpool.c_proj.weight": (768, 2048), "text_projection": (768, 768), "mlm_projection": (768, 30522),
        "positional_embedding": (77, 768), "img_special_token": (1, 1, 768), "logit_scale": (),
        "fusion_module.resblocks.3.attn.in_proj_weight": (2304, 768),
        "text_encoder.embeddings.word_embeddings.weight": (30522, 768), "text_encoder.pooler.dense.weight": (768, 768)}
    assert {int(k.split(".")[1][-1]): int(k.split(".")[2]) + 1 for k in shapes if k.startswith("visual.layer")} \
        == {1: 3, 2: 4, 3: 6, 4: 3}
    assert not any(k.startswith("fusion_module.resblocks.4.") for k in shapes)
    assert pmc.visual.attnpool.num_heads == 32  # width * 32 // head_width in PMC-CLIP's factory

    shapes = _shapes(medclip.to_published(med))
    swin = "vision_model.model."
    assert {k: shapes[k] for k in (
        swin + "embeddings.patch_embeddings.projection.weight", swin + "encoder.layers.2.blocks.5.attention.self.query.weight",
        swin + "encoder.layers.3.blocks.1.attention.self.relative_position_bias_table",
        swin + "encoder.layers.3.blocks.1.attention.self.relative_position_index",
        swin + "encoder.layers.0.downsample.reduction.weight", swin + "layernorm.weight",
        "vision_model.projection_head.weight", "text_model.model.embeddings.word_embeddings.weight",
        "text_model.model.pooler.dense.weight", "text_model.projection_head.weight", "logit_scale")} == {
        swin + "embeddings.patch_embeddings.projection.weight": (96, 3, 4, 4),
        swin + "encoder.layers.2.blocks.5.attention.self.query.weight": (384, 384),
        swin + "encoder.layers.3.blocks.1.attention.self.relative_position_bias_table": (169, 24),
        swin + "encoder.layers.3.blocks.1.attention.self.relative_position_index": (49, 49),
        swin + "encoder.layers.0.downsample.reduction.weight": (192, 384), swin + "layernorm.weight": (768,),
        "vision_model.projection_head.weight": (512, 768), "text_model.model.embeddings.word_embeddings.weight":
            (28996, 768), "text_model.model.pooler.dense.weight": (768, 768),
        "text_model.projection_head.weight": (512, 768), "logit_scale": ()}
    assert not any(k.endswith("projection_head.bias") or ".q_proj." in k for k in shapes)
    assert sum(v.numel() for k, v in med.state_dict().items() if k.startswith(swin)) == 27_519_354  # Swin-T
    rn = _shapes(med_rn.state_dict())
    assert rn["vision_model.model.fc.weight"] == (512, 2048) and rn["vision_model.model.layer3.5.conv3.weight"] == \
        (1024, 256, 1, 1)

    text_dir = tmp_path / "biomedbert"
    published.write_text_folder(text_dir, _bert_base(30522), WORDS)
    with torch.device("meta"):
        uni = unimed_clip.build_model(None, text_dir)  # ViT-B-16-quickgelu + BiomedBERT-base
    shapes = _shapes(uni.state_dict())
    assert {k: shapes[k] for k in (
        "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
        "visual.transformer.resblocks.11.attn.in_proj_weight", "text_encoder.transformer.embeddings.word_embeddings.weight",
        "text_encoder.proj.0.weight", "text_encoder.proj.2.weight", "logit_scale")} == {
        "visual.conv1.weight": (768, 3, 16, 16), "visual.class_embedding": (768,),
        "visual.positional_embedding": (197, 768), "visual.proj": (768, 512),
        "visual.transformer.resblocks.11.attn.in_proj_weight": (2304, 768),
        "text_encoder.transformer.embeddings.word_embeddings.weight": (30522, 768),
        "text_encoder.proj.0.weight": (640, 768), "text_encoder.proj.2.weight": (512, 640), "logit_scale": ()}
    assert not any(k.startswith("text_encoder.transformer.pooler") or k.startswith("visual.transformer.resblocks.12")
                   for k in shapes)


@pytest.mark.slow
def test_full_size_checkpoints_round_trip(tmp_path):
    """Full published architectures, random values, saved in the published containers, loaded and encoding."""
    images = probe_images()
    for teacher, bert, save, module, dim in (
            ("pmc-clip", _bert_base(30522), lambda f, m: published.save_pmc_clip(f, m), pmc_clip, 768),
            ("medclip", _bert_base(28996), lambda f, m: published.save_medclip(f, m), medclip, 512),
            ("unimed-clip", _bert_base(30522), lambda f, m: published.save_unimed_clip(f, m), unimed_clip, 512)):
        folder = tmp_path / teacher
        published.write_text_folder(folder / "text", bert, WORDS)
        if module is pmc_clip:
            model = pmc_clip.build_model(pmc_clip.PmcClipConfig(), bert)
        elif module is medclip:
            model = medclip.build_model("swin", bert)
        else:
            model = unimed_clip.build_model(None, folder / "text")
        save(folder, model)
        assert not (folder / "model_config.json").exists() and not (folder / "vision").exists()
        del model
        encoder = module.load(str(folder))
        x = torch.stack([encoder.preprocess(image) for image in images])
        assert x.shape == (2, 3, 224, 224)
        assert_normalised(encoder.encode_image(x), 2, dim)
        assert_normalised(encoder.encode_text(TEXTS), 2, dim)
        del encoder
        for path in folder.glob("*.*"):
            path.unlink()
