"""Recipes for the nine MMKD-CLIP teachers: where the weights come from, how a local copy is laid out,
which spec loads it, and what it must produce; `check_folder(DIR)` tries all nine in a local folder.

Conventional layout (one sub-folder per teacher, each laid out as its published repository lists
its files; the packaged recipe `mmkd_b16/extract` uses it):

    teachers/
      bmca-clip/     BMC_CLIP_CF.pt (BIOMEDICA/BMC_CLIP_CF: an open_clip ViT-L-14 training checkpoint,
                     state_dict with module. keys; no open_clip_config.json)
      biomedclip/    open_clip_config.json + open_clip_pytorch_model.bin (microsoft/BiomedCLIP-...); its
                     text_cfg.hf_model_name names microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract, found in
                     the Hugging Face cache (or edit it to a local folder)
      unimed-clip/   unimed-clip-vit-b16.pt (Hub copy UzairK/unimed-clip-vit-b16) or unimed_clip_vit_b16.pt
                     (README link) + text/ (BiomedBERT-base-uncased-abstract)
      pmc-clip/      checkpoint.pt (or the three extracted encoder files) + text/ (PubMedBERT fulltext)
      quiltnet/      open_clip folder (wisdomik/QuiltNet-B-32)
      genmedclip/    open_clip folder (wisdomik/GenMedClip)
      plip/          transformers CLIPModel folder (vinid/plip)
      pubmedclip/    transformers CLIPModel folder (flaviagiammarino/pubmed-clip-vit-base-patch32)
      medclip/       pytorch_model.bin (from MedCLIP's medclip-vit-pretrained.zip) + text/ (Bio_ClinicalBERT)
                     [+ vision/config.json]

The registry (`mmkd.teachers.registry.KNOWN_TEACHERS`) holds hub ids, domains and licences; a
recipe adds the local layout, the preprocessing and the check. Facts marked "not verified" could
not be checked from this machine (sources: the issue-15 research notes); the model card or
repository rules.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmkd.errors import UsageError

OPENAI = "OpenAI CLIP mean/std"


@dataclass(frozen=True)
class TeacherRecipe:
    name: str                 # the registry's name (`mmkd teachers`)
    folder: str               # conventional sub-folder under teachers/
    spec_template: str        # spec for a local copy; {path} is the sub-folder
    markers: tuple[str, ...]  # files that show the weights are present (any one; globs allowed)
    embed_dim: int            # published embedding dimension
    context_length: int       # tokens per caption
    preprocessing: str
    licence: str
    obtain: str               # how to get the weights into the sub-folder; {root} is the teachers folder
    store_key: str            # the key the MMKD-CLIP authors' feature files use for this teacher
    notes: str = ""

    def spec(self, root: str | Path) -> str:
        return self.spec_template.format(path=str(Path(root) / self.folder))

    def how_to_obtain(self, root: str | Path = "teachers") -> str:
        """How to get the weights into `root`'s sub-folder for this teacher."""
        return self.obtain.replace("{root}", str(root))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_HF = "huggingface-cli download {repo} --local-dir {{root}}/{folder}"
_OPEN_CLIP_MARKERS = ("open_clip_config.json",)

