"""The demo's data: both corpora, who sees which pairs, the decision vocabulary and one eval catalog.

`prepare(data_dir, recipe)` writes (all tables with paths relative to their own folder):

    data_dir/synth/            `mmkd synth` corpus (ct, mri, histopathology, dermoscopy)
    data_dir/real/             real-mini corpus (chest-xray, breast-ultrasound, fundus, blood-cells)
    data_dir/all_pairs.csv     every captioned training pair of both corpora
    data_dir/student_pairs.csv the student's stratified fraction of every modality
    data_dir/image_only.csv    every other training image: image, modality, sample_id (no caption)
    data_dir/teacher-<name>.csv  each teacher's pairs
    data_dir/decision_vocab.yaml modality -> {classnames, templates} of both corpora (the evaluation's)
    data_dir/decision_vocab_captions.yaml  modality -> {classnames, prompts: class -> texts}: the
                               student's own training captions of each class, none equal to an
                               evaluation prompt (the `:caption-vocab` control)
    data_dir/decision_vocab_captions_no_names.yaml  the same from the captions that name no class of
                               their modality, with image_only_no_names.csv (the modalities it covers)
                               (the `:caption-vocab-no-names` control)
    data_dir/synth-test/       with `recipe.test_data_seed`: a synthetic corpus of that seed, whose
                               evaluation sets are the synthetic test sets of catalog.yaml
    data_dir/catalog.yaml      the evaluation datasets of both corpora (six task types), test sets
    data_dir/catalog-val.yaml  the same datasets' validation sets (where stage-2 choices are made)
    data_dir/data.json         counts per modality and per table
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from mmkd.demo.recipe import DemoRecipe
from mmkd.utils.io import atomic_write_json, atomic_write_text


def _relative_pairs(corpus, data_dir: Path):
    """A corpus's training pairs with image paths relative to `data_dir`."""
    df = corpus.pairs()
    base = corpus.pairs_csv.parent.resolve()
    df["image"] = [os.path.relpath(base / p, data_dir.resolve()) for p in df["image"]]
    return df[["image", "caption", "sample_id", "modality", "label"]]


def _merged_catalog(parts: dict[str, Path], out: Path, recipe: DemoRecipe) -> dict[str, Any]:
    """One catalog over both corpora (paths rewritten relative to `out`), with the demo's probe settings."""
    from mmkd.evaluation.runner import parse_catalog

    datasets: dict[str, Any] = {}
    for catalog in parts.values():
        data = yaml.safe_load(catalog.read_text())
        base = catalog.parent.resolve()
        for name, entry in data["datasets"].items():
            entry = dict(entry)
            rel = lambda p: os.path.relpath(base / p, out.parent.resolve())  # noqa: E731
            entry["path"] = rel(entry["path"])
            if isinstance(entry.get("split"), dict):
                entry["split"] = {k: rel(v) for k, v in entry["split"].items()}
            if isinstance(entry.get("templates"), str) and (base / entry["templates"]).is_file():
                entry["templates"] = rel(entry["templates"])
            if "linear-probe" in entry.get("tasks", []):
                # One training-set size and a short C grid keep eight models' probes fast.
                entry.update({"fractions": [1.0], "shots": [], "c_grid": list(recipe.probe_c_grid)})
            datasets[name] = entry
    merged = {"datasets": datasets}
    parse_catalog(merged, out.parent)  # fail here, not in eight evaluation steps
    return merged


def _reuse_or_replace(write, folder: Path, **kwargs):
    """A corpus with the same parameters is reused; one made with others is replaced (the demo owns
    the folder), so a changed recipe never stops a rerun."""
    from mmkd.errors import UsageError

    try:
        return write(folder, **kwargs)
    except UsageError:
        return write(folder, overwrite=True, **kwargs)


