"""Visual question answering (`--tasks vqa`) with frozen encoders and a trained fusion head.

Legend: N question rows, D embedding dim, H hidden dim, A answers in the vocabulary.

The model's image and text encoders stay frozen (their features are cached like every other
task's); a small MLP over [img, q, img * q] is trained on the training split to classify over
the answer vocabulary (every normalised answer seen in training, the most frequent
`max_answers` of them when set), as the paper's VQA protocol does with a classifier head.

Input (catalog format `vqa`): a .jsonl or .csv of rows `image` (relative to the file),
`question`, `answer`, `answer_type` (closed | open; VQA-RAD and SLAKE spell it CLOSED/OPEN,
and a missing type is `closed` for yes/no answers), `split` (train | val | test) — the layout of
VQA-RAD, SLAKE and PathVQA exports. Other column names via the options `image_key`,
`question_key`, `answer_key`, `answer_type_key`, `split_key`.

Reported: `accuracy` (exact match of the normalised answer, all evaluation rows), and
`closed_accuracy`, `open_accuracy` per answer type; `majority_accuracy` is the baseline that
answers every question with the most frequent training answer (per answer type in the details),
and `question_only_accuracy` the image-blind one that answers each question with the most
frequent training answer to the same question text.
Answers never seen in training count as wrong (their share is `details.out_of_vocab`). CIs
resample images, each with all of its questions (metrics.cluster_bootstrap_mean_ci).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmkd.errors import DataError, UsageError

CLOSED_ANSWERS = {"yes", "no"}
TYPE_ALIASES = {"closed": "closed", "close": "closed", "yes/no": "closed", "yesno": "closed",
                "open": "open", "other": "open", "number": "open"}


@dataclass
class VQARow:
    image: str  # absolute path
    question: str
    answer: str  # normalised
    answer_type: str  # "closed" | "open"
    split: str


def normalize_answer(answer) -> str:
    """Lower case, single spaces, no surrounding spaces or trailing full stop."""
    return re.sub(r"\s+", " ", str(answer).strip().lower()).rstrip(".").strip()


def _answer_type(raw, answer: str) -> str:
    if raw not in (None, ""):
        kind = TYPE_ALIASES.get(str(raw).strip().lower())
        if kind is not None:
            return kind
    return "closed" if answer in CLOSED_ANSWERS else "open"


def read_vqa_rows(path: Path, dataset: str = "vqa", options: dict | None = None) -> list[VQARow]:
    """The rows of a VQA table (.jsonl or .csv), image paths resolved against the file's folder."""
    from mmkd.evaluation.datasets import _read_rows, canonical_split

    options = options or {}
    keys = {k: options.get(f"{k}_key", k) for k in ("image", "question", "answer", "answer_type", "split")}
    path = Path(path)
    fmt = "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"
    from mmkd.evaluation.datasets import check_text_encoding

    table = _read_rows(path, fmt, options.get("encoding"))
    check_text_encoding([(n, r.get(keys[k])) for n, r in enumerate(table, 1) for k in ("question", "answer")],
                        path, dataset, "question/answer")
    rows, problems = [], []
    for n, raw in enumerate(table, 1):
        missing = [keys[k] for k in ("image", "question", "answer") if raw.get(keys[k]) in (None, "")]
        if missing:
            problems.append(f"row {n}: no {', '.join(missing)}")
            continue
        image = Path(str(raw[keys["image"]]))
        answer = normalize_answer(raw[keys["answer"]])
        split = raw.get(keys["split"])
        rows.append(VQARow(str(image if image.is_absolute() else path.parent / image), str(raw[keys["question"]]).strip(),
                           answer, _answer_type(raw.get(keys["answer_type"]), answer),
                           canonical_split(split) if split not in (None, "") else "all"))
    if problems:
        raise DataError(f"dataset {dataset}: {path}: {len(problems)} bad row(s), e.g. {problems[0]}; rows need "
                        f"{keys['image']}, {keys['question']} and {keys['answer']}")
    missing_files = sorted({r.image for r in rows if not Path(r.image).is_file()})
    if missing_files:
        raise DataError(f"dataset {dataset}: {len(missing_files)} image file(s) missing, e.g. {missing_files[0]!r}")
    if not rows:
        raise DataError(f"dataset {dataset}: {path} has no rows")
    return rows


