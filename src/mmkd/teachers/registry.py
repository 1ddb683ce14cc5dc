"""The nine teachers of MMKD-CLIP: where they come from, how they load, what they output.

A plain dict of records, filled here. `spec` is what `load_teacher` gets when a user names
the teacher without a spec (`--teacher BiomedCLIP`); `{path}` in it is a local copy the user
passes instead (`--teacher BiomedCLIP=local-dir:/models/biomedclip`). Facts marked
"not verified" could not be checked from this machine; the model card or repository rules.
Sources: issue-15 research notes (Hub listings, the repositories' LICENSE/setup.py/README files).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    hub_id: str             # Hugging Face repo id, "" when the weights are not on the Hub
    spec: str               # default spec for load_teacher ("" when a local path is needed)
    spec_template: str      # how to point mmkd at a local copy
    embed_dim: int
    domain: str
    licence: str
    loader: str             # open_clip | transformers | custom:<module>
    context_length: int
    architecture: str
    obtain: str             # how to get the weights
    needs_own_code: bool    # loads through an adapter in mmkd.teachers.custom (see `mmkd teachers`)

    def as_dict(self) -> dict:
        return asdict(self)


_HUB = "on a machine with network: `huggingface-cli download {hub}`; copy the cache (or the folder) here"

KNOWN_TEACHERS: dict[str, TeacherInfo] = {t.name: t for t in [
    TeacherInfo("BMCA-CLIP", "BIOMEDICA/BMC_CLIP_CF", "", "ViT-L-14@{path}/BMC_CLIP_CF.pt", 768,
                "biomedical literature figures (BIOMEDICA, PMC)", "MIT (Hub listing of BIOMEDICA/BMC_CLIP_CF)",
                "open_clip", 77, "ViT-L/14 (open_clip ViT-L-14, continually pretrained from commonpool_xl)",
                _HUB.format(hub="BIOMEDICA/BMC_CLIP_CF") + "; the repo holds BMC_CLIP_CF.pt, an open_clip training "
                "checkpoint (state_dict with module. keys) and no open_clip_config.json, so it loads as "
                "ViT-L-14@.../BMC_CLIP_CF.pt", False),
    TeacherInfo("BiomedCLIP", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "local-dir:{path}", 512,
                "biomedical literature figures (PMC-15M)", "MIT", "open_clip", 256, "ViT-B/16 + PubMedBERT",
                _HUB.format(hub="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
                + "; its text tower also needs microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract in the cache",
                False),
    TeacherInfo("UniMed-CLIP", "UzairK/unimed-clip-vit-b16", "", "unimed-clip:{path}", 512,
                "radiology, ultrasound, retina, pathology (UniMed)", "CC BY-NC 4.0 (LICENSE of the repository)",
                "custom:mmkd.teachers.custom.unimed_clip", 256, "ViT-B/16 + BiomedBERT (open_clip fork)",
                "`huggingface-cli download UzairK/unimed-clip-vit-b16` (unimed-clip-vit-b16.pt, the copy the "
                "project's own demo app loads) or the README's link (unimed_clip_vit_b16.pt), plus "
                "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract as text/; pass unimed-clip:PATH", True),
    TeacherInfo("PMC-CLIP", "", "", "pmc-clip:{path}", 768, "biomedical literature figures (PMC-OA)",
                "MIT (LICENSE of the repository)", "custom:mmkd.teachers.custom.pmc_clip", 77, "ResNet-50 + PubMedBERT",
                "download checkpoint.pt linked from github.com/WeixiongLin/PMC-CLIP and pass pmc-clip:PATH", True),
    TeacherInfo("QuiltNet", "wisdomik/QuiltNet-B-32", "hf-hub:wisdomik/QuiltNet-B-32", "local-dir:{path}", 512,
                "histopathology (Quilt-1M)", "not verified here: see the model card (Quilt-1M data terms apply)",
                "open_clip", 77, "ViT-B/32 (which Quilt variant MMKD-CLIP used, B-32 or B-16, is not stated)",
                _HUB.format(hub="wisdomik/QuiltNet-B-32"), False),
    TeacherInfo("GenMedCLIP", "wisdomik/GenMedClip", "hf-hub:wisdomik/GenMedClip", "local-dir:{path}", 512,
                "general medical imaging (MedicalNarratives, 12 domains)", "MIT (Hub listing; the model card is empty)",
                "open_clip", 77, "ViT-B (open_clip; patch 16 or 32 not established here: its open_clip_config.json "
                "says)", _HUB.format(hub="wisdomik/GenMedClip"), False),
    TeacherInfo("PLIP", "vinid/plip", "hf:vinid/plip", "hf:{path}", 512, "pathology (OpenPath, Twitter)",
                "research use only (see model card)", "transformers", 77, "CLIP ViT-B/32",
                _HUB.format(hub="vinid/plip"), False),
    TeacherInfo("PubMedCLIP", "flaviagiammarino/pubmed-clip-vit-base-patch32",
                "hf:flaviagiammarino/pubmed-clip-vit-base-patch32", "hf:{path}", 512, "radiology (ROCO)", "MIT",
                "transformers", 77, "CLIP ViT-B/32",
                _HUB.format(hub="flaviagiammarino/pubmed-clip-vit-base-patch32"), False),
    TeacherInfo("MedCLIP", "", "", "medclip:{path}", 512, "chest X-ray (MIMIC-CXR, CheXpert)",
                "MIT (LICENSE of the repository, github.com/RyanWangZf/MedCLIP @ 75d1545; its setup.py classifier "
                "says BSD)",
                "custom:mmkd.teachers.custom.medclip", 77,
                "Swin-T + Bio_ClinicalBERT", "download the pretrained weights as described at "
                "github.com/RyanWangZf/MedCLIP and pass medclip:PATH", True),
]}


def find_known(name: str) -> TeacherInfo | None:
    """Case- and punctuation-insensitive lookup (`biomedclip`, `BMCA_CLIP`, `PMCCLIP`)."""
    key = _norm(name)
    for info in KNOWN_TEACHERS.values():
        if _norm(info.name) == key:
            return info
    return None


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())
