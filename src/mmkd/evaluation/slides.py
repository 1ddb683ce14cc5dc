"""Whole-slide images as bags of patch embeddings, for MIL diagnosis and survival.

Legend: N patches of a slide, T candidate tiles, D embedding dim, H/W image height/width (pixels).

A slide (the `path` column of `slides.csv`, relative to the csv) is one of:
- a folder of patch images (tiles extracted elsewhere): used as they are, sorted by file name;
- one large image (PNG, JPEG, TIFF) that mmkd tiles itself on a regular grid of `tile_size` pixels,
  keeping the tiles whose tissue fraction is at least `min_tissue_fraction`. Tissue is a pixel whose
  HSV saturation (max - min) / max is at least `saturation_threshold`: glass and background are
  white or grey (saturation near 0), stained tissue is coloured. The image must fit in memory;
- an OpenSlide file (.svs, .ndpi, .mrxs, .scn, pyramidal .tif, ...) when `openslide-python` is
  installed (`pip install mmkd[slides]`): the same tiling at level 0, with tissue found on a
  low-resolution level so the slide is never read whole;
- precomputed patch features (CLAM/MCAT `pt_files/<slide>.pt`, `h5_files/<slide>.h5` with a
  `features` dataset, `.npy`, `.safetensors`): used as the bag as they are. They come from whatever
  encoder wrote them, not from the evaluated model, so a warning says so.

`slides.csv` columns: slide_id, path, and optional label (class name), time, event (0/1), patient_id.

Patch embeddings are cached per slide in the FeatureCache (one safetensors file holding `features`
[N, D] and the tiles' top-left `coords` [N, 2] as (x, y), -1 for pre-extracted patches), keyed by the
model fingerprint and checked against a fingerprint of the slide's files and the tiling settings,
so a cache hit never opens the slide.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pickle
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmkd.data.pairs import IMAGE_EXTS
from mmkd.errors import DataError, UsageError

SLIDES_TABLE = "slides.csv"
# Formats only OpenSlide reads; .tif/.tiff go to OpenSlide when it is installed and recognises them.
OPENSLIDE_ONLY_EXTS = ("svs", "ndpi", "mrxs", "scn", "vms", "vmu", "svslide", "bif")
OPENSLIDE_TIFF_EXTS = ("tif", "tiff")


# ---------------------------------------------------------------------------------------------
# Table


@dataclass
class SlideRecord:
    """One row of slides.csv. `source` is absolute; `time`/`event` are None when not given."""

    slide_id: str
    source: Path
    label: str | None = None
    time: float | None = None
    event: int | None = None
    patient_id: str | None = None


def slides_table_path(path: str | Path) -> Path:
    """The slides.csv of a catalog `path` (the folder holding it, or the csv file itself)."""
    path = Path(path)
    table = path / SLIDES_TABLE if path.is_dir() else path
    if not table.is_file():
        raise UsageError(f"slides dataset: {str(table)!r} does not exist; a `slides` dataset's path is a folder "
                         f"holding {SLIDES_TABLE} (columns slide_id, path, optional label, time, event, patient_id)")
    return table


def _blank(value: Any) -> bool:
    return value is None or str(value).strip() == ""


def read_slides_table(path: str | Path) -> list[SlideRecord]:
    """Slide records of a slides.csv (or the folder holding it); every bad row is reported at once."""
    import csv

    table = slides_table_path(path)
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    missing_columns = {"slide_id", "path"} - columns
    if missing_columns:
        raise DataError(f"{table}: missing column(s) {sorted(missing_columns)}; needed: slide_id, path "
                        f"(optional: label, time, event, patient_id)")
    problems, records, seen = [], [], set()
    for line, row in enumerate(rows, start=2):
        slide_id = str(row["slide_id"]).strip()
        where = f"{table.name}:{line}"
        if not slide_id or _blank(row["path"]):
            problems.append(f"{where}: slide_id and path must not be empty")
            continue
        if slide_id in seen:
            problems.append(f"{where}: slide_id {slide_id!r} appears twice")
        seen.add(slide_id)
        source = Path(row["path"].strip())
        source = source if source.is_absolute() else (table.parent / source).resolve()
        if not source.exists():
            problems.append(f"{where}: slide path {str(source)!r} does not exist")
        time = event = None
        try:
            time = None if _blank(row.get("time")) else float(row["time"])
            event = None if _blank(row.get("event")) else int(float(row["event"]))
        except ValueError:
            problems.append(f"{where}: time must be a number and event 0 or 1, got {row.get('time')!r}, {row.get('event')!r}")
        if event not in (None, 0, 1):
            problems.append(f"{where}: event must be 0 (censored) or 1 (event), got {event}")
        if time is not None and (not math.isfinite(time) or time < 0):
            problems.append(f"{where}: time must be a finite number >= 0, got {time}")
        records.append(SlideRecord(slide_id, source, None if _blank(row.get("label")) else str(row["label"]).strip(),
                                   time, event, None if _blank(row.get("patient_id")) else str(row["patient_id"]).strip()))
    if problems:
        shown = "\n  - ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"{table}: {len(problems)} problem(s):\n  - {shown}")
    if not records:
        raise DataError(f"{table}: no slides listed")
    return records


# ---------------------------------------------------------------------------------------------
# Tiling


@dataclass(frozen=True)
class TilingConfig:
    """How large slide images become patches. Sizes are level-0 pixels; the model's own preprocess
    resizes each patch. `max_patches` keeps a seeded random subset of a slide's tissue tiles."""

    tile_size: int = 224
    stride: int | None = None  # None: tile_size (no overlap)
    saturation_threshold: float = 0.08
    min_tissue_fraction: float = 0.5
    max_patches: int | None = None
    max_image_pixels: int = 1_000_000_000  # PIL-read images only; larger ones need OpenSlide

    @property
    def step(self) -> int:
        return int(self.stride or self.tile_size)

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str = "dataset") -> TilingConfig:
        """A config from catalog options (unknown keys ignored); all bad values reported at once."""
        defaults = cls()
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, kind, ok, rule in (
                ("tile_size", int, lambda v: v >= 1, "an integer >= 1"),
                ("stride", int, lambda v: v >= 1, "an integer >= 1"),
                ("saturation_threshold", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                ("min_tissue_fraction", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                ("max_patches", int, lambda v: v >= 1, "an integer >= 1"),
                ("max_image_pixels", int, lambda v: v >= 1, "an integer >= 1")):
            raw = options.get(name)
            if raw is None:
                continue
            try:
                value = kind(raw)
                if kind is int and value != raw:
                    raise ValueError
            except (TypeError, ValueError):
                value = None
            if value is None or not ok(value):
                problems.append(f"{where}.{name}: {raw!r} is not allowed; give {rule} (default {getattr(defaults, name)})")
            else:
                values[name] = value
        if problems:
            from mmkd.errors import ConfigError

            raise ConfigError(problems)
        return cls(**values)


def saturation(rgb_HW3: np.ndarray) -> np.ndarray:
    """[H, W] float32 HSV saturation in [0, 1] of a uint8 RGB image; 0 where the pixel is black."""
    hi = rgb_HW3.max(axis=2).astype(np.float32)
    lo = rgb_HW3.min(axis=2).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hi > 0, (hi - lo) / hi, 0.0).astype(np.float32)


def tissue_mask(rgb_HW3: np.ndarray, threshold: float) -> np.ndarray:
    """[H, W] bool: pixels whose saturation is at least `threshold`, processed in row strips to bound memory."""
    mask = np.empty(rgb_HW3.shape[:2], dtype=bool)
    for top in range(0, rgb_HW3.shape[0], 1024):
        mask[top:top + 1024] = saturation(rgb_HW3[top:top + 1024]) >= threshold
    return mask


def tile_grid(height: int, width: int, tile: int, step: int) -> np.ndarray:
    """[T, 2] top-left (x, y) of every tile that lies fully inside a height x width image, row-major."""
    ys = np.arange(0, height - tile + 1, step) if height >= tile else np.zeros(0, dtype=np.int64)
    xs = np.arange(0, width - tile + 1, step) if width >= tile else np.zeros(0, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.int64)


def tissue_fractions(mask_HW: np.ndarray, coords_T2: np.ndarray, tile: int, downsample: float = 1.0) -> np.ndarray:
    """[T] fraction of tissue pixels inside each level-0 tile, read from a mask at `downsample` x
    lower resolution, through a summed-area table (O(1) per tile)."""
    if len(coords_T2) == 0:
        return np.zeros(0, dtype=np.float64)
    sat = np.zeros((mask_HW.shape[0] + 1, mask_HW.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = mask_HW.astype(np.int64).cumsum(0).cumsum(1)

    def clip(v, hi):
        return np.clip(np.round(v / downsample).astype(np.int64), 0, hi)

    x0, y0 = clip(coords_T2[:, 0], mask_HW.shape[1]), clip(coords_T2[:, 1], mask_HW.shape[0])
    x1, y1 = clip(coords_T2[:, 0] + tile, mask_HW.shape[1]), clip(coords_T2[:, 1] + tile, mask_HW.shape[0])
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return inside / area


def select_tissue_tiles(mask_HW: np.ndarray, height: int, width: int, tiling: TilingConfig,
                        downsample: float = 1.0) -> np.ndarray:
    """[N, 2] (x, y) of the level-0 tiles of a height x width slide that hold enough tissue."""
    coords = tile_grid(height, width, tiling.tile_size, tiling.step)
    keep = tissue_fractions(mask_HW, coords, tiling.tile_size, downsample) >= tiling.min_tissue_fraction
    return coords[keep]


def _subsample(coords_N2: np.ndarray, tiling: TilingConfig, slide_id: str) -> np.ndarray:
    if tiling.max_patches is None or len(coords_N2) <= tiling.max_patches:
        return coords_N2
    rng = np.random.default_rng(zlib.crc32(slide_id.encode()))  # same subset on every run
    return coords_N2[np.sort(rng.choice(len(coords_N2), tiling.max_patches, replace=False))]


# ---------------------------------------------------------------------------------------------
# Patch lists: `len`, `load(i) -> PIL RGB` and `coords` [N, 2], as evaluation.encode expects


class PatchFolder:
    """Pre-extracted patch images of one slide (every image file below the folder, sorted)."""

    def __init__(self, folder: Path, tiling: TilingConfig, slide_id: str):
        paths = sorted(str(p) for p in Path(folder).rglob("*")
                       if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTS)
        if tiling.max_patches is not None and len(paths) > tiling.max_patches:
            rng = np.random.default_rng(zlib.crc32(slide_id.encode()))
            paths = [paths[i] for i in np.sort(rng.choice(len(paths), tiling.max_patches, replace=False))]
        from mmkd.evaluation.datasets import FileImages

        self.images = FileImages(paths)
        self.coords = np.full((len(paths), 2), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int):
        return self.images.load(i)


class TiledImage:
    """Tissue tiles of one large image read whole with PIL."""

    def __init__(self, path: Path, tiling: TilingConfig, slide_id: str):
        self.rgb_HW3 = read_large_image(path, tiling.max_image_pixels)
        height, width = self.rgb_HW3.shape[:2]
        mask = tissue_mask(self.rgb_HW3, tiling.saturation_threshold)
        self.coords = _subsample(select_tissue_tiles(mask, height, width, tiling), tiling, slide_id)
        self.tile = tiling.tile_size

    def __len__(self) -> int:
        return len(self.coords)

    def load(self, i: int):
        from PIL import Image

        x, y = (int(v) for v in self.coords[i])
        return Image.fromarray(np.ascontiguousarray(self.rgb_HW3[y:y + self.tile, x:x + self.tile]))


class TiledOpenSlide:
    """Tissue tiles of an OpenSlide file at level 0; tissue found on a level about 32x smaller."""

    THUMBNAIL_DOWNSAMPLE = 32

    def __init__(self, path: Path, tiling: TilingConfig, slide_id: str):
        import openslide

        self.slide = openslide.OpenSlide(str(path))
        width, height = self.slide.dimensions
        # OpenSlide builds the thumbnail from its best pyramid level (composited on the background colour)
        thumb = self.slide.get_thumbnail((max(1, width // self.THUMBNAIL_DOWNSAMPLE),
                                          max(1, height // self.THUMBNAIL_DOWNSAMPLE)))
        downsample = width / thumb.width
        mask = tissue_mask(np.asarray(thumb.convert("RGB")), tiling.saturation_threshold)
        self.coords = _subsample(select_tissue_tiles(mask, height, width, tiling, downsample), tiling, slide_id)
        self.tile = tiling.tile_size

    def __len__(self) -> int:
        return len(self.coords)

    def load(self, i: int):
        from PIL import Image

        x, y = (int(v) for v in self.coords[i])
        return Image.fromarray(_rgba_on_white(self.slide.read_region((x, y), 0, (self.tile, self.tile))))


def _rgba_on_white(image) -> np.ndarray:
    """uint8 [H, W, 3] of an RGBA PIL image composited on white (OpenSlide marks empty areas transparent)."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    return (rgba[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)


def read_large_image(path: Path, max_pixels: int) -> np.ndarray:
    """uint8 [H, W, 3] of a PNG/JPEG/TIFF; transparent pixels become white background."""
    from PIL import Image

    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # slides are large on purpose; our own limit is checked below
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise DataError(f"slide {str(path)!r} has {img.width}x{img.height} pixels, more than max_image_pixels="
                                f"{max_pixels}; install openslide-python (pip install mmkd[slides]) for pyramidal "
                                f"slides, or raise the dataset's max_image_pixels option")
            if img.mode in ("RGBA", "LA", "P"):
                return _rgba_on_white(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read slide image {str(path)!r} ({type(e).__name__}: {e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _openslide_reads(path: Path) -> bool:
    try:
        import openslide
    except ImportError:
        return False
    return openslide.OpenSlide.detect_format(str(path)) is not None


def open_patches(path: Path, tiling: TilingConfig, slide_id: str):
    """The patch list of a slide: PatchFolder, TiledOpenSlide or TiledImage (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        return PatchFolder(path, tiling, slide_id)
    ext = path.suffix.lower().lstrip(".")
    if ext in OPENSLIDE_ONLY_EXTS + OPENSLIDE_TIFF_EXTS and _openslide_reads(path):
        return TiledOpenSlide(path, tiling, slide_id)
    if ext in OPENSLIDE_ONLY_EXTS:
        if importlib.util.find_spec("openslide") is not None:
            raise DataError(f"slide {str(path)!r}: OpenSlide does not recognise this .{ext} file (truncated, or "
                            f"not a slide); check the file, or export the slide as tiles")
        raise UsageError(f"slide {str(path)!r}: .{ext} files need openslide-python; install it with "
                         f"`pip install mmkd[slides]` (and the OpenSlide library), or export the slide as tiles")
    if ext not in IMAGE_EXTS:
        raise UsageError(f"slide {str(path)!r}: unsupported file type .{ext}; give a folder of patch images, a "
                         f"PNG/JPEG/TIFF, or an OpenSlide format ({', '.join(OPENSLIDE_ONLY_EXTS)})")
    return TiledImage(path, tiling, slide_id)


# ---------------------------------------------------------------------------------------------
# Embedding with the per-slide cache


def source_fingerprint(path: Path, tiling: TilingConfig) -> str:
    """Hash of the slide's file(s) (names, sizes, mtimes) and the tiling settings: a stale cache never hits."""
    h = hashlib.sha256(json.dumps(asdict(tiling), sort_keys=True).encode())
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        st = os.stat(p)
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}\x00{st.st_size}\x00{st.st_mtime_ns}\x00".encode())
    return h.hexdigest()[:16]


FEATURE_EXTS = ("pt", "h5", "npy", "safetensors")


def is_features_file(path: Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower().lstrip(".") in FEATURE_EXTS


def read_features(path: Path) -> torch.Tensor:
    """[N, D] float32 precomputed patch features of one slide (.pt tensors load with weights_only=True)."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    try:
        if ext == "pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
            data = data.get("features") if isinstance(data, dict) else data
        elif ext == "h5":
            try:
                import h5py
            except ImportError:
                raise UsageError(f"{path}: .h5 features need h5py: pip install 'mmkd[prepare]'") from None
            with h5py.File(path, "r") as f:
                data = torch.as_tensor(np.asarray(f["features"]))
        elif ext == "npy":
            data = torch.as_tensor(np.load(path, allow_pickle=False))
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            data = tensors.get("features", next(iter(tensors.values())) if len(tensors) == 1 else None)
    except (OSError, KeyError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read features {str(path)!r} ({type(e).__name__}: {e})") from None
    if not isinstance(data, torch.Tensor) or data.ndim not in (2, 3):
        raise DataError(f"{path}: expected a [patches, dim] tensor (or a `features` entry holding one)")
    return data.reshape(-1, data.shape[-1]).float()


def embed_slide(model, slide: SlideRecord, tiling: TilingConfig, cache, dataset: str) -> dict[str, torch.Tensor]:
    """{"features": [N, D] float32 normalised, "coords": [N, 2] int64} of one slide, from the cache
    when the model, the slide's files and the tiling are unchanged (precomputed features: as read)."""
    from mmkd.evaluation.encode import encode_images

    if is_features_file(slide.source):
        feats = read_features(slide.source)
        return {"features": feats, "coords": torch.full((len(feats), 2), -1, dtype=torch.int64)}

    def compute() -> dict[str, torch.Tensor]:
        patches = open_patches(slide.source, tiling, slide.slide_id)
        feats = encode_images(model, patches, cache.batch_size, 0, desc=f"{dataset}/{slide.slide_id}")
        return {"features": feats.float(), "coords": torch.as_tensor(patches.coords, dtype=torch.int64).reshape(-1, 2)}

    key = (cache.model_key(model), dataset, "slides", slide.slide_id)
    return cache.get_or_compute(key, compute, fingerprint=source_fingerprint(slide.source, tiling))


def embed_slides(model, slides: list[SlideRecord], tiling: TilingConfig, cache, dataset: str) -> list[torch.Tensor]:
    """[N_s, D] patch embeddings of every slide, in order (a slide with no tissue gives an empty bag)."""
    from tqdm.auto import tqdm

    return [embed_slide(model, s, tiling, cache, dataset)["features"]
            for s in tqdm(slides, desc=f"embed {dataset} slides", unit="slide", disable=None, leave=False)]


def load_slide_bags(model, entry, cache) -> tuple[list[SlideRecord], list[torch.Tensor]]:
    """Records and patch-embedding bags of a catalog `slides` entry; slides without tissue are dropped
    with a warning (they carry no evidence)."""
    import warnings

    slides = read_slides_table(entry.path)
    precomputed = sum(is_features_file(s.source) for s in slides)
    if precomputed:
        warnings.warn(f"dataset {entry.name}: {precomputed} of {len(slides)} slide(s) are precomputed patch features; "
                      f"their bags come from the encoder that wrote them, not from the evaluated model", stacklevel=2)
    tiling = TilingConfig.from_options(entry.raw, where=f"datasets.{entry.name}")
    bags = embed_slides(model, slides, tiling, cache, entry.name)
    empty = [s.slide_id for s, b in zip(slides, bags) if len(b) == 0]
    if empty:
        warnings.warn(f"dataset {entry.name}: {len(empty)} slide(s) have no tissue tile and are left out "
                      f"(e.g. {empty[0]}); lower saturation_threshold or min_tissue_fraction if that is wrong",
                      stacklevel=2)
    kept = [(s, b) for s, b in zip(slides, bags) if len(b) > 0]
    return [s for s, _ in kept], [b for _, b in kept]
