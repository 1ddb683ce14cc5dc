"""The paper's real inputs at their real sizes and in their published file formats, with random values.

`write_paper_inputs(ROOT)` writes what a researcher reproducing MMKD-CLIP downloads, so that the
whole pipeline can be run before the real weights are at hand (`make paper-dry-run`):

    ROOT/metaclip/b16_400m.pt        MetaCLIP ViT-B/16 (QuickGELU): a whole open_clip CLIP in a training
                                     container {"epoch", "name", "state_dict": {"module.*"}} (the released
                                     file's container is not verified; open_clip and mmkd unwrap both forms)
    ROOT/biomedbert/                 microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract as a BertForMaskedLM
                                     folder: config.json, model.safetensors (bert.* + cls.*), vocab.txt (30,522)
    ROOT/hf-cache/                   a Hugging Face cache holding BiomedBERT's config and tokenizer under its hub
                                     id, which BiomedCLIP's open_clip_config.json names
    ROOT/teachers/<folder>/          the nine teachers, each as its repository publishes it (recipes.py):
      bmca-clip/BMC_CLIP_CF.pt          open_clip ViT-L-14 training checkpoint, module. keys
      biomedclip/                       open_clip_config.json (timm vit_base_patch16_224 + BiomedBERT by hub id)
                                        + open_clip_pytorch_model.bin
      unimed-clip/unimed-clip-vit-b16.pt + text/   the fork's ViT-B/16 + BiomedBERT-base, training container
      pmc-clip/checkpoint.pt + text/    ModifiedResNet-50 + PubMedBERT + fusion module, training container
      quiltnet/                         open_clip ViT-B-32 folder (open_clip_config.json + .bin)
      genmedclip/                       open_clip ViT-B-16 folder (patch size of the real one not verified)
      plip/, pubmedclip/                transformers CLIPModel ViT-B/32 + CLIPProcessor (the real CLIP BPE vocab)
      medclip/pytorch_model.bin + text/ Swin-T + Bio_ClinicalBERT (vocab 28,996), plain state dict

Models are built one at a time and released after saving, so memory stays at the largest one
(ViT-L-14, ~1.7 GB of float32 weights). Tokenizer vocabularies have the published sizes; their
tokens past the special ones and a few hundred real words are placeholders.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import torch

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
WORDS = ("a an the of with in on and or no chest x ray ct mri scan image shows normal abnormal lung lesion nodule "
         "tumour tumor cell cells tissue stain histology slide pathology fundus retina ultrasound breast brain "
         "blood smear dermoscopy skin mass opacity vessel left right axial figure patient case red green blue "
         "square disc").split()


def _vocab(size: int, lowercase: bool = True) -> list[str]:
    """A WordPiece vocabulary of `size` tokens: real words and characters first, placeholders after."""
    chars = "abcdefghijklmnopqrstuvwxyz" + ("" if lowercase else "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    tokens = list(dict.fromkeys([*WORDS, *chars, *"0123456789.,;:()-/%", *(f"##{c}" for c in chars + "0123456789")]))
    tokens += [f"[unused{i}]" for i in range(size - 5 - len(tokens))]
    return tokens


def bert_base_config(vocab_size: int = 30522):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)


def write_bert_folder(folder: Path, vocab_size: int = 30522, lowercase: bool = True, weights: bool = False,
                      seed: int = 0) -> Path:
    """A BERT-base HF folder (config.json, vocab.txt, tokenizer_config.json [+ model.safetensors as
    BertForMaskedLM, the fill-mask checkpoints BiomedBERT and friends are published as])."""
    from transformers import BertForMaskedLM

    from mmkd.teachers.custom.published import write_text_folder

    config = bert_base_config(vocab_size)
    write_text_folder(folder, config, _vocab(vocab_size, lowercase), lowercase=lowercase)
    if weights:
        torch.manual_seed(seed)
        config.architectures = ["BertForMaskedLM"]
        BertForMaskedLM(config).save_pretrained(str(folder))
    return folder


def _container(state: dict[str, torch.Tensor], name: str) -> dict[str, Any]:
    """An open_clip-style training checkpoint of a DistributedDataParallel model (optimizer state left empty)."""
    return {"epoch": 32, "name": name, "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": []}}


def _open_clip_folder(folder: Path, model_cfg: dict[str, Any], seed: int,
                      weights_name: str = "open_clip_pytorch_model.bin") -> Path:
    from mmkd.models.student import build_open_clip_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_open_clip_model(model_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}, indent=2))
    torch.save(model.state_dict(), folder / weights_name)
    return folder


def write_metaclip_b16(path: Path, seed: int = 0) -> Path:
    import open_clip

    from mmkd.models.student import build_open_clip_model

    torch.manual_seed(seed)
    model = build_open_clip_model(open_clip.get_model_config("ViT-B-16-quickgelu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_container(model.state_dict(), "b16_400m"), path)
    return path


def write_bmc_clip_cf(folder: Path, seed: int = 1) -> Path:
    import open_clip

    from mmkd.models.student import build_open_clip_model

    torch.manual_seed(seed)
    model = build_open_clip_model(open_clip.get_model_config("ViT-L-14"))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_container(model.state_dict(), "bmc_clip_cf"), folder / "BMC_CLIP_CF.pt")
    return folder


def write_biomedclip(folder: Path, biomedbert_dir: Path, seed: int = 2) -> Path:
    """BiomedCLIP's Hub layout; its config names BiomedBERT by hub id (resolved from the HF cache at load)."""
    from mmkd.models.student import build_open_clip_model

    text_cfg = {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT, "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}
    model_cfg = {"embed_dim": 512,
                 "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                 "text_cfg": text_cfg}
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_open_clip_model({**model_cfg, "text_cfg": {**text_cfg, "hf_model_name": str(biomedbert_dir),
                                                             "hf_tokenizer_name": str(biomedbert_dir)}})
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}, indent=2))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def write_unimed_clip(folder: Path, seed: int = 3) -> Path:
    from mmkd.teachers.custom import published, unimed_clip

    text = write_bert_folder(folder / "text")
    torch.manual_seed(seed)
    model = unimed_clip.build_model(None, text)
    published.save_unimed_clip(folder, model, file_name="unimed-clip-vit-b16.pt")
    return folder


