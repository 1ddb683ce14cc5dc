"""The shipped real images (`mmkd/assets/real_mini/`) as a captioned corpus plus evaluation sets.

Four real, openly licensed modalities (see `real_mini/README.md` for sources, licences and
citations): paediatric chest X-ray (PneumoniaMNIST), breast ultrasound (BreastMNIST), colour
fundus photographs (RetinaMNIST; MedMNIST at 28×28) and peripheral blood cells (PBC, 64×64).

These sets have no captions. **Captions are made from the class names** through varied
templates and synonyms (e.g. "Chest radiograph showing pneumonia."); they carry nothing
beyond the class label. The README written into the output folder says so, and so must any
result shown on them.

Splits: MedMNIST's official train/val/test; PBC ships train/test, so a seeded 10 % of each
training class becomes its validation split. Captioned training pairs come from the train
splits only; evaluation uses the official test splits (catalog.yaml), and catalog-val.yaml
the validation splits, for choosing models and settings without looking at test.

Output layout (`write_real_corpus(out_dir)`; paths in tables relative to the table's folder):

    DIR/
      README.md             captions-from-class-names statement, sources, licences, citations
      manifest.json         parameters, counts, "complete": true when finished
      catalog.yaml          datasets for `mmkd eval` (same format as `mmkd synth`'s)
      decision_vocab.yaml   modality -> {classnames, templates}
      images/<dataset>/<sample_id>.png|jpg    every image once (train, val and test)
      train/pairs.csv       image, caption, sample_id, modality, label, dataset  (train splits only)
      train/shards/shard-000000.tar ...       the same pairs as webdataset shards
      eval/<dataset>/train.csv val.csv test.csv   image, label, label_id, modality, sample_id
                                              (linear-probe split; test.csv = official test = zero-shot set)
      eval/<dataset>/retrieval.csv            image, caption, sample_id, modality, label (test images)
      eval/<dataset>/retrieval-val.csv        the same for validation images
      catalog-val.yaml      the same datasets on their validation splits (choose settings here)
      eval/<dataset>/classnames.txt, templates.txt

catalog entries: real-<dataset> (zero-shot, linear-probe) and real-<dataset>-retrieval, for
dataset in pneumoniamnist, breastmnist, retinamnist, pbc.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmkd.synth.corpus import LABEL_COLUMNS, SynthCorpus, _prepare_out, validation_catalog
from mmkd.synth.io import save_png, write_catalog, write_csv, write_lines, write_shards
from mmkd.errors import UsageError
from mmkd.utils.io import atomic_write_json, atomic_write_text

REAL_MINI = Path(__file__).parent.parent / "assets" / "real_mini"
FORMAT_VERSION = 2  # 2: validation retrieval sets and catalog-val.yaml
GENERATOR = "mmkd real-corpus"


@dataclass(frozen=True)
class RealSet:
    dataset: str  # file/folder name in real_mini
    modality: str
    classnames: tuple[str, ...]  # in label order (MedMNIST label index / PBC folder order)
    class_phrases: tuple[tuple[str, ...], ...]  # caption synonyms per class
    modality_phrases: tuple[str, ...]
    templates: tuple[str, ...]  # zero-shot prompts, "{}" = class name
    folders: tuple[str, ...] = ()  # PBC: class folder names in label order


REAL_SETS: dict[str, RealSet] = {s.dataset: s for s in [
    RealSet("pneumoniamnist", "chest-xray", ("normal lungs", "pneumonia"),
            (("normal lungs", "no pneumonia", "clear lung fields", "a normal chest"),
             ("pneumonia", "pneumonic consolidation", "lung opacities from pneumonia", "signs of pneumonia")),
            ("paediatric chest X-ray", "chest radiograph", "frontal chest X-ray", "chest X-ray of a child", "chest film"),
            ("a chest X-ray showing {}.", "a paediatric chest radiograph with {}.", "an X-ray of the chest: {}.",
             "a radiograph of {}.")),
    RealSet("breastmnist", "breast-ultrasound", ("malignant tumour", "normal or benign tissue"),
            (("a malignant breast lesion", "breast cancer", "a malignant tumour", "a suspicious malignant mass"),
             ("normal or benign breast tissue", "a benign breast finding", "no malignancy", "normal or benign tissue")),
            ("breast ultrasound", "ultrasound of the breast", "breast sonogram", "sonographic breast image"),
            ("a breast ultrasound showing {}.", "an ultrasound image of {}.", "a breast sonogram with {}.",
             "sonography of the breast: {}.")),
    RealSet("retinamnist", "fundus", tuple(f"{g} diabetic retinopathy" for g in
                                            ("no", "mild", "moderate", "severe", "proliferative")),
            (("no diabetic retinopathy", "a healthy retina", "no signs of retinopathy"),
             ("mild diabetic retinopathy", "mild non-proliferative retinopathy", "grade 1 diabetic retinopathy"),
             ("moderate diabetic retinopathy", "moderate non-proliferative retinopathy", "grade 2 diabetic retinopathy"),
             ("severe diabetic retinopathy", "severe non-proliferative retinopathy", "grade 3 diabetic retinopathy"),
             ("proliferative diabetic retinopathy", "retinopathy with neovascularisation", "grade 4 diabetic retinopathy")),
            ("colour fundus photograph", "retinal fundus image", "fundus photo", "fundus photograph of the retina"),
            ("a fundus photograph showing {}.", "a retinal image with {}.", "a colour fundus photo of {}.",
             "fundus photography: {}.")),
    RealSet("pbc", "blood-cells", ("basophil", "eosinophil", "erythroblast", "immature granulocyte", "lymphocyte",
                                   "monocyte", "neutrophil", "platelet"),
            tuple((f"a {c}", f"a single {c}", f"one {c}", f"{c} morphology") for c in
                  ("basophil", "eosinophil", "erythroblast", "immature granulocyte", "lymphocyte", "monocyte",
                   "neutrophil", "platelet")),
            ("peripheral blood smear", "blood smear microscopy", "stained blood film", "microscopy of a blood cell"),
            ("a blood smear image of a {}.", "a microscopy image showing a {}.", "a stained blood cell: {}.",
             "peripheral blood film with a {}."),
            folders=("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")),
]}

_FRAMES = ("{M} showing {F}.", "{F} on {M}.", "{M}: {F}.", "{M} with {F}.", "{M} demonstrating {F}.")


def class_caption(spec: RealSet, label: int, rng: np.random.Generator) -> str:
    """A caption made from a class name only (a frame, a modality synonym, a class synonym)."""
    phrases = spec.class_phrases[label]
    text = _FRAMES[int(rng.integers(len(_FRAMES)))].format(
        M=spec.modality_phrases[int(rng.integers(len(spec.modality_phrases)))],
        F=phrases[int(rng.integers(len(phrases)))])
    return text[0].upper() + text[1:]


def _hash_rank(seed: int, text: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest(), "big")


def _cap_per_class(items: list[tuple[str, int, object]], cap: int | None, seed: int) -> list[tuple[str, int, object]]:
    """At most `cap` items per label: those with the lowest seeded hash of their id, in the original order."""
    if cap is None:
        return items
    keep = set()
    for label in sorted({lab for _, lab, _ in items}):
        ids = sorted((sid for sid, lab, _ in items if lab == label), key=lambda s: _hash_rank(seed, s))
        keep.update(ids[:cap])
    return [it for it in items if it[0] in keep]


def _load_splits(spec: RealSet, seed: int) -> dict[str, list[tuple[str, int, object]]]:
    """split -> [(sample_id, label, source)], source an uint8 image array or a JPEG path."""
    if spec.folders:
        out: dict[str, list] = {"train": [], "val": [], "test": []}
        for split in ("train", "test"):
            for label, folder in enumerate(spec.folders):
                files = sorted((REAL_MINI / "pbc" / split / folder).glob("*.jpg"))
                items = [(f"pbc-{split}-{f.stem}", label, f) for f in files]
                if split == "train":  # a seeded 10 % of each class is the validation split
                    ranked = sorted(items, key=lambda it: _hash_rank(seed, it[0]))
                    val_ids = {it[0] for it in ranked[: max(1, len(items) // 10)]}
                    out["val"].extend((sid.replace("-train-", "-val-"), lab, src) for sid, lab, src in items
                                      if sid in val_ids)
                    items = [it for it in items if it[0] not in val_ids]
                out[split].extend(items)
        return out
    data = np.load(REAL_MINI / "medmnist" / f"{spec.dataset}.npz")
    return {split: [(f"{spec.dataset}-{split}-{i:05d}", int(lab), img) for i, (img, lab) in
                    enumerate(zip(data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)))]
            for split in ("train", "val", "test")}


def _save_image(root: Path, dataset: str, sid: str, source) -> str:
    """Write one image under images/<dataset>/; return its path relative to the corpus root."""
    if isinstance(source, Path):
        rel = f"images/{dataset}/{sid}{source.suffix.lower()}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, root / rel)  # the original JPEG bytes, not re-encoded
        return rel
    rel = f"images/{dataset}/{sid}.png"
    save_png(root / rel, source if source.ndim == 3 else np.repeat(source[..., None], 3, axis=2))
    return rel


def write_real_corpus(out_dir: str | os.PathLike, seed: int = 0, quick: bool = False,
                      max_train_per_class: int | None = None, overwrite: bool = False,
                      progress: bool = True) -> SynthCorpus:
    """Write the captioned real-mini corpus and its evaluation sets (layout in the module docstring).

    `quick` caps every class at 40 training pairs and 10 val/test images; `max_train_per_class`
    caps training pairs (and the linear-probe train split) per class. Deterministic in `seed`.
    """
    from tqdm import tqdm

    if max_train_per_class is not None and max_train_per_class < 1:
        raise UsageError(f"--train-per-class: {max_train_per_class} must be at least 1")
    train_cap = max_train_per_class or (40 if quick else None)
    eval_cap = 10 if quick else None
    params = {"seed": seed, "quick": quick, "train_per_class": train_cap, "eval_per_class": eval_cap,
              "format_version": FORMAT_VERSION}
    root = Path(out_dir)
    existing = _prepare_out(root, params, overwrite, generator=GENERATOR, extra_outputs=("images", "catalog-val.yaml"))
    if existing is not None:
        return existing
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "manifest.json", {"generator": GENERATOR, "format_version": FORMAT_VERSION,
                                               "complete": False, "params": params})
    pairs, catalog, counts = [], {}, {}
    for spec in tqdm(REAL_SETS.values(), desc="real-mini sets", disable=not progress):
        splits = _load_splits(spec, seed)
        splits = {"train": _cap_per_class(splits["train"], train_cap, seed),
                  "val": _cap_per_class(splits["val"], eval_cap, seed),
                  "test": _cap_per_class(splits["test"], eval_cap, seed)}
        folder = root / "eval" / spec.dataset
        saved: dict[str, str] = {}  # sample_id -> image path relative to the corpus root
        for split, items in splits.items():
            rows = []
            for sid, label, source in items:
                rel = saved[sid] = _save_image(root, spec.dataset, sid, source)
                rows.append({"image": f"../../{rel}", "label": spec.classnames[label], "label_id": label,
                             "modality": spec.modality, "sample_id": sid})
                if split == "train":
                    rng = np.random.default_rng([seed, _hash_rank(0, sid) % 2**32])
                    pairs.append({"image": f"../{rel}", "caption": class_caption(spec, label, rng), "sample_id": sid,
                                  "modality": spec.modality, "label": spec.classnames[label], "dataset": spec.dataset})
            write_csv(folder / f"{split}.csv", rows, LABEL_COLUMNS)
            counts[f"{spec.dataset}/{split}"] = len(rows)
        for split, name in (("test", "retrieval.csv"), ("val", "retrieval-val.csv")):
            retrieval = []
            for sid, label, _ in _cap_per_class(splits[split], 5 if quick else 20, seed + 1):
                rng = np.random.default_rng([seed, _hash_rank(1, sid) % 2**32])
                texts: list[str] = []
                for _ in range(30):  # three different captions per image
                    text = class_caption(spec, label, rng)
                    if text not in texts:
                        texts.append(text)
                    if len(texts) == 3:
                        break
                retrieval.extend({"image": f"../../{saved[sid]}", "caption": t, "sample_id": sid,
                                  "modality": spec.modality, "label": spec.classnames[label]} for t in texts)
            write_csv(folder / name, retrieval, ["image", "caption", "sample_id", "modality", "label"])
        write_lines(folder / "classnames.txt", spec.classnames)
        write_lines(folder / "templates.txt", spec.templates)
        base = f"eval/{spec.dataset}"
        catalog[f"real-{spec.dataset}"] = {
            "tasks": ["zero-shot", "linear-probe"], "format": "csv", "path": f"{base}/test.csv",
            "split": {s: f"{base}/{s}.csv" for s in ("train", "val", "test")}, "classnames": list(spec.classnames),
            "templates": f"{base}/templates.txt", "modality": spec.modality}
        catalog[f"real-{spec.dataset}-retrieval"] = {"tasks": ["retrieval"], "format": "csv",
                                                     "path": f"{base}/retrieval.csv", "modality": spec.modality}
    write_csv(root / "train" / "pairs.csv", pairs, ["image", "caption", "sample_id", "modality", "label", "dataset"])
    write_shards(root / "train" / "shards", pairs, root / "train")
    write_catalog(root / "catalog.yaml", catalog, header="Datasets of the real-mini corpus (captions are made from "
                  "class names). Paths are relative to this file.")
    write_catalog(root / "catalog-val.yaml", validation_catalog(catalog),
                  header="The validation sets of the same datasets: choose models and settings here, report on "
                         "catalog.yaml. Paths are relative to this file.")
    import yaml

    vocab = {s.modality: {"classnames": list(s.classnames), "templates": list(s.templates)} for s in REAL_SETS.values()}
    atomic_write_text(root / "decision_vocab.yaml", yaml.safe_dump(vocab, sort_keys=False, width=120))
    atomic_write_text(root / "README.md", _readme(params))
    counts["train_pairs"] = len(pairs)
    atomic_write_json(root / "manifest.json", {"generator": GENERATOR, "format_version": FORMAT_VERSION,
                                               "complete": True, "params": params, "counts": counts,
                                               "datasets": list(catalog),
                                               "captions": "made from class names through templates"})
    return SynthCorpus(root)


def _readme(params: dict) -> str:
    licences = (REAL_MINI / "README.md").read_text()
    doc = __doc__.split("Output layout", 1)[1]
    return ("# Real-mini corpus (captions made from class names)\n\n"
            "**The captions in this folder are not real reports: they are made from each image's class name "
            "through templates and synonyms, and say nothing beyond the class label.** State this wherever "
            "results on these data are shown.\n\n"
            "Training pairs come from the training splits only; evaluation sets use the official test splits "
            f"(PBC: the shipped test split; its validation split is a seeded 10 % of train). Parameters: "
            f"`{json.dumps(params)}`.\n\n## Output layout{doc}\n\n"
            "## Sources, licences and citations (from real_mini/README.md)\n\n" + licences.split("\n", 1)[1])
