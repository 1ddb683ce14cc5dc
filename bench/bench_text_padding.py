"""Text-length waste: pad each batch to its longest caption vs the full 256-token context.

Captions: the 8 real PubMed Central captions of the paper authors' reference samples
(tests/data/mmkd-reference) plus synthetic biomedical captions of 10-60 words (uniform), in
random batches. Text tower: an open_clip `CustomTextCLIP` with a BERT text tower (CLS pooling,
MLP head, context 256 as in the paper's student), randomly initialised; width `--hidden`
(default 256, 2 layers) rather than BERT-base so that it runs in seconds on a CPU. Its
tokenizer is a WordPiece vocabulary holding the caption words whole; punctuation, numbers
and terms such as "x-ray" or "h&e" still split, which gives about 1.4 tokens per word.
BiomedBERT's PubMed vocabulary also holds most biomedical words whole, but splits some
rare terms further, so its lengths can be somewhat longer.

Timed: forward + backward of the text tower on the same batches, full context
(`[B, 256]`) against `mmkd.models.text.trim_padding` (what `fit` does when
`model.pad_to_longest` is on, the default); batches alternate and the medians are compared.
Also printed: the FLOP saving this implies for the paper's student (BERT-base text tower +
ViT-B/16 image tower), from the measured lengths.

Usage: python bench/bench_text_padding.py [--batch 32] [--batches 6] [--hidden 256] [--layers 2]
Prints `RATIO text_pad_to_longest_speedup: <full / trimmed text-tower time>x (target > 1)`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import (CAPTION_WORDS, caption_vocabulary, build_bert_folder, median, print_header,
                     reference_captions, set_threads, synthetic_captions, transformer_flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per variant")
    parser.add_argument("--hidden", type=int, default=256, help="BERT width (768 = BERT-base)")
    parser.add_argument("--layers", type=int, default=2, help="BERT layers (12 = BERT-base)")
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    set_threads()
    print_header("text tower: pad to the longest caption of the batch vs the full context")
    from mmkd.models.student import create_student
    from mmkd.models.text import pad_id_of, trim_padding

    rng = np.random.default_rng(0)
    real = reference_captions()
    synthetic = synthetic_captions(2000, rng, 10, 60)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_bert_folder(Path(tmp) / "bert", caption_vocabulary(real) + list(CAPTION_WORDS),
                                   hidden=args.hidden, layers=args.layers, heads=max(1, args.hidden // 64),
                                   intermediate=4 * args.hidden, max_positions=max(512, args.context))
        cfg_path = Path(tmp) / "student.json"
        cfg_path.write_text(json.dumps({
            "embed_dim": 64, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_pooler", "context_length": args.context}}))
        student = create_student(str(cfg_path), hf_text_path=str(folder), seed=0)
    model, tokenizer = student.model, student.tokenizer
    pad_id = pad_id_of(tokenizer)

    def lengths(captions):
        return (tokenizer(captions) != pad_id).sum(dim=1).numpy()

    real_len, syn_len = lengths(real), lengths(synthetic)
    print(f"real captions ({len(real)}): {np.mean([len(c.split()) for c in real]):.1f} words, "
          f"{real_len.mean():.1f} tokens on average (max {real_len.max()})")
    print(f"synthetic captions (10-60 words): {syn_len.mean():.1f} tokens on average, p95 "
          f"{np.percentile(syn_len, 95):.0f}, max {syn_len.max()}; context {args.context}")

    pool = real + synthetic
    batches = [[pool[i] for i in rng.choice(len(pool), args.batch, replace=False)] for _ in range(args.batches + 1)]
    longest = [int(trim_padding(tokenizer(b), model, pad_id).shape[1]) for b in batches]
    print(f"padded length per batch of {args.batch}: mean {np.mean(longest):.1f} "
          f"(vs {args.context}): {np.mean(longest) / args.context:.0%} of the context")

    model.train()

    def step(tokens):
        t0 = time.perf_counter()
        model.encode_text(tokens, normalize=True).sum().backward()
        return time.perf_counter() - t0

    full, trimmed = [], []
    for i, b in enumerate(batches):
        tokens = tokenizer(b)
        t_full, t_trim = step(tokens), step(trim_padding(tokens, model, pad_id))
        model.zero_grad(set_to_none=True)
        if i >= 1:  # the first batch warms up the allocator
            full.append(t_full)
            trimmed.append(t_trim)
    ratio = median(full) / median(trimmed)
    print(f"text tower fwd+bwd, batch {args.batch}, BERT {args.hidden} x {args.layers}: full {1000 * median(full):.1f} "
          f"ms, pad-to-longest {1000 * median(trimmed):.1f} ms (median of {len(full)})")
    # What this means for the paper's student: FLOPs of a training step, text at 256 vs at the measured length.
    paper_len = int(round(np.mean(longest)))
    vit = transformer_flops(tokens=197, width=768, layers=12)
    text_full = transformer_flops(tokens=256, width=768, layers=12)
    text_trim = transformer_flops(tokens=paper_len, width=768, layers=12)
    print(f"paper student (ViT-B/16 + BERT-base), forward GFLOP/sample: image {vit / 1e9:.1f}, text at 256 tokens "
          f"{text_full / 1e9:.1f}, at ~{paper_len} tokens {text_trim / 1e9:.1f}; whole-step FLOP saving "
          f"{(vit + text_full) / (vit + text_trim):.2f}x")
    print(f"RATIO text_pad_to_longest_speedup: {ratio:.2f}x (target > 1: full-context / pad-to-longest text-tower "
          f"time on 10-60-word biomedical captions)")


if __name__ == "__main__":
    main()