def write_pmc_clip(folder: Path, seed: int = 4) -> Path:
    from mmkd.teachers.custom import pmc_clip, published

    write_bert_folder(folder / "text")  # PubMedBERT abstract-fulltext: same architecture and vocabulary size
    torch.manual_seed(seed)
    published.save_pmc_clip(folder, pmc_clip.build_model(pmc_clip.PmcClipConfig(), bert_base_config()))
    return folder


def write_medclip(folder: Path, seed: int = 5) -> Path:
    from mmkd.teachers.custom import medclip, published

    write_bert_folder(folder / "text", vocab_size=28996, lowercase=False)  # Bio_ClinicalBERT: cased bert-base vocab
    torch.manual_seed(seed)
    published.save_medclip(folder, medclip.build_model("swin", bert_base_config(28996), medclip.default_swin_config()))
    return folder


def clip_bpe_tokenizer(folder: Path):
    """transformers' CLIPTokenizer over the real CLIP BPE vocabulary (49,408 tokens, from open_clip's file)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    # open_clip names the two special tokens <start_of_text>/<end_of_text>; OpenAI's (and HF's) files say
    # <|startoftext|>/<|endoftext|> for the same ids 49406/49407
    hf_names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {hf_names.get(token, token): i for token, i in simple.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def write_hf_clip(folder: Path, seed: int) -> Path:
    """A transformers CLIPModel ViT-B/32 (CLIPConfig's defaults: projection 512, 77 tokens) + CLIPProcessor."""
    import shutil

    import transformers

    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig())
    model.eval().save_pretrained(str(folder))
    tokenizer = clip_bpe_tokenizer(folder / "_bpe")
    processor = transformers.CLIPProcessor(image_processor=transformers.CLIPImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(str(folder))
    shutil.rmtree(folder / "_bpe")
    return folder


def write_paper_inputs(root: str | Path, log=print) -> dict[str, Path]:
    """Write everything listed in the module doc under `root`; returns the main paths."""
    import open_clip

    from mmkd.teachers.testing import write_hub_cache

    root = Path(root)
    paths: dict[str, Path] = {}

    def step(name: str, fn, *args, **kwargs):
        log(f"writing {name}")
        paths[name] = fn(*args, **kwargs)
        gc.collect()

    step("metaclip", write_metaclip_b16, root / "metaclip" / "b16_400m.pt")
    step("biomedbert", write_bert_folder, root / "biomedbert", weights=True)
    step("hf-cache", lambda: (write_hub_cache(root / "hf-cache", BIOMEDBERT,
                                              write_bert_folder(root / "_biomedbert-config")), root / "hf-cache")[1])
    teachers = root / "teachers"
    step("BMCA-CLIP", write_bmc_clip_cf, teachers / "bmca-clip")
    step("BiomedCLIP", write_biomedclip, teachers / "biomedclip", root / "_biomedbert-config")
    step("UniMed-CLIP", write_unimed_clip, teachers / "unimed-clip")
    step("PMC-CLIP", write_pmc_clip, teachers / "pmc-clip")
    step("QuiltNet", _open_clip_folder, teachers / "quiltnet", open_clip.get_model_config("ViT-B-32"), 6)
    step("GenMedCLIP", _open_clip_folder, teachers / "genmedclip", open_clip.get_model_config("ViT-B-16"), 7)
    step("PLIP", write_hf_clip, teachers / "plip", 8)
    step("PubMedCLIP", write_hf_clip, teachers / "pubmedclip", 9)
    step("MedCLIP", write_medclip, teachers / "medclip")
    paths["teachers"] = teachers
    return paths
