"""`--data.decode gpu`: JPEGs decoded and cropped on the GPU (nvJPEG through `torchvision.io.decode_jpeg`).

The loader's workers then only read each sample's bytes and draw its RandomResizedCrop box from the
image's header (PIL reads the size without decoding), under the same per-sample seed as CPU
decoding (`SeededSamples`), so the boxes are the ones the CPU path draws. The main process decodes
the batch's JPEGs on the device in one call, crops and resizes each box to the student's size
(bicubic, antialiased) and normalises. Images that are not JPEG (PNG, WebP, ...) are decoded to
uint8 pixels in the worker and only cropped on the device. Pixels differ from CPU decoding by the
decoders' and resamplers' rounding (a few grey levels), not by what they show.

Shapes: C = 3 channels, S = the student's image size; images are [B, C, S, S] float.
"""

from __future__ import annotations

import io
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mmkd.data.pairs import Batch, PairDataset, Skip, load_image, read_caption
from mmkd.data.records import UNREADABLE_IMAGE
from mmkd.errors import UsageError

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect ratios, as open_clip's training transform


class EncodedPairs(PairDataset):
    """`dataset[i]["image"]` is (encoded, box): the JPEG's bytes as a uint8 [n] tensor (or [C, H, W] uint8
    pixels for other formats) and the crop box (top, left, height, width) in the original image."""

    def __init__(self, records, scale: tuple[float, float], max_image_pixels: int = 64_000_000):
        super().__init__(records, None, max_image_pixels)
        self.scale = scale

    def __getitem__(self, index: int) -> dict[str, Any] | Skip:
        from PIL import Image
        from torchvision import transforms

        from mmkd.data.content import image_bytes

        record = self.records[index]
        caption = read_caption(record)
        if isinstance(caption, Skip):
            return caption
        data = image_bytes(record)
        if data is None:
            return load_image(record, self.max_image_pixels)  # the reason, as CPU decoding gives it
        try:
            with Image.open(io.BytesIO(data)) as img:  # the header only
                jpeg = img.format == "JPEG" and img.mode in ("RGB", "L")
                box = transforms.RandomResizedCrop.get_params(img, list(self.scale), list(RATIO))
        except Exception:  # noqa: BLE001 - an unreadable header: skipped as CPU decoding skips it
            return Skip(UNREADABLE_IMAGE, record.sample_id)
        if jpeg and img.width * img.height <= self.max_image_pixels:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            image = load_image(record, self.max_image_pixels, data)
            if isinstance(image, Skip):
                return image
            encoded = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        return {"image": (encoded, box), "caption": caption, "index": index, "sample_id": record.sample_id,
                "modality": record.modality}


def decode_batch(images: Sequence[tuple[torch.Tensor, tuple[int, int, int, int]]], size: int,
                 mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> torch.Tensor:
    """[B, C, S, S] normalised float images from (encoded, box) pairs, decoded and cropped on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    jpegs = [i for i, (enc, _) in enumerate(images) if enc.dim() == 1]
    pixels: list[torch.Tensor | None] = [None if enc.dim() == 1 else enc.to(device) for enc, _ in images]
    if jpegs:
        decoded = decode_jpeg([images[i][0] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpegs, decoded):
            pixels[i] = img
    out = []
    for img, (_, (top, left, height, width)) in zip(pixels, images):
        assert img is not None
        crop = F.resized_crop(img, top, left, height, width, [size, size], interpolation=InterpolationMode.BICUBIC,
                              antialias=True)
        out.append(crop)
    batch = torch.stack(out).float().div_(255)
    return F.normalize(batch, list(mean), list(std))


def decoded(loader, size: int, mean: Sequence[float], std: Sequence[float], device) -> Iterator[Batch]:
    """The loader's batches with their images decoded on `device`."""
    for batch in loader:
        if len(batch):
            batch.images = decode_batch(batch.images, size, mean, std, device)
        else:
            batch.images = torch.empty(0)
        yield batch


def preprocess_size(preprocess_cfg: dict[str, Any]) -> int:
    size = preprocess_cfg["size"]
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise UsageError(f"--data.decode gpu: the student's image size {size} is not square; use --data.decode cpu")
        size = size[0]
    return int(size)
