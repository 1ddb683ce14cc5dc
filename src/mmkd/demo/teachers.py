"""The demo's expert teachers, trained and saved in the formats real teachers come in.

- open_clip teachers: `mmkd pretrain` (`fit(cfg, ClipTask)`) on the expert's pairs, then
  `mmkd export` into an open_clip `local-dir:` folder (parity-checked against the checkpoint).
- a transformers teacher: a `CLIPModel` with its own word-level BERT tokenizer built from the
  training captions (as PubMedBERT-based teachers have their own vocabulary), trained with
  `CLIPModel(..., return_loss=True)` and saved with `save_pretrained` (model, tokenizer, image
  processor); loaded back with `mmkd.load_teacher("hf:FOLDER")`.

Legend: B batch, L tokens.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_open_clip_teacher(pairs_csv: str, run_dir: str, export_dir: str, model: str, epochs: int, lr: float,
                            batch_size: int, seed: int) -> dict[str, Any]:
    """Train an open_clip teacher with the stage-1 loop and export it; returns {"spec", "summary"}."""
    from mmkd.config import build_config
    from mmkd.demo.recipe import TRAIN_AUGMENT
    from mmkd.export.exporter import export
    from mmkd.training.loop import fit
    from mmkd.training.stage1 import ClipTask

    cfg = build_config(None, ["--data", pairs_csv, "--model", model, "--out", run_dir, "--epochs", str(epochs),
                              "--batch-size", str(batch_size), "--lr", str(lr), "--seed", str(seed),
                              "--optim.warmup_steps", "20", "--optim.weight_decay", "0.1",
                              "--train.progress", "false", "--train.keep_checkpoints", "1",
                              "--train.overwrite", "true", "--data.augment", TRAIN_AUGMENT])  # a rerun of the step starts its run over
    summary = fit(cfg, ClipTask)
    export(run_dir, export_dir, name=Path(export_dir).name, overwrite=True, verify=True)
    return {"spec": f"local-dir:{Path(export_dir).resolve()}", "summary": _short(summary)}


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("num_steps", "final_loss", "samples_per_s", "wall_s")}


def build_word_tokenizer(folder: Path, texts: list[str], context_length: int):
    """A BERT WordPiece tokenizer whose vocabulary is every word of `texts` (lower-cased) plus specials."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    # Split the texts with BERT's own rules (lower-casing, whitespace, punctuation) so that every
    # word of them is one token of the final vocabulary.
    vocab_file.write_text("\n".join(SPECIAL_TOKENS) + "\n")
    backend = BertTokenizer(str(vocab_file), do_lower_case=True).backend_tokenizer
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    vocab_file.write_text("\n".join(SPECIAL_TOKENS + sorted(words)) + "\n")
    return BertTokenizer(str(vocab_file), do_lower_case=True, model_max_length=context_length)


def train_hf_teacher(pairs_csv: str, folder: str, epochs: int, lr: float, batch_size: int, seed: int,
                     extra_texts: list[str] | None = None, image_size: int = 32, projection_dim: int = 80,
                     context_length: int = 48) -> dict[str, Any]:
    """Train a transformers CLIPModel on the pairs of `pairs_csv` and save it to `folder`.

    `extra_texts` (e.g. the class prompts of the teacher's modalities) join the captions when the
    vocabulary is built, so that the teacher can read its own zero-shot prompts.
    Returns {"spec": "hf:FOLDER", "summary": {...}}.
    """
    import pandas as pd
    import torch
    import transformers
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(folder)
    if out.exists():
        shutil.rmtree(out)
    table = Path(pairs_csv)
    pairs = pd.read_csv(table, keep_default_na=False)
    captions = [str(c) for c in pairs["caption"]]
    work = out.parent / f".{out.name}-tokenizer"
    tokenizer = build_word_tokenizer(work, captions + list(extra_texts or []), context_length)
    shutil.rmtree(work, ignore_errors=True)
    torch.manual_seed(seed)
    tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=context_length,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id),
        vision_config=dict(tower, image_size=image_size, patch_size=4), projection_dim=projection_dim)
    model = transformers.CLIPModel(config)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size, "width": image_size})
    # Preprocess every image once (the processor is slow per call; the images are tiny).
    images = [Image.open(table.parent / p).convert("RGB") for p in pairs["image"]]
    pixels = torch.cat([processor(images=images[i:i + 256], return_tensors="pt")["pixel_values"]
                        for i in range(0, len(images), 256)])
    tokens = tokenizer(captions, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    steps_per_epoch = max(1, len(captions) // batch_size)
    total = steps_per_epoch * epochs
    warmup = min(20, total // 5)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(total=total, desc="hf teacher", unit="step")
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(captions), generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            scale = (step + 1) / max(1, warmup) if step < warmup else \
                0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            longest = int(tokens["attention_mask"][idx].sum(1).max())
            outputs = model(input_ids=tokens["input_ids"][idx, :longest],
                            attention_mask=tokens["attention_mask"][idx, :longest],
                            pixel_values=pixels[idx], return_loss=True)
            opt.zero_grad(set_to_none=True)
            outputs.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():  # CLIP's logit scale is clamped at ln 100, as open_clip does
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(outputs.loss))
            step += 1
            bar.update(1)
    bar.close()
    model.eval().save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    summary = {"num_steps": step, "final_loss": float(sum(losses[-10:]) / max(1, len(losses[-10:]))),
               "num_pairs": len(captions), "vocab_size": len(tokenizer)}
    (out / "mmkd_training.json").write_text(json.dumps(summary, indent=1))
    return {"spec": f"hf:{out.resolve()}", "summary": summary}
