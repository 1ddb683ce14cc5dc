"""Batched, gradient-free encoding of image lists and texts with any ClipEncoder.

Legend: N items, D embedding dim. Outputs are float32 [N, D], L2-normalised, on CPU, in input order.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


class _Preprocessed(torch.utils.data.Dataset):
    def __init__(self, images, preprocess):
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(self.images.load(i))


@torch.no_grad()
def encode_images(model, images, batch_size: int = 64, num_workers: int = 0, desc: str = "images") -> torch.Tensor:
    """[N, D] features of an ImageList (`len`, `load(i) -> PIL RGB`), preprocessed by the model's own transform."""
    from tqdm.auto import tqdm

    from mmkd.utils.signals import loader_context

    loader = torch.utils.data.DataLoader(_Preprocessed(images, model.preprocess), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False,
                                         multiprocessing_context=loader_context(num_workers))
    feats = [model.encode_image(pixels).float().cpu()
             for pixels in tqdm(loader, desc=f"encode {desc}", unit="batch", disable=None, leave=False)]
    if not feats:
        return torch.zeros(0, int(model.embed_dim))
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def encode_texts(model, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """[N, D] features of `texts`, with the model's own tokenizer."""
    feats = [model.encode_text(list(texts[i:i + batch_size])).float().cpu() for i in range(0, len(texts), batch_size)]
    if not feats:
        return torch.zeros(0, int(model.embed_dim))
    return F.normalize(torch.cat(feats), dim=-1)


def texts_fingerprint(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]
