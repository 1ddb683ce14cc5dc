"""Caption batches to token ids, padded only as far as the batch needs.

Captions are far shorter than a 256-token context. Where the text tower accepts shorter inputs
(`CustomTextCLIP`: open_clip TextTransformer or an HF encoder), a batch is padded to its longest
caption, rounded up to a multiple of 8 (tensor-core friendly; 32 under `torch.compile`, which then
sees few distinct shapes). Trailing padding changes no output, so the features are those of the
full-context tokens.

`BatchTokenizer` is what the training data loader calls, in its worker processes, so tokenizing
overlaps the model's step. For open_clip's HF tokenizers it pads to the longest caption directly:
padding 256 x 256 ids and cutting most of them again costs more than the tokenizing itself.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F


def accepts_short_text(model: torch.nn.Module) -> bool:
    """Whether the text tower takes inputs shorter than its context (open_clip's `CLIP` tower has a
    fixed-size positional table and does not)."""
    from open_clip.model import CustomTextCLIP

    return isinstance(model, CustomTextCLIP)


def _round_up(length: int, multiple: int, cap: int) -> int:
    return min(-(-length // multiple) * multiple, cap)


def _cut(tokens: torch.Tensor, pad_id: int, multiple: int) -> torch.Tensor:
    if tokens.ndim != 2:
        return tokens
    nonpad = (tokens != pad_id).any(dim=0).nonzero()
    longest = int(nonpad.max().item()) + 1 if nonpad.numel() else 1
    return tokens[:, :_round_up(longest, multiple, tokens.shape[1])]


def trim_padding(tokens: torch.Tensor, model: torch.nn.Module, pad_id: int = 0, multiple: int = 8) -> torch.Tensor:
    """Cut a token batch to its longest sequence (rounded up to `multiple`) where the tower allows."""
    return _cut(tokens, pad_id, multiple) if accepts_short_text(model) else tokens


def pad_id_of(tokenizer: Callable) -> int:
    return getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None) or 0


class BatchTokenizer:
    """`captions -> [B, L] token ids`: the student tokenizer's ids, cut to the batch's needs."""

    def __init__(self, tokenizer: Callable, model: torch.nn.Module, pad_to_longest: bool = True, multiple: int = 8):
        self.tokenizer = tokenizer
        self.trim = pad_to_longest and accepts_short_text(model)
        self.multiple = multiple
        self.pad_id = pad_id_of(tokenizer)
        self.direct = self.trim and _pads_to_longest_directly(tokenizer)

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        if self.direct:
            tok: Any = self.tokenizer  # open_clip's HFTokenizer: .tokenizer, .clean_fn, .context_length
            ids = tok.tokenizer([tok.clean_fn(c) for c in captions], return_tensors="pt", padding="longest",
                                max_length=tok.context_length, truncation=True).input_ids
            length = _round_up(ids.shape[1], self.multiple, max(tok.context_length, ids.shape[1]))
            return F.pad(ids, (0, length - ids.shape[1]), value=self.pad_id) if length > ids.shape[1] else ids
        tokens = self.tokenizer(list(captions))
        return _cut(tokens, self.pad_id, self.multiple) if self.trim else tokens


def _pads_to_longest_directly(tokenizer: Callable) -> bool:
    """open_clip's plain HF tokenizer (right padding, separator kept) gives, padded to the longest,
    exactly its full-context ids cut to the longest caption."""
    from open_clip.tokenizer import HFTokenizer

    if not isinstance(tokenizer, HFTokenizer) or tokenizer.tokenizer_mode or tokenizer.strip_sep_token:
        return False
    return getattr(tokenizer.tokenizer, "padding_side", "right") == "right"
