"""The synthetic multi-modality corpus: `mmkd synth --out DIR` and `generate(out_dir, ...)`.

Four procedural modalities with their own look and four classes each (the first is normal):

    ct              normal lungs | pulmonary nodules | lung mass | pleural effusion
    mri             normal brain | brain tumour | multiple sclerosis lesions | ischaemic infarct
    histopathology  normal glandular tissue | carcinoma | inflammation | necrosis
    dermoscopy      normal skin | benign nevus | melanoma | basal cell carcinoma

(the class names above are the `label` values of every CSV). Each image is drawn with numpy
from a key derived from the seed, so one seed gives byte-identical files; captions say what
was planted (finding, count, size, side, region), see `mmkd.synth.text`. `difficulty` (default 0.25)
fades the findings and adds noise. Measured at 32 px with 4 classes (chance 0.25): a linear model
on raw pixels (50 images per class) gets 0.6-0.76 per modality at 0.25. The demo's tiny ViT
(patch 4, width 128, 4 layers) trained as a plain classifier on 250 images per class reaches,
at 0.25, 0.88 (CT), 0.945 (MRI), 0.97 (histopathology), 0.95 (dermoscopy) after 300 steps, but
only 0.60 on MRI after 180 steps (0.43 at difficulty 0.5): learnable, not instantly. Raise or
lower `difficulty` to tune how hard the demo's modalities are.

Python API: `generate(out_dir, seed=0, size=32, quick=False, ...) -> SynthCorpus` (with
`.catalog`, `.pairs_csv`, `.shards`, `.pairs()` -> DataFrame); `mmkd.synth.render.render_sample`
draws single images in memory; `mmkd.synth.splits` selects the pairs each model of the demo sees;
`mmkd.synth.io.merge_catalogs` joins this catalog with the real-mini one (`real_corpus`).

Output layout (all paths inside tables are relative to the table's own folder; the catalog's
paths are relative to the catalog):

    DIR/
      README.md              what this is, how it was made, this layout
      manifest.json          parameters, counts, format_version, "complete": true when finished
      catalog.yaml           the datasets for `mmkd eval` (format below), on their test sets
      catalog-val.yaml       the same datasets on their validation sets (choose models and settings here)
      decision_vocab.yaml    modality -> {classnames, templates} (class prompts per modality)
      train/
        pairs.csv            image, caption, sample_id, modality, label   (training image-text pairs)
        planted.csv          sample_id, image, modality, label, finding, count, size_mm, size_word, side,
                             region, extent, key  (what was drawn: the ground truth behind each caption;
                             render_sample(modality, finding, size, parse_key(key), difficulty=...)
                             redraws the image)
        images/<modality>/<sample_id>.png
        shards/shard-000000.tar ...   the same pairs as webdataset shards: <id>.png, <id>.txt, <id>.json
      eval/<modality>/       held-out images (never in train/), one folder per modality
        train.csv val.csv test.csv    linear-probe split; test.csv is also the zero-shot set
                                      columns: image, label, label_id, modality, sample_id
        retrieval.csv        image, caption, sample_id, modality, label  (several captions per image)
        retrieval-val.csv    the same for other images (the validation retrieval set)
        classnames.txt       one class name per line, in label_id order
        templates.txt        zero-shot prompt templates, one per line, "{}" marks the class name
        planted.csv          ground truth of every eval image of the modality (columns as in train/)
        images/*.png
      eval/vqa/
        vqa.jsonl            {"image", "question", "answer", "answer_type": closed|open,
                              "split": train|val|test, "question_type", "modality", "sample_id", "qid"}
        planted.csv          ground truth of every VQA image
        images/*.png
      eval/slides/
        slides.csv           slide_id, path (folder of patch PNGs), label (benign|carcinoma),
                             time (months), event (1 death, 0 censored), patient_id
        truth.csv            slide_id, tumour_share, num_patches, num_tumour_patches (not for models)
        patches.csv          slide_id, patch, pattern, key (the planted pattern of every patch)
        patches/<slide_id>/patch_000.png ...
        val/                 a second, independent cohort (the validation set): the same four tables and patches/

catalog.yaml entries (`datasets:` name -> entry):
    synth-<modality>            tasks [zero-shot, linear-probe]; format csv; path eval/<m>/test.csv;
                                split {train, val, test: csv paths}; classnames (list);
                                templates eval/<m>/templates.txt; modality <m>
    synth-<modality>-retrieval  tasks [retrieval]; format csv; path eval/<m>/retrieval.csv
    synth-vqa                   tasks [vqa]; format vqa; path eval/vqa/vqa.jsonl; modality multi
    synth-slides                tasks [mil-classification, survival]; format slides;
                                path eval/slides/slides.csv; classnames [benign, carcinoma]
catalog-val.yaml holds the same names (`validation_catalog`): split {train, val} (val is evaluated;
a linear probe picks its C on a held-out part of train), retrieval-val.csv, VQA `split: val`, and
eval/slides/val/slides.csv.

Slide cohorts are described in `mmkd.synth.slides`; VQA questions in `mmkd.synth.vqa`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmkd.synth import slides as synth_slides
from mmkd.synth import text as synth_text
from mmkd.synth import vqa as synth_vqa
from mmkd.synth.findings import MODALITIES, Planted
from mmkd.synth.io import save_png, write_catalog, write_csv, write_jsonl, write_lines, write_shards
from mmkd.synth.render import render_sample
from mmkd.errors import UsageError
from mmkd.utils.io import atomic_write_json, atomic_write_text

FORMAT_VERSION = 2  # 2: validation sets for every evaluation (catalog-val.yaml), slide cohorts v2
DEFAULT_DIFFICULTY = 0.25
PAIR_COLUMNS = ["image", "caption", "sample_id", "modality", "label"]
LABEL_COLUMNS = ["image", "label", "label_id", "modality", "sample_id"]
PLANTED_COLUMNS = ["sample_id", "image", "modality", "label", "finding", "count", "size_mm", "size_word", "side", "region",
                   "extent", "key"]
# Section codes: part of every image key, so that no two sections ever share an image.
_TRAIN, _PROBE, _RETRIEVAL, _VQA, _SLIDES, _RETRIEVAL_VAL, _SLIDES_VAL = 1, 2, 3, 4, 5, 6, 7
_PROBE_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SynthSizes:
    """How many images each part gets (per class of each modality unless said otherwise)."""

    train_per_class: int
    probe_per_class: tuple[int, int, int]  # linear-probe train, val, test (test = zero-shot set)
    retrieval_per_class: int  # in each of the validation and test retrieval sets
    captions_per_image: int
    vqa_per_class: int
    num_slides: int  # in each of the validation and test cohorts
    patches_per_slide: int

    @classmethod
    def default(cls, quick: bool = False, train_per_class: int | None = None) -> SynthSizes:
        if quick:
            return cls(train_per_class or 24, (8, 4, 8), 4, 3, 5, 16, 8)
        return cls(train_per_class or 300, (40, 30, 50), 20, 3, 25, 200, 24)


@dataclass(frozen=True)
class _Job:
    path: str  # relative to the corpus root
    modality: str
    finding: str
    key: tuple[int, ...]


def _render_chunk(root: str, size: int, difficulty: float, jobs: list[_Job]) -> list[dict]:
    out = []
    for job in jobs:
        image, planted = render_sample(job.modality, job.finding, size, job.key, difficulty=difficulty)
        save_png(Path(root) / job.path, image)
        out.append(planted.as_dict())
    return out


def _render_all(root: Path, size: int, difficulty: float, jobs: list[_Job], workers: int,
                progress: bool) -> list[Planted]:
    """Render and save every job (in parallel when it pays); Planted records (without masks) in job order."""
    from tqdm import tqdm

    chunk = 64
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    bar = tqdm(total=len(jobs), desc="synth images", unit="img", disable=not progress)
    results: list[dict] = []
    if workers > 1 and len(jobs) >= 2000:  # below that, starting processes costs more than it saves
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            n = len(chunks)
            for part in pool.map(_render_chunk, [str(root)] * n, [size] * n, [difficulty] * n, chunks):
                results.extend(part)
                bar.update(len(part))
    else:
        for c in chunks:
            results.extend(_render_chunk(str(root), size, difficulty, c))
            bar.update(len(c))
    bar.close()
    return [Planted(**r) for r in results]


def _text_rng(key: tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng([*key, 9])  # stream 9: words; 1-3 are the image streams


def _balanced(modality: str, per_class: int, prefix: str, key_head: tuple[int, ...]) -> list[tuple[str, str, tuple]]:
    """(sample_id, finding, key) for per_class images of every class, classes interleaved (0,1,2,3,0,1,...)."""
    findings = MODALITIES[modality]
    out = []
    for n in range(per_class * len(findings)):
        f_idx, i = n % len(findings), n // len(findings)
        out.append((f"{modality}-{prefix}-{n:06d}", findings[f_idx], (*key_head, f_idx, i)))
    return out


def key_text(key: tuple[int, ...]) -> str:
    """The `key` column of planted tables: `render_sample(modality, finding, size, parse_key(text))` redraws the image."""
    return "-".join(str(int(k)) for k in key)


def parse_key(text: str) -> tuple[int, ...]:
    return tuple(int(k) for k in str(text).split("-"))


def _planted_row(sample_id: str, image: str, p: Planted, key: tuple[int, ...]) -> dict:
    return {"sample_id": sample_id, "image": image, **p.as_dict(), "finding": p.label,
            "label": synth_text.CLASSNAMES[p.modality][p.label], "key": key_text(key)}


def check_args(size: int, train_per_class: int | None, seed: int, workers: int | None,
               difficulty: float = DEFAULT_DIFFICULTY) -> None:
    """Usage errors name the option, the bad value and what is allowed."""
    if not 16 <= size <= 512:
        raise UsageError(f"--size: {size} is out of range; use an image side between 16 and 512 pixels (default 32)")
    if train_per_class is not None and not 1 <= train_per_class <= 100_000:
        raise UsageError(f"--train-per-class: {train_per_class} is out of range; use 1 to 100000 images per class")
    if seed < 0:
        raise UsageError(f"--seed: {seed} is negative; use a seed >= 0")
    if not 0.0 <= difficulty <= 1.0:
        raise UsageError(f"--difficulty: {difficulty} is outside [0, 1]; 0 draws findings at full contrast with "
                         f"little noise, 1 at half contrast with three times the noise (default {DEFAULT_DIFFICULTY})")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers: {workers} must be at least 1")


@dataclass
class SynthCorpus:
    """A finished corpus folder; see the module docstring for its layout."""

    root: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.root / "manifest.json").read_text())

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.yaml"

    @property
    def pairs_csv(self) -> Path:
        return self.root / "train" / "pairs.csv"

    @property
    def shards(self) -> list[Path]:
        return sorted((self.root / "train" / "shards").glob("shard-*.tar"))

    def pairs(self, absolute_paths: bool = False):
        """The training pairs as a pandas DataFrame (image paths relative to train/, or absolute)."""
        import pandas as pd

        df = pd.read_csv(self.pairs_csv, keep_default_na=False)
        if absolute_paths:
            df["image"] = [str((self.pairs_csv.parent / p).resolve()) for p in df["image"]]
        return df


def _prepare_out(root: Path, params: dict, overwrite: bool, generator: str = "mmkd synth",
                 extra_outputs: tuple[str, ...] = ()) -> SynthCorpus | None:
    """An existing finished corpus with the same parameters is reused; anything else needs an empty folder.

    An unfinished or (with `overwrite`) different corpus of the same generator is removed first:
    only the paths this module writes, never other files of the folder.
    """
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("complete") and old.get("params") == params and not overwrite:
            return SynthCorpus(root)
        if old.get("generator") != generator:
            raise UsageError(f"--out: {root} holds a manifest.json not written by {generator}; choose another folder")
        if old.get("complete") and not overwrite:
            raise UsageError(f"--out: {root} already holds a corpus made with other parameters ({old.get('params')}); "
                             f"pass --overwrite to replace it, or choose another folder")
        for name in ("train", "eval", "catalog.yaml", "catalog-val.yaml", "decision_vocab.yaml", "README.md", "manifest.json",
                     *extra_outputs):
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"--out: {root} exists and is not an empty folder; choose a new or empty folder")
    return None


def generate(out_dir: str | os.PathLike, seed: int = 0, size: int = 32, train_per_class: int | None = None,
             quick: bool = False, difficulty: float | None = None, workers: int | None = None, overwrite: bool = False,
             progress: bool = True, sizes: SynthSizes | None = None) -> SynthCorpus:
    """Write the synthetic corpus into `out_dir` (layout in the module docstring) and return it.

    Deterministic in (seed, size, counts): the same arguments give byte-identical files.
    A finished corpus with the same arguments is reused as it is; `overwrite` replaces one
    made with other arguments. `workers` processes render images (default: up to 4 CPUs).
    `difficulty` in [0, 1] fades findings and adds noise (see `mmkd.synth.render.render_sample`).
    `sizes` sets every count explicitly (overrides `quick` and `train_per_class`).
    """
    difficulty = DEFAULT_DIFFICULTY if difficulty is None else float(difficulty)
    check_args(size, train_per_class, seed, workers, difficulty)
    sizes = sizes or SynthSizes.default(quick, train_per_class)
    params = {"seed": seed, "size": size, "quick": quick, "difficulty": difficulty, "format_version": FORMAT_VERSION,
              **{k: list(v) if isinstance(v, tuple) else v for k, v in sizes.__dict__.items()}}
    root = Path(out_dir)
    existing = _prepare_out(root, params, overwrite)
    if existing is not None:
        return existing
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "manifest.json", {"generator": "mmkd synth", "format_version": FORMAT_VERSION,
                                               "complete": False, "params": params})
    workers = workers or max(1, min(4, os.cpu_count() or 1))

    # 1. plan every image (ids, findings, keys), 2. render them all at once, 3. write the tables
    plan: dict[str, list[tuple[str, str, tuple]]] = {}
    jobs: list[_Job] = []

    def add(section: str, folder: str, modality: str, items: list[tuple[str, str, tuple]]) -> None:
        plan[section] = items
        jobs.extend(_Job(f"{folder}/{sid}.png", modality, f, key) for sid, f, key in items)

    for m_idx, m in enumerate(MODALITIES):
        add(f"train/{m}", f"train/images/{m}", m, _balanced(m, sizes.train_per_class, "train", (seed, _TRAIN, m_idx)))
        for s_idx, split in enumerate(_PROBE_SPLITS):
            add(f"probe/{m}/{split}", f"eval/{m}/images", m,
                _balanced(m, sizes.probe_per_class[s_idx], f"eval{split}", (seed, _PROBE, m_idx, s_idx)))
        add(f"retrieval/{m}", f"eval/{m}/images", m,
            _balanced(m, sizes.retrieval_per_class, "retrieval", (seed, _RETRIEVAL, m_idx)))
        add(f"retrieval-val/{m}", f"eval/{m}/images", m,
            _balanced(m, sizes.retrieval_per_class, "retrievalval", (seed, _RETRIEVAL_VAL, m_idx)))
        add(f"vqa/{m}", "eval/vqa/images", m, _balanced(m, sizes.vqa_per_class, "vqa", (seed, _VQA, m_idx)))
    # Two independent slide cohorts: test (eval/slides/) and validation (eval/slides/val/).
    cohorts = {section: synth_slides.plan_cohort(seed, sizes.num_slides, sizes.patches_per_slide, section=section)
               for section in (_SLIDES, _SLIDES_VAL)}
    for section, cohort in cohorts.items():
        folder = _SLIDE_FOLDERS[section]
        for s_idx, slide in enumerate(cohort):
            jobs.extend(_Job(f"{folder}/patches/{slide.slide_id}/patch_{p:03d}.png", "histopathology", pattern,
                             slide_key(seed, s_idx, p, section)) for p, pattern in enumerate(slide.patterns))

    planted_list = _render_all(root, size, difficulty, jobs, workers, progress)
    planted_by_path = {job.path: p for job, p in zip(jobs, planted_list)}

    def planted_of(folder: str, sid: str) -> Planted:
        return planted_by_path[f"{folder}/{sid}.png"]

    _write_train(root, plan, planted_of)
    catalog: dict[str, dict] = {}
    for m in MODALITIES:
        catalog.update(_write_modality_eval(root, m, plan, planted_of, sizes.captions_per_image))
    catalog.update(_write_vqa(root, plan, planted_of))
    for section, cohort in cohorts.items():
        _write_slides(root / _SLIDE_FOLDERS[section], cohort, seed, section)
    catalog["synth-slides"] = {"tasks": ["mil-classification", "survival"], "format": "slides",
                               "path": f"{_SLIDE_FOLDERS[_SLIDES]}/slides.csv",
                               "classnames": list(synth_slides.SLIDE_CLASSNAMES), "modality": "histopathology"}
    write_catalog(root / "catalog.yaml", catalog,
                  header=f"Datasets of the synthetic corpus (mmkd synth, seed {seed}, {size} px). Paths are relative "
                         f"to this file.\nTask names: zero-shot, linear-probe, retrieval, vqa, mil-classification, survival.")
    write_catalog(root / "catalog-val.yaml", validation_catalog(catalog),
                  header=f"The validation sets of the same datasets (mmkd synth, seed {seed}): choose models and settings "
                         f"here, report on catalog.yaml. Paths are relative to this file.")
    import yaml

    vocab = {m: {"classnames": synth_text.classnames(m), "templates": synth_text.ZERO_SHOT_TEMPLATES[m]}
             for m in MODALITIES}
    atomic_write_text(root / "decision_vocab.yaml", yaml.safe_dump(vocab, sort_keys=False, width=120))
    atomic_write_text(root / "README.md", _readme(params))
    counts = {"train_pairs": sum(len(plan[f"train/{m}"]) for m in MODALITIES), "images": len(jobs),
              "slides": {"test": len(cohorts[_SLIDES]), "val": len(cohorts[_SLIDES_VAL])}, "datasets": list(catalog)}
    atomic_write_json(root / "manifest.json", {"generator": "mmkd synth", "format_version": FORMAT_VERSION,
                                               "complete": True, "params": params, "counts": counts,
                                               "modalities": {m: synth_text.classnames(m) for m in MODALITIES}})
    return SynthCorpus(root)


def _write_train(root: Path, plan, planted_of) -> None:
    pairs, planted_rows = [], []
    for m in MODALITIES:
        for sid, _, key in plan[f"train/{m}"]:
            p = planted_of(f"train/images/{m}", sid)
            image = f"images/{m}/{sid}.png"
            pairs.append({"image": image, "caption": synth_text.caption(p, _text_rng(key)), "sample_id": sid,
                          "modality": m, "label": synth_text.CLASSNAMES[m][p.label]})
            planted_rows.append(_planted_row(sid, image, p, key))
    write_csv(root / "train" / "pairs.csv", pairs, PAIR_COLUMNS)
    write_csv(root / "train" / "planted.csv", planted_rows, PLANTED_COLUMNS)
    write_shards(root / "train" / "shards", pairs, root / "train")


def _write_modality_eval(root: Path, m: str, plan, planted_of, captions_per_image: int) -> dict[str, dict]:
    folder = root / "eval" / m
    names = synth_text.classnames(m)
    planted_rows = []
    for split in _PROBE_SPLITS:
        rows = []
        for sid, _, key in plan[f"probe/{m}/{split}"]:
            p = planted_of(f"eval/{m}/images", sid)
            label = synth_text.CLASSNAMES[m][p.label]
            rows.append({"image": f"images/{sid}.png", "label": label, "label_id": names.index(label),
                         "modality": m, "sample_id": sid})
            planted_rows.append(_planted_row(sid, f"images/{sid}.png", p, key))
        write_csv(folder / f"{split}.csv", rows, LABEL_COLUMNS)
    for section, name in (("retrieval", "retrieval.csv"), ("retrieval-val", "retrieval-val.csv")):
        retrieval = []
        for sid, _, key in plan[f"{section}/{m}"]:
            p = planted_of(f"eval/{m}/images", sid)
            planted_rows.append(_planted_row(sid, f"images/{sid}.png", p, key))
            for text in synth_text.distinct_captions(p, _text_rng(key), captions_per_image):
                retrieval.append({"image": f"images/{sid}.png", "caption": text, "sample_id": sid, "modality": m,
                                  "label": synth_text.CLASSNAMES[m][p.label]})
        write_csv(folder / name, retrieval, PAIR_COLUMNS)
    write_csv(folder / "planted.csv", planted_rows, PLANTED_COLUMNS)
    write_lines(folder / "classnames.txt", names)
    write_lines(folder / "templates.txt", synth_text.ZERO_SHOT_TEMPLATES[m])
    base = f"eval/{m}"
    return {
        f"synth-{m}": {"tasks": ["zero-shot", "linear-probe"], "format": "csv", "path": f"{base}/test.csv",
                       "split": {s: f"{base}/{s}.csv" for s in _PROBE_SPLITS}, "classnames": names,
                       "templates": f"{base}/templates.txt", "modality": m},
        f"synth-{m}-retrieval": {"tasks": ["retrieval"], "format": "csv", "path": f"{base}/retrieval.csv",
                                 "modality": m},
    }


def _write_vqa(root: Path, plan, planted_of) -> dict[str, dict]:
    rows, planted_rows = [], []
    for m in MODALITIES:
        for n, (sid, _, key) in enumerate(plan[f"vqa/{m}"]):
            p = planted_of("eval/vqa/images", sid)
            planted_rows.append(_planted_row(sid, f"images/{sid}.png", p, key))
            per_class_index = n // len(MODALITIES[m])
            split = ("train", "train", "train", "val", "test")[per_class_index % 5]
            for q_idx, q in enumerate(synth_vqa.questions(p, _text_rng(key))):
                rows.append({"image": f"images/{sid}.png", "question": q["question"], "answer": q["answer"],
                             "answer_type": q["answer_type"], "split": split, "question_type": q["question_type"],
                             "modality": m, "sample_id": sid, "qid": f"{sid}-q{q_idx}"})
    write_jsonl(root / "eval" / "vqa" / "vqa.jsonl", rows)
    write_csv(root / "eval" / "vqa" / "planted.csv", planted_rows, PLANTED_COLUMNS)
    return {"synth-vqa": {"tasks": ["vqa"], "format": "vqa", "path": "eval/vqa/vqa.jsonl", "modality": "multi"}}


def slide_key(seed: int, slide_index: int, patch_index: int, section: int = _SLIDES) -> tuple[int, ...]:
    return (seed, section, slide_index, patch_index)


_SLIDE_FOLDERS = {_SLIDES: "eval/slides", _SLIDES_VAL: "eval/slides/val"}


def validation_catalog(catalog: dict[str, dict]) -> dict[str, dict]:
    """The same datasets on their validation sets: class splits without `test` (so val is evaluated and a
    linear probe picks its C on a part of train), the validation retrieval table, VQA's val questions,
    the validation slide cohort."""
    out = {}
    for name, entry in catalog.items():
        entry = dict(entry)
        if isinstance(entry.get("split"), dict):
            entry["split"] = {k: v for k, v in entry["split"].items() if k != "test"}
            entry["path"] = entry["split"]["val"]
        elif "retrieval" in entry["tasks"]:
            entry["path"] = entry["path"].replace("retrieval.csv", "retrieval-val.csv")
        elif entry["format"] == "vqa":
            entry["split"] = "val"
        elif entry["format"] == "slides":
            entry["path"] = entry["path"].replace("slides/slides.csv", "slides/val/slides.csv")
        out[name] = entry
    return out


def _write_slides(folder: Path, cohort: list[synth_slides.SlidePlan], seed: int, section: int) -> None:
    slides, truth, patches = [], [], []
    for s_idx, s in enumerate(cohort):
        slides.append({"slide_id": s.slide_id, "path": f"patches/{s.slide_id}", "label": s.label, "time": s.time,
                       "event": s.event, "patient_id": s.patient_id})
        truth.append({"slide_id": s.slide_id, "tumour_share": round(s.tumour_share, 4), "num_patches": len(s.patterns),
                      "num_tumour_patches": s.patterns.count("carcinoma")})
        patches.extend({"slide_id": s.slide_id, "patch": f"patch_{p:03d}.png", "pattern": pat,
                        "key": key_text(slide_key(seed, s_idx, p, section))} for p, pat in enumerate(s.patterns))
    write_csv(folder / "slides.csv", slides, ["slide_id", "path", "label", "time", "event", "patient_id"])
    write_csv(folder / "truth.csv", truth, ["slide_id", "tumour_share", "num_patches", "num_tumour_patches"])
    write_csv(folder / "patches.csv", patches, ["slide_id", "patch", "pattern", "key"])


def _readme(params: dict) -> str:
    doc = __doc__.split("Output layout", 1)[1]
    return (f"# Synthetic biomedical corpus (mmkd synth)\n\n"
            f"Procedurally drawn images — no real patient data. Parameters: `{json.dumps(params)}`.\n"
            f"Regenerate with `mmkd synth --out DIR --seed {params['seed']} --size {params['size']}"
            f"{' --quick' if params['quick'] else ''}`.\n\n"
            f"Captions, VQA answers, slide labels and survival times are derived from what was drawn into each "
            f"image (see `train/planted.csv`, `eval/*/planted.csv`, `eval/slides/truth.csv`).\n\n"
            f"## Output layout{doc}")
