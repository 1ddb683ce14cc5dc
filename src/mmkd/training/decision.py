"""Decision distillation on image-only samples: teachers' zero-shot class distributions as targets.

Legend: N image-only samples, C classes of a modality (C_max the largest), P class prompts, E student dim.

For images the student has no caption for, each teacher gives a distribution over the class
prompts of the image's modality (teacher image embedding against the teacher's own prompt
embeddings, temperature tau). The student reproduces it with its own two towers (its image
embedding against its own prompt embeddings), trained by KL. The teachers' distributions are
computed once before training and cached in the run directory.

Vocabulary file (YAML): `modality: {classnames: [...], templates: ["a photo of {}.", ...]}`, or,
instead of templates, `prompts: {classname: [text, ...]}` (each class described by its own
texts, e.g. captions of training pairs of that class).
Image-only file (CSV/JSONL): columns `image` (relative to the file), `modality`, optional `sample_id`.
A teacher named in `distill.decision_teachers` but absent from the feature store teaches decisions
only (e.g. the student's own stage-1 checkpoint, for a self-labelling control).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mmkd.data.pairs import PairRecord, Skip, load_image, read_table
from mmkd.models.student import build_transforms
from mmkd.errors import UsageError


def load_vocab(path: str) -> dict[str, dict[str, Any]]:
    if not path or not Path(path).is_file():
        raise UsageError(f"--distill.decision_vocab: {path!r} is not a file; give a YAML mapping "
                         f"modality -> {{classnames: [...], templates: [...]}}")
    data = yaml.safe_load(Path(path).read_text()) or {}
    vocab: dict[str, dict[str, Any]] = {}
    problems = []
    for modality, entry in data.items():
        names = (entry or {}).get("classnames") or []
        templates = (entry or {}).get("templates") or ["{}"]
        if len(names) < 2:
            problems.append(f"{modality}: needs at least 2 classnames")
        vocab[str(modality)] = {"classnames": [str(n) for n in names], "templates": [str(t) for t in templates]}
        per_class = (entry or {}).get("prompts")
        if per_class is not None:
            texts = [[str(t) for t in (per_class.get(n) or [])] for n in names] if isinstance(per_class, dict) else []
            if not texts or not all(texts):
                problems.append(f"{modality}: prompts must map every class name to a list of texts")
            vocab[str(modality)]["prompts"] = texts
    if problems or not vocab:
        raise UsageError(f"--distill.decision_vocab {path}: " + ("; ".join(problems) or "no modalities"))
    return vocab


def load_image_only(path: str, vocab: dict) -> list[PairRecord]:
    if not path:
        raise UsageError("--data.image_only_path: decision distillation needs images without captions "
                         "(CSV/JSONL with columns image, modality); give one or set --distill.lambda_decision 0")
    table = Path(path)
    fmt = "jsonl" if table.suffix in (".jsonl", ".json") else "csv"
    rows = read_table(table, fmt, what="--data.image_only_path")
    unknown = sorted({str(r.get("modality", "")) for r in rows} - set(vocab))
    if unknown:
        raise UsageError(f"--data.image_only_path: modalities {unknown} have no entry in --distill.decision_vocab; "
                         f"add them (classnames, templates) or drop those rows")
    return [PairRecord(sample_id=str(r.get("sample_id") or i), image=str(table.parent / r["image"]), caption=None,
                       modality=str(r["modality"])) for i, r in enumerate(rows)]


def class_texts(entry: dict) -> list[list[str]]:
    """[C][P] the texts describing each class of a vocabulary entry: its own prompts, or every template filled."""
    if entry.get("prompts"):
        return [list(texts) for texts in entry["prompts"]]
    return [[t.format(name) if "{}" in t else f"{t} {name}" for t in entry["templates"]] for name in entry["classnames"]]


def class_embeddings_of(teacher, entry: dict) -> torch.Tensor:
    """[C, D] unit class embeddings: the mean of each class's normalised text embeddings, renormalised."""
    import torch.nn.functional as F

    if not entry.get("prompts"):
        from mmkd.evaluation.prompts import class_embeddings

        return class_embeddings(teacher, entry["classnames"], entry["templates"]).float()
    return F.normalize(torch.stack([F.normalize(teacher.encode_text(texts).float(), dim=-1).mean(0)
                                    for texts in entry["prompts"]]), dim=-1)