# ---------------------------------------------------------------------------------------------
# Head


class FusionHead(nn.Module):
    """MLP over [img, q, img * q] -> answer logits. img_ND, q_ND: normalised features -> logits_NA."""

    def __init__(self, embed_dim: int, num_answers: int, hidden_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        # LayerNorm puts the unit-norm features (entries ~ 1/sqrt(D)) and their tiny product on one scale.
        self.mlp = nn.Sequential(nn.LayerNorm(3 * embed_dim), nn.Linear(3 * embed_dim, hidden_dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden_dim, num_answers))

    def forward(self, img_ND: torch.Tensor, q_ND: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([img_ND, q_ND, img_ND * q_ND], dim=-1))


@dataclass
class VQATrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden_dim: int = 256
    dropout: float = 0.1
    max_answers: int | None = None


def train_fusion_head(img_ND: torch.Tensor, q_ND: torch.Tensor, answer_N: torch.Tensor, num_answers: int,
                      config: VQATrainConfig, seed: int) -> FusionHead:
    """Cross-entropy training of a FusionHead on frozen features; rows with answer -1 are skipped."""
    from mmkd.evaluation.mil_heads import single_threaded

    with single_threaded(img_ND.numel() * 3):
        return _train(img_ND, q_ND, answer_N, num_answers, config, seed)


def _train(img_ND, q_ND, answer_N, num_answers: int, config: VQATrainConfig, seed: int) -> FusionHead:
    keep = answer_N >= 0
    img_ND, q_ND, answer_N = img_ND[keep], q_ND[keep], answer_N[keep]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = FusionHead(img_ND.shape[1], num_answers, config.hidden_dim, config.dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    head.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(answer_N), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = F.cross_entropy(head(img_ND[idx], q_ND[idx]), answer_N[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


# ---------------------------------------------------------------------------------------------
# Evaluation


def answer_vocabulary(answers: list[str], max_answers: int | None) -> list[str]:
    """Training answers by frequency (ties by name), the top `max_answers` when set."""
    counts = Counter(answers)
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:max_answers] if max_answers else ranked


def split_features(model, rows: list[VQARow], cache, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(img_ND, q_ND) frozen features of the rows; each distinct image is encoded once (and cached)."""
    from mmkd.evaluation.datasets import FileImages

    paths = sorted({r.image for r in rows})
    where = {p: i for i, p in enumerate(paths)}
    img_feats = cache.image_features(model, dataset, f"vqa-{split}", FileImages(paths))
    q_feats = cache.text_features(model, dataset, f"vqa-{split}-questions", [r.question for r in rows])
    return img_feats[torch.as_tensor([where[r.image] for r in rows])], q_feats


def evaluate_vqa(model, rows: list[VQARow], *, seed: int, cache, dataset: str = "vqa", eval_split: str = "test",
                 config: VQATrainConfig | None = None, num_bootstrap: int = 0) -> dict:
    """Train the head on the `train` rows, answer the `eval_split` rows; the runner's result dict."""
    from mmkd.evaluation.metrics import cluster_bootstrap_mean_ci

    config = config or VQATrainConfig()
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == eval_split]
    if not train or not test:
        raise DataError(f"dataset {dataset}: VQA needs rows with split=train and split={eval_split} "
                        f"(found {len(train)} and {len(test)})")
    vocab = answer_vocabulary([r.answer for r in train], config.max_answers)
    index = {a: i for i, a in enumerate(vocab)}
    train_img, train_q = split_features(model, train, cache, dataset, "train")
    test_img, test_q = split_features(model, test, cache, dataset, eval_split)
    train_answer = torch.as_tensor([index.get(r.answer, -1) for r in train])
    head = train_fusion_head(train_img, train_q, train_answer, len(vocab), config, seed)
    with torch.no_grad():
        predicted = [vocab[i] for i in head(test_img, test_q).argmax(dim=1).tolist()]

    correct_N = np.asarray([p == r.answer for p, r in zip(predicted, test)], dtype=np.float64)
    is_closed_N = np.asarray([r.answer_type == "closed" for r in test])
    majority = vocab[0]
    majority_N = np.asarray([r.answer == majority for r in test], dtype=np.float64)
    question_only_N = np.asarray([a == r.answer for a, r in zip(question_only_answers(train, test, majority), test)],
                                 dtype=np.float64)
    majority_by_type = {}
    for kind in ("closed", "open"):
        seen = [r.answer for r in train if r.answer_type == kind]
        if seen and any(r.answer_type == kind for r in test):
            top = answer_vocabulary(seen, 1)[0]
            majority_by_type[kind] = {"answer": top, "accuracy": float(np.mean(
                [r.answer == top for r in test if r.answer_type == kind]))}

    def mean_or_none(values):
        return float(values.mean()) if len(values) else None

    metrics = {"accuracy": float(correct_N.mean()), "closed_accuracy": mean_or_none(correct_N[is_closed_N]),
               "open_accuracy": mean_or_none(correct_N[~is_closed_N]), "majority_accuracy": float(majority_N.mean()),
               "question_only_accuracy": float(question_only_N.mean())}
    ci = {}
    if num_bootstrap > 0:  # resample images with all their questions: questions about one image are not independent
        image_N = np.asarray([r.image for r in test])
        ci["accuracy"] = cluster_bootstrap_mean_ci(correct_N, image_N, num_bootstrap, seed)
        ci["majority_accuracy"] = cluster_bootstrap_mean_ci(majority_N, image_N, num_bootstrap, seed)
        for name, mask in (("closed_accuracy", is_closed_N), ("open_accuracy", ~is_closed_N)):
            if mask.any():
                ci[name] = cluster_bootstrap_mean_ci(correct_N[mask], image_N[mask], num_bootstrap, seed)
    return {
        "metrics": metrics,
        "ci": ci,
        "details": {
            "eval_split": eval_split,
            "num_answers": len(vocab),
            "majority_answer": majority,
            "majority_by_type": majority_by_type,
            "out_of_vocab": float(np.mean([r.answer not in index for r in test])),
            "num_closed": int(is_closed_N.sum()),
            "num_open": int((~is_closed_N).sum()),
            "head": "mlp[img, q, img*q]",
            "train_config": vars(config),
            "split_sizes": {"train": len(train), eval_split: len(test)},
        },
    }


def question_only_answers(train: list[VQARow], test: list[VQARow], fallback: str) -> list[str]:
    """An image-blind baseline: each test question answered with the most frequent training answer to the same
    question text (ties by name), else `fallback`. What a model gets from the questions alone."""
    seen: dict[str, list[str]] = {}
    for r in train:
        seen.setdefault(normalize_answer(r.question), []).append(r.answer)
    best = {q: answer_vocabulary(answers, 1)[0] for q, answers in seen.items()}
    return [best.get(normalize_answer(r.question), fallback) for r in test]


def _train_config(entry) -> VQATrainConfig:
    from mmkd.evaluation.head_options import head_config

    return head_config(VQATrainConfig, entry.raw,
                       lambda name: f"vqa_{name}" if name != "max_answers" else "max_answers",
                       f"datasets.{entry.name}")


def run(model, entry, *, seed: int, cache, num_bootstrap: int) -> dict:
    """The vqa task on a catalog `vqa` entry (runner contract). Options: `vqa_epochs`, `vqa_lr`,
    `vqa_batch_size`, `vqa_hidden_dim`, `vqa_dropout`, `vqa_weight_decay`, `max_answers`, column keys."""
    from mmkd.evaluation.datasets import pick_split

    if entry.path.is_dir():
        raise UsageError(f"datasets.{entry.name}.path: {entry.path} is a folder; a `vqa` dataset's path is a .jsonl "
                         f"or .csv file of rows image, question, answer, answer_type, split")
    rows = read_vqa_rows(entry.path, entry.name, entry.raw)
    available = sorted({r.split for r in rows} - {"train"})
    if not available:
        raise DataError(f"dataset {entry.name}: every row is split=train; add val or test rows to evaluate on")
    eval_split = pick_split(available, entry.split, entry.name)
    return evaluate_vqa(model, rows, seed=seed, cache=cache, dataset=entry.name, eval_split=eval_split,
                        config=_train_config(entry), num_bootstrap=num_bootstrap)
