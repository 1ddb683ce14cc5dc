"""The nine teachers of MMKD-CLIP: where they come from, how they load, what they output.

A plain dict of records, filled here. `spec` is what `load_teacher` gets when a user names
the teacher without a spec (`--teacher BiomedCLIP`); `{path}` in it is a local copy the user
passes instead (`--teacher BiomedCLIP=local-dir:/models/biomedclip`). Facts marked
"unverified" could not be checked on this machine (no network); the model card rules.
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
    TeacherInfo("BMCA-CLIP", "BIOMEDICA/BMCA-CLIP", "hf-hub:BIOMEDICA/BMCA-CLIP", "local-dir:{path}", 768,
                "biomedical literature figures (24M PMC pairs)", "MIT (unverified; see model card)", "open_clip",
                77, "ViT-L/14", _HUB.format(hub="BIOMEDICA/BMCA-CLIP") + " (repo id unverified; BIOMEDICA's "
                "collection also lists BMC_CLIP_CF)", False),
    TeacherInfo("BiomedCLIP", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "local-dir:{path}", 512,
                "biomedical literature figures (PMC-15M)", "MIT", "open_clip", 256, "ViT-B/16 + PubMedBERT",
                _HUB.format(hub="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
                + "; its text tower also needs microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract in the cache",
                False),
    TeacherInfo("UniMed-CLIP", "", "", "unimed-clip:{path}", 512,
                "radiology, ultrasound, retina, pathology (UniMed)", "CC BY-NC-SA 4.0 (unverified; see repo)",
                "custom:mmkd.teachers.custom.unimed_clip", 256, "ViT-B/16 + BiomedBERT (open_clip fork)",
                "download the checkpoint linked from github.com/mbzuai-oryx/UniMed-CLIP and pass unimed-clip:PATH",
                True),
    TeacherInfo("PMC-CLIP", "", "", "pmc-clip:{path}", 768, "biomedical literature figures (PMC-OA)",
                "MIT (unverified; see repo)", "custom:mmkd.teachers.custom.pmc_clip", 77, "ResNet-50 + PubMedBERT",
                "download checkpoint.pt linked from github.com/WeixiongLin/PMC-CLIP and pass pmc-clip:PATH", True),
    TeacherInfo("QuiltNet", "wisdomik/QuiltNet-B-32", "hf-hub:wisdomik/QuiltNet-B-32", "local-dir:{path}", 512,
                "histopathology (Quilt-1M)", "MIT (research use; see model card)", "open_clip", 77, "ViT-B/32",
                _HUB.format(hub="wisdomik/QuiltNet-B-32"), False),
    TeacherInfo("GenMedCLIP", "", "", "local-dir:{path}", 512, "general medical imaging",
                "unknown (see the authors' release)", "open_clip", 77, "ViT-B (open_clip)",
                "no Hub id is known to mmkd; export it as an open_clip folder (open_clip_config.json + weights) "
                "and pass local-dir:PATH", False),
    TeacherInfo("PLIP", "vinid/plip", "hf:vinid/plip", "hf:{path}", 512, "pathology (OpenPath, Twitter)",
                "research use only (see model card)", "transformers", 77, "CLIP ViT-B/32",
                _HUB.format(hub="vinid/plip"), False),
    TeacherInfo("PubMedCLIP", "flaviagiammarino/pubmed-clip-vit-base-patch32",
                "hf:flaviagiammarino/pubmed-clip-vit-base-patch32", "hf:{path}", 512, "radiology (ROCO)", "MIT",
                "transformers", 77, "CLIP ViT-B/32",
                _HUB.format(hub="flaviagiammarino/pubmed-clip-vit-base-patch32"), False),
    TeacherInfo("MedCLIP", "", "", "medclip:{path}", 512, "chest X-ray (MIMIC-CXR, CheXpert)",
                "see github.com/RyanWangZf/MedCLIP", "custom:mmkd.teachers.custom.medclip", 77,
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