RECIPES: dict[str, TeacherRecipe] = {r.name: r for r in [
    TeacherRecipe(
        "BMCA-CLIP", "bmca-clip", "ViT-L-14@{path}/BMC_CLIP_CF.pt", ("BMC_CLIP_CF.pt",), 768, 77,
        f"224 px, resize short side (bicubic) + centre crop, {OPENAI} (open_clip's ViT-L-14 defaults; the repo has "
        "no open_clip_config.json)",
        "MIT per the Hub listing of BIOMEDICA/BMC_CLIP_CF",
        _HF.format(repo="BIOMEDICA/BMC_CLIP_CF", folder="bmca-clip") + " (it holds BMC_CLIP_CF.pt)", "BMCA",
        "open_clip ViT-L-14 (continual pretraining from commonpool_xl_clip_s13b_b90k); BMC_CLIP_CF.pt is a "
        "training checkpoint (state_dict, module. keys), loaded with weights_only=True"),
    TeacherRecipe(
        "BiomedCLIP", "biomedclip", "local-dir:{path}", _OPEN_CLIP_MARKERS, 512, 256,
        "224 px, resize short side (bicubic) + centre crop, OpenAI CLIP mean/std",
        "MIT (model card)",
        _HF.format(repo="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", folder="biomedclip")
        + "; also download microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract (the text tower's config) and set "
        "text_cfg.hf_model_name/hf_tokenizer_name in open_clip_config.json to that folder, or keep both in the "
        "Hugging Face cache", "BiomedCLIP",
        "open_clip ViT-B/16 (timm) + PubMedBERT text tower, CLS last hidden state, MLP projection"),
    TeacherRecipe(
        "UniMed-CLIP", "unimed-clip", "unimed-clip:{path}",
        ("unimed-clip-vit-b16.pt", "unimed_clip_vit_b16.pt", "*.pt"), 512, 256,
        "224 px, resize short side (bicubic) + centre crop, OpenAI CLIP mean/std",
        "CC BY-NC 4.0 (LICENSE of github.com/mbzuai-oryx/UniMed-CLIP): non-commercial",
        _HF.format(repo="UzairK/unimed-clip-vit-b16", folder="unimed-clip") + " (unimed-clip-vit-b16.pt, the copy "
        "the project's demo app loads; or unimed_clip_vit_b16.pt from the README's link), and "
        + _HF.format(repo="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract", folder="unimed-clip/text"),
        "UniMedCLIP", "own code: mmkd.teachers.custom.unimed_clip; the released file's container (state_dict, "
        "module. prefix) is not verified here, both forms load"),
    TeacherRecipe(
        "PMC-CLIP", "pmc-clip", "pmc-clip:{path}", ("checkpoint.pt", "image_encoder(resnet50).pth"), 768, 77,
        "224 px, resize short side (bicubic) + centre crop, OpenAI CLIP mean/std",
        "MIT (LICENSE of github.com/WeixiongLin/PMC-CLIP); weights trained on PMC-OA",
        "download checkpoint.pt from the Hugging Face dataset axiong/pmc_oa_beta (or image_encoder(resnet50).pth, "
        "text_encoder.pth and text_projection_layer.pth from axiong/pmc_oa) into {root}/pmc-clip/, and "
        + _HF.format(repo="microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext", folder="pmc-clip/text"),
        "PMCCLIP", "own code: mmkd.teachers.custom.pmc_clip"),
    TeacherRecipe(
        "QuiltNet", "quiltnet", "local-dir:{path}", _OPEN_CLIP_MARKERS, 512, 77,
        "224 px, resize short side (bicubic) + centre crop, OpenAI CLIP mean/std",
        "not verified here (see the model card); Quilt-1M data terms apply",
        _HF.format(repo="wisdomik/QuiltNet-B-32", folder="quiltnet"), "QuiltNet",
        "open_clip ViT-B/32; which Quilt variant MMKD-CLIP used (B-32 or B-16, both 512-d) is not stated, and the "
        "weights file name (open_clip_pytorch_model.bin or .safetensors) is not verified: either loads"),
    TeacherRecipe(
        "GenMedCLIP", "genmedclip", "local-dir:{path}", _OPEN_CLIP_MARKERS, 512, 77,
        "as in its open_clip_config.json (ViT-B, 224 px, OpenAI CLIP mean/std expected)",
        "MIT per the Hub listing of wisdomik/GenMedClip (the model card is empty)",
        _HF.format(repo="wisdomik/GenMedClip", folder="genmedclip"), "GenMedClip",
        "open_clip ViT-B (MedicalNarratives); whether patch 16 or 32 is not established here, its "
        "open_clip_config.json says (the MMKD-CLIP authors' store key is GenMedClip)"),
    TeacherRecipe(
        "PLIP", "plip", "hf:{path}", ("config.json",), 512, 77,
        "224 px as in its preprocessor_config.json (CLIP image processor: resize, centre crop, CLIP mean/std)",
        "research use only per the model card (OpenPath/Twitter data terms; its licence tag is not verified here)",
        _HF.format(repo="vinid/plip", folder="plip"), "PLIP", "transformers CLIPModel ViT-B/32"),
    TeacherRecipe(
        "PubMedCLIP", "pubmedclip", "hf:{path}", ("config.json",), 512, 77,
        "224 px as in its preprocessor_config.json (CLIP image processor: resize, centre crop, CLIP mean/std)",
        "MIT (model card)",
        _HF.format(repo="flaviagiammarino/pubmed-clip-vit-base-patch32", folder="pubmedclip"), "PUBMEDCLIP",
        "transformers CLIPModel ViT-B/32 fine-tuned on ROCO"),
    TeacherRecipe(
        "MedCLIP", "medclip", "medclip:{path}", ("pytorch_model.bin",), 512, 77,
        "grey-scale, zero-pad to square, resize 224 (bicubic), mean 0.5863 / std 0.2795, repeated to 3 channels",
        "MIT (LICENSE of github.com/RyanWangZf/MedCLIP @ 75d1545; the medclip package's setup.py classifier says BSD); "
        "trained on MIMIC-CXR/CheXpert (their data terms apply)",
        "download the MedCLIP-ViT zip (URL in medclip/medclip_vit_weight.txt of github.com/RyanWangZf/MedCLIP), "
        "unzip pytorch_model.bin into {root}/medclip/, and "
        + _HF.format(repo="emilyalsentzer/Bio_ClinicalBERT", folder="medclip/text"), "MedCLIP",
        "own code: mmkd.teachers.custom.medclip (Swin-T; the ResNet-50 variant loads too)"),
]}