class DecisionTargets:
    """Teacher class distributions for the image-only samples, and the student's prompt tokens."""

    def __init__(self, cfg, teacher_specs: dict[str, str], routes: dict[str, list[str]], run_dir: Path,
                 student, device, is_main: bool = True):
        d = cfg.distill
        self.vocab = load_vocab(d.decision_vocab)
        self.records = load_image_only(cfg.data.image_only_path, self.vocab)
        self.modalities = sorted(self.vocab)
        self.temperature = d.decision_temperature
        # The pairs' training transform (`data.augment`), seeded per draw in `load_images`.
        self.transform = build_transforms(student.preprocess_cfg, cfg.data.augment, cfg.data.crop_scale_min)[0]
        self.max_pixels = cfg.data.max_image_pixels
        self.seed = cfg.train.seed
        self.device = device
        # Student prompts: every template of every class of every modality, with an index map.
        prompts, self.prompt_class = [], []
        self.class_slices: dict[str, slice] = {}
        offset = 0
        for m in self.modalities:
            names = self.vocab[m]["classnames"]
            for c, texts in enumerate(class_texts(self.vocab[m])):
                prompts.extend(texts)
                self.prompt_class.extend([offset + c] * len(texts))
            self.class_slices[m] = slice(offset, offset + len(names))
            offset += len(names)
        self.num_classes = offset
        self.prompt_tokens = student.tokenizer(prompts)
        self.prompt_class_t = torch.tensor(self.prompt_class)
        self.modality_index = np.array([self.modalities.index(r.modality) for r in self.records])
        teacher_specs = check_specs(teacher_specs, routes, self.modalities)
        self.probs_NC = self._teacher_probs(teacher_specs, routes, run_dir, is_main)

    # ---- targets, computed once -------------------------------------------------------------
    def _cache_key(self, teacher_specs: dict[str, str], routes) -> str:
        blob = json.dumps({"specs": teacher_specs, "routes": routes, "vocab": self.vocab, "t": self.temperature,
                           "images": [(r.sample_id, r.image) for r in self.records]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _teacher_probs(self, teacher_specs, routes, run_dir: Path, is_main: bool) -> np.ndarray:
        from safetensors.numpy import load_file, save_file

        from mmkd.utils.dist import barrier

        key = self._cache_key(teacher_specs, routes)
        cache = run_dir / "decision_targets.safetensors"
        meta_path = cache.with_suffix(".json")
        fresh = cache.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key
        if not fresh and is_main:
            probs = self._compute(teacher_specs, routes)
            from mmkd.utils.io import atomic_path, atomic_write_json

            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                save_file({"probs": probs}, str(tmp))
            atomic_write_json(meta_path, {"key": key, "teachers": teacher_specs, "num_images": len(self.records)})
        barrier()
        return load_file(str(cache))["probs"]

    @torch.no_grad()
    def _compute(self, teacher_specs: dict[str, str], routes: dict[str, list[str]]) -> np.ndarray:
        from mmkd.teachers import load_teacher

        n = len(self.records)
        total = np.zeros((n, self.num_classes), np.float64)
        count = np.zeros(n, np.float64)
        from tqdm.auto import tqdm

        for name, spec in tqdm(teacher_specs.items(), desc="decision targets", unit="teacher"):
            rows = [i for i, r in enumerate(self.records) if name in routes.get(r.modality, teacher_specs)]
            if not rows:  # no modality is routed to this teacher: do not load it
                continue
            teacher = load_teacher(spec, name=name)
            classes = {m: class_embeddings_of(teacher, self.vocab[m]) for m in self.modalities}
            for start in range(0, len(rows), 128):
                chunk = rows[start:start + 128]
                images, kept = [], []
                for i in chunk:
                    img = load_image(self.records[i], self.max_pixels)
                    if not isinstance(img, Skip):
                        images.append(teacher.preprocess(img))
                        kept.append(i)
                if not kept:
                    continue
                feats = teacher.encode_image(torch.stack(images)).float()
                for j, i in enumerate(kept):
                    m = self.records[i].modality
                    p = torch.softmax(feats[j] @ classes[m].T / self.temperature, dim=-1).double().numpy()
                    total[i, self.class_slices[m]] += p
                    count[i] += 1
        probs = np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], 0.0)
        return probs.astype(np.float32)

    # ---- per step -----------------------------------------------------------------------------
    @staticmethod
    def first_draw(position: int, per_rank: int, rank: int, world_size: int) -> int:
        """The global draw number of this rank's first image-only row of micro-batch `position`."""
        return position * per_rank * world_size + rank * per_rank

    def rows_for(self, position: int, per_rank: int, rank: int, world_size: int) -> np.ndarray:
        """Image-only rows of global micro-batch `position` for this rank: a seeded order per pass."""
        n = len(self.records)
        first = self.first_draw(position, per_rank, rank, world_size)
        out = np.empty(per_rank, dtype=np.int64)
        for k in range(per_rank):
            p = first + k
            epoch, offset = divmod(p, n)
            perm = self._perm(epoch)
            out[k] = perm[offset]
        return out

    def _perm(self, epoch: int) -> np.ndarray:
        if getattr(self, "_perm_epoch", None) != epoch:
            self._perm_cache = np.random.default_rng([self.seed, epoch, 17]).permutation(len(self.records))
            self._perm_epoch = epoch
        return self._perm_cache

    def load_images(self, rows: np.ndarray, image_hw, first_draw: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        """Transformed images of `rows`; unreadable ones are replaced by blanks with zero weight.

        Row k is draw number `first_draw + k`; its random crop is seeded by (seed, draw number), so
        augmentation does not depend on the number of processes or on where a run was resumed.
        """
        images, weights = [], np.ones(len(rows), np.float32)
        for k, i in enumerate(rows):
            img = load_image(self.records[int(i)], self.max_pixels)
            if isinstance(img, Skip):
                images.append(torch.zeros(3, *image_hw))
                weights[k] = 0.0
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + first_draw + k) % (2 ** 63 - 1))
                images.append(self.transform(img))
        if self.probs_NC is not None:
            weights *= (self.probs_NC[rows].sum(axis=1) > 0)  # no teacher labelled this image
        return torch.stack(images), weights

    def loss(self, image_BE: torch.Tensor, prompts_PE: torch.Tensor, rows: np.ndarray, w_B: np.ndarray) -> torch.Tensor:
        from mmkd.losses.distill import decision_kl

        import torch.nn.functional as F

        cls = torch.zeros(self.num_classes, prompts_PE.shape[1], device=prompts_PE.device, dtype=prompts_PE.dtype)
        cls = cls.index_add(0, self.prompt_class_t.to(prompts_PE.device), prompts_PE)
        cls_CE = F.normalize(cls, dim=-1)
        total = image_BE.sum() * 0.0
        weight_sum = 0.0
        targets = torch.from_numpy(self.probs_NC[rows]).to(image_BE.device)
        w = torch.from_numpy(w_B).to(image_BE.device)
        mods = self.modality_index[rows]
        for mi, m in enumerate(self.modalities):
            sel = torch.from_numpy(mods == mi).to(image_BE.device)
            if not bool(sel.any()) or float(w[sel].sum()) == 0:
                continue
            s = self.class_slices[m]
            kl = decision_kl(image_BE[sel], cls_CE[s], targets[sel][:, s], self.temperature, w[sel])
            total = total + kl * float(w[sel].sum())
            weight_sum += float(w[sel].sum())
        return total / max(weight_sum, 1e-12) if weight_sum else total


def teacher_specs_from_store(store, teachers: list[str], overrides: dict[str, str]) -> dict[str, str]:
    """teacher -> spec: the override, else the spec the store recorded (None when neither; only an error if a
    route needs that teacher, see `check_specs`). Teachers only named in `overrides` teach decisions only."""
    specs = {t: overrides.get(t) or store.provenance(t).get("spec") for t in teachers}
    specs.update({t: spec for t, spec in overrides.items() if t not in specs})
    return specs


def check_specs(specs: Mapping[str, str | None], routes: dict[str, list[str]],
                modalities: list[str]) -> dict[str, str]:
    """The specs of the teachers some modality is routed to (unrouted modalities use every teacher)."""
    needed = {t for m in modalities for t in routes.get(m, list(specs))}
    missing = sorted(t for t in needed if not specs.get(t))
    if missing:
        raise UsageError(f"decision distillation needs the live teachers {missing}, whose specs the store does not "
                         f"record; give them with --distill.decision_teachers '{{NAME: SPEC}}'")
    return {t: spec for t, spec in specs.items() if t in needed and spec}