def prepare(data_dir: str | Path, recipe: DemoRecipe, progress: bool = True) -> dict[str, Any]:
    """Write the demo's data (layout in the module docstring); returns the paths and counts."""
    import pandas as pd

    from mmkd.synth.real_corpus import write_real_corpus
    from mmkd.synth.corpus import generate
    from mmkd.synth.splits import demo_split, write_pairs_csv

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    synth = _reuse_or_replace(generate, data_dir / "synth", seed=recipe.seed, size=32,
                              train_per_class=recipe.synth_train_per_class, quick=recipe.quick,
                              difficulty=recipe.synth_difficulty, workers=2, progress=progress)
    real = _reuse_or_replace(write_real_corpus, data_dir / "real", seed=recipe.seed, quick=recipe.quick,
                             max_train_per_class=recipe.real_train_per_class, progress=progress)
    pairs = pd.concat([_relative_pairs(synth, data_dir), _relative_pairs(real, data_dir)], ignore_index=True)
    experts = {t.name: list(t.modalities) for t in recipe.teachers if t.modalities}
    split = demo_split(pairs, experts, student_fraction=recipe.student_fraction, generalist_fraction=None,
                       seed=recipe.seed)
    tables = {"all_pairs": pairs, "student_pairs": split.student_pairs}
    for t in recipe.teachers:
        if t.modalities:
            tables[f"teacher-{t.name}"] = split.experts[t.name]
        else:  # the weak generalist: a fraction of every modality, drawn with another seed than the student's
            from mmkd.synth.splits import take_fraction

            tables[f"teacher-{t.name}"] = take_fraction(pairs, t.fraction, seed=recipe.seed + 7919)
    paths = {}
    for name, table in tables.items():
        paths[name] = str(write_pairs_csv(table, data_dir / f"{name}.csv", data_dir))
    paths["image_only"] = str(write_pairs_csv(split.image_only, data_dir / "image_only.csv", data_dir,
                                              columns=["image", "modality", "sample_id"]))
    vocab = {**yaml.safe_load((synth.root / "decision_vocab.yaml").read_text()),
             **yaml.safe_load((real.root / "decision_vocab.yaml").read_text())}
    atomic_write_text(data_dir / "decision_vocab.yaml", yaml.safe_dump(vocab, sort_keys=False, width=120))
    synth_test = synth
    if recipe.test_data_seed is not None:  # test images no choice has seen: a corpus of a fresh seed
        synth_test = _reuse_or_replace(generate, data_dir / "synth-test", seed=recipe.test_data_seed, size=32,
                                       train_per_class=1, quick=recipe.quick, difficulty=recipe.synth_difficulty,
                                       workers=2, progress=progress)
    for name, what, source in (("catalog.yaml", "test sets", synth_test), ("catalog-val.yaml", "validation sets", synth)):
        catalog = _merged_catalog({"synth": source.root / name, "real": real.root / name}, data_dir / name, recipe)
        atomic_write_text(data_dir / name, f"# The demo's evaluation datasets ({what}): mmkd synth + real-mini "
                          "(captions made from class names).\n" + yaml.safe_dump(catalog, sort_keys=False, width=120))
    caption_vocab = caption_vocabulary(split.student_pairs, vocab, recipe.caption_vocab_per_class, recipe.seed)
    atomic_write_text(data_dir / "decision_vocab_captions.yaml",
                      yaml.safe_dump(caption_vocab, sort_keys=False, width=120, allow_unicode=True))
    no_names = caption_vocabulary(split.student_pairs, vocab, recipe.caption_vocab_per_class, recipe.seed,
                                  without_names=True)
    atomic_write_text(data_dir / "decision_vocab_captions_no_names.yaml",
                      yaml.safe_dump(no_names, sort_keys=False, width=120, allow_unicode=True))
    paths["image_only_no_names"] = str(write_pairs_csv(
        split.image_only[split.image_only["modality"].isin(list(no_names))], data_dir / "image_only_no_names.csv",
        data_dir, columns=["image", "modality", "sample_id"]))
    counts = {name: {str(m): int(n) for m, n in table["modality"].value_counts().sort_index().items()}
              for name, table in tables.items()}
    counts["image_only"] = {str(m): int(n) for m, n in split.image_only["modality"].value_counts().sort_index().items()}
    info = {"paths": {**paths, "decision_vocab": str(data_dir / "decision_vocab.yaml"),
                      "decision_vocab_captions": str(data_dir / "decision_vocab_captions.yaml"),
                      "decision_vocab_captions_no_names": str(data_dir / "decision_vocab_captions_no_names.yaml"),
                      "catalog": str(data_dir / "catalog.yaml"), "catalog_val": str(data_dir / "catalog-val.yaml")},
            "counts": counts, "class_name_share": class_name_share(split.student_pairs, vocab),
            "test_data_seed": recipe.seed if recipe.test_data_seed is None else recipe.test_data_seed,
            "class_prompts": {m: [t.format(c) for c in v["classnames"] for t in v["templates"]] for m, v in vocab.items()}}
    atomic_write_json(data_dir / "data.json", info)
    return info


def _plain(text: str) -> str:
    return " ".join(str(text).lower().replace(".", " ").replace(":", " ").split())


def _words(text: str) -> str:
    return " " + " ".join(re.sub(r"\W+", " ", str(text).lower()).split()) + " "


def names_a_class(caption: str, classnames: list[str]) -> bool:
    """Does the caption contain one of the class names as whole words (without case and punctuation)?"""
    words = _words(caption)
    return any(_words(n) in words for n in classnames)


def class_name_share(pairs, vocab: dict[str, dict]) -> dict[str, float]:
    """modality -> the fraction of its captions that name one of its classes (`names_a_class`)."""
    out = {}
    for modality, entry in vocab.items():
        captions = pairs.loc[pairs["modality"] == modality, "caption"].astype(str)
        if len(captions):
            out[modality] = round(sum(names_a_class(c, entry["classnames"]) for c in captions) / len(captions), 4)
    return out


def caption_vocabulary(pairs, vocab: dict[str, dict], per_class: int, seed: int,
                       without_names: bool = False) -> dict[str, dict]:
    """modality -> {classnames, prompts: class -> up to `per_class` training captions of that class}.

    The captions come from `pairs` (the student's own captioned pairs), drawn in a seeded order;
    a caption equal to an evaluation prompt (a template of `vocab` filled with a class name,
    compared without case and punctuation) is never used, so the vocabulary shares wording with
    the training captions only. They keep the class names where the captions have them.
    `without_names`: a caption that names a class of its modality is never used either, and a
    modality where some class is left without a caption is left out.
    """
    import numpy as np

    from mmkd.training.decision import class_texts

    out: dict[str, dict] = {}
    for m_index, (modality, entry) in enumerate(vocab.items()):
        evaluation = {_plain(t) for texts in class_texts(entry) for t in texts}
        rows = pairs[pairs["modality"] == modality]
        prompts = {}
        for name in entry["classnames"]:
            captions = sorted(set(rows.loc[rows["label"] == name, "caption"].astype(str)))
            captions = [c for c in captions if _plain(c) not in evaluation
                        and not (without_names and names_a_class(c, entry["classnames"]))]
            order = np.random.default_rng([seed, m_index, len(prompts)]).permutation(len(captions))
            prompts[name] = [captions[i] for i in order[:per_class]]
        if all(prompts.values()) or not without_names:
            out[modality] = {"classnames": list(entry["classnames"]), "prompts": prompts}
    return out


def load_info(data_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(data_dir) / "data.json").read_text())