@dataclass
class CheckResult:
    """One teacher's line of `check_folder`: status is ok | missing | incomplete | error."""

    name: str
    folder: str
    status: str
    spec: str = ""
    embed_dim: int = 0
    expected_dim: int = 0
    message: str = ""
    seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _present(folder: Path, markers: tuple[str, ...]) -> bool:
    return any(any(folder.glob(m)) for m in markers)


def check_folder(root: str | Path, device: str = "cpu", names: list[str] | None = None,
                 check_dims: bool = True) -> list[CheckResult]:
    """Find which of the nine teachers sit in `root/<folder>` and load each one through load_teacher.

    A loaded teacher encodes one synthetic image and two captions; it passes when both give
    finite, L2-normalised rows of its published dimension (`check_dims=False` accepts any).
    Errors are caught and reported per teacher (their message), never raised.
    """
    import torch

    from mmkd.teachers import load_teacher

    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--check: {str(root)!r} is not a folder; give the folder holding one sub-folder per "
                         f"teacher ({', '.join(r.folder for r in RECIPES.values())})")
    wanted = [RECIPES[n] for n in names] if names else list(RECIPES.values())
    results = []
    for recipe in wanted:
        folder = root / recipe.folder
        result = CheckResult(recipe.name, str(folder), "missing", expected_dim=recipe.embed_dim)
        if not folder.is_dir():
            result.message = f"no folder {folder}; to get it: {recipe.how_to_obtain(root)}"
            results.append(result)
            continue
        if not _present(folder, recipe.markers):
            result.status = "incomplete"
            result.message = (f"{folder} has none of {', '.join(recipe.markers)}; to get it: "
                              f"{recipe.how_to_obtain(root)}")
            results.append(result)
            continue
        result.spec = recipe.spec(root)
        start = time.perf_counter()
        try:
            teacher = load_teacher(result.spec, device=device, name=recipe.name)
            result.embed_dim = int(teacher.embed_dim)
            with torch.no_grad():
                image = teacher.preprocess(_probe_image()).unsqueeze(0)
                feats_image = teacher.encode_image(image)
                feats_text = teacher.encode_text(["a chest x-ray", "a histology slide of a tumour"])
            problems = _check_features(feats_image, feats_text, recipe.embed_dim if check_dims else None)
            result.status = "error" if problems else "ok"
            result.message = "; ".join(problems) or f"loaded, {result.embed_dim}-d normalised embeddings"
            result.provenance = dict(teacher.provenance)
        except UsageError as e:
            result.status, result.message = "error", str(e)
        except Exception as e:  # a broken teacher must not stop the check of the others
            result.status, result.message = "error", f"{type(e).__name__}: {str(e)[:300]}"
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def _probe_image():
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)), np.full((64, 64), 128, np.uint8)], -1)
    return Image.fromarray(pixels)


def _check_features(feats_image, feats_text, expected_dim: int | None) -> list[str]:
    import torch

    problems = []
    for what, feats, rows in (("image", feats_image, 1), ("text", feats_text, 2)):
        if feats.ndim != 2 or feats.shape[0] != rows:
            problems.append(f"{what} features have shape {tuple(feats.shape)}, expected [{rows}, D]")
            continue
        if expected_dim is not None and feats.shape[1] != expected_dim:
            problems.append(f"{what} features are {feats.shape[1]}-d, the published teacher is {expected_dim}-d")
        if not torch.isfinite(feats).all():
            problems.append(f"{what} features are not finite")
        elif not torch.allclose(feats.norm(dim=-1), torch.ones(rows), atol=1e-3):
            problems.append(f"{what} features are not L2-normalised")
    return problems


def format_results(results: list[CheckResult]) -> str:
    """A table: one line per teacher (status, dim, spec or what to do)."""
    header = ("teacher", "status", "dim", "spec / message")
    rows = [(r.name, r.status, str(r.embed_dim or ""), r.spec if r.ok else r.message) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:3])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:3], widths)) + "  " + header[3]]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    found = sum(r.status not in ("missing",) for r in results)
    lines.append(f"{sum(r.ok for r in results)} of {found} present teacher(s) load; "
                 f"{len(results) - found} missing")
    return "\n".join(lines)
