"""Numpy drawing primitives for the procedural modalities, independent of the resolution.

A canvas of S×S pixels spans [-1, 1] in x (left to right) and in y (top to bottom); shapes are
given in these units, so a finding looks the same at 32 px and at 128 px. Coverage maps
("alphas") are float32 [S, S] in [0, 1] with a soft edge about one pixel wide, which
anti-aliases small shapes instead of letting them vanish between pixel centres.

Legend: S = image side in pixels, N = number of shapes (dots, segments).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Canvas:
    """Pixel-centre coordinates of an S×S image; `px` is the width of one pixel in canvas units."""

    size: int
    x_SS: np.ndarray
    y_SS: np.ndarray

    @property
    def px(self) -> float:
        return 2.0 / self.size


@lru_cache(maxsize=8)
def canvas(size: int) -> Canvas:
    centres = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    y_SS, x_SS = np.meshgrid(centres, centres, indexing="ij")
    x_SS.setflags(write=False)
    y_SS.setflags(write=False)
    return Canvas(size, x_SS, y_SS)


def _coverage(signed_dist, c: Canvas, edge_px: float = 1.0):
    """Coverage from a signed distance (positive inside, canvas units): a linear ramp `edge_px` wide."""
    return np.clip(signed_dist / (c.px * edge_px) + 0.5, 0.0, 1.0).astype(np.float32)


def blob(c: Canvas, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0,
         wobble: tuple[tuple[int, float, float], ...] = (), edge_px: float = 1.0) -> np.ndarray:
    """Coverage [S, S] of a (possibly irregular) ellipse.

    `wobble` is a tuple of (k, amplitude, phase): the boundary radius is scaled by
    1 + sum(amplitude * cos(k * theta + phase)), which gives lobulated or spiculated outlines.
    """
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    dx, dy = c.x_SS - cx, c.y_SS - cy
    u = (dx * cos_a + dy * sin_a) / rx
    v = (-dx * sin_a + dy * cos_a) / ry
    rho = np.sqrt(u * u + v * v)
    boundary = np.ones_like(rho)
    if wobble:
        theta = np.arctan2(v, u)
        for k, amp, phase in wobble:
            boundary = boundary + amp * np.cos(k * theta + phase)
    # distance to the boundary in canvas units, approximately (scaled by the mean radius)
    return _coverage((boundary - rho) * (0.5 * (rx + ry)), c, edge_px)


def random_wobble(rng: np.random.Generator, strength: float, ks=(2, 3, 5)) -> tuple[tuple[int, float, float], ...]:
    """Random boundary harmonics for `blob`; strength 0 is a clean ellipse, 0.3 is very irregular."""
    return tuple((int(k), float(rng.uniform(0.3, 1.0) * strength), float(rng.uniform(0, 2 * np.pi))) for k in ks)


def dots(c: Canvas, cx_N, cy_N, r_N, value_N=None, edge_px: float = 1.0) -> np.ndarray:
    """Max over N discs of coverage × value: [S, S]. Discs smaller than a pixel stay visible, faintly."""
    cx_N = np.asarray(cx_N, np.float32)
    if cx_N.size == 0:
        return np.zeros((c.size, c.size), np.float32)
    cy_N = np.asarray(cy_N, np.float32)
    r_N = np.broadcast_to(np.asarray(r_N, np.float32), cx_N.shape)
    # a disc thinner than the edge ramp never reaches full coverage: scale its peak instead
    peak_N = np.minimum(1.0, (2 * r_N / (c.px * edge_px)))
    if value_N is not None:
        peak_N = peak_N * np.broadcast_to(np.asarray(value_N, np.float32), cx_N.shape)
    # Splat each disc into a K×K window around its centre (K pixels cover the largest disc and
    # its edge ramp), instead of measuring N distances at every pixel of the canvas.
    k = int(np.ceil((2 * float(r_N.max()) + (edge_px + 1) * c.px) / c.px)) + 1
    if k * k * 4 >= c.size * c.size:
        dist_NSS = np.sqrt((c.x_SS[None] - cx_N[:, None, None]) ** 2 + (c.y_SS[None] - cy_N[:, None, None]) ** 2)
        return (_coverage(r_N[:, None, None] - dist_NSS, c, edge_px) * peak_N[:, None, None]).max(axis=0)
    col0 = np.floor((cx_N + 1) / c.px - k / 2 + 0.5).astype(np.int64)  # first column of each window
    row0 = np.floor((cy_N + 1) / c.px - k / 2 + 0.5).astype(np.int64)
    offsets = np.arange(k)
    cols_NK, rows_NK = col0[:, None] + offsets, row0[:, None] + offsets
    xs_NK = (cols_NK + 0.5) * c.px - 1 - cx_N[:, None]
    ys_NK = (rows_NK + 0.5) * c.px - 1 - cy_N[:, None]
    dist_NKK = np.sqrt(ys_NK[:, :, None] ** 2 + xs_NK[:, None, :] ** 2)
    cover_NKK = _coverage(r_N[:, None, None] - dist_NKK, c, edge_px) * peak_N[:, None, None]
    rows_NKK = np.broadcast_to(rows_NK[:, :, None], cover_NKK.shape)
    cols_NKK = np.broadcast_to(cols_NK[:, None, :], cover_NKK.shape)
    inside = (rows_NKK >= 0) & (rows_NKK < c.size) & (cols_NKK >= 0) & (cols_NKK < c.size)
    out = np.zeros(c.size * c.size, np.float32)
    np.maximum.at(out, rows_NKK[inside] * c.size + cols_NKK[inside], cover_NKK[inside])
    return out.reshape(c.size, c.size)


def polyline(c: Canvas, points_N2, width: float) -> np.ndarray:
    """Coverage [S, S] of a polyline through N points (canvas units), `width` wide."""
    p = np.asarray(points_N2, np.float32)
    a, b = p[:-1], p[1:]
    ab = b - a
    ab_len2 = np.maximum((ab ** 2).sum(-1), 1e-9)
    px_, py_ = c.x_SS[None], c.y_SS[None]
    t = ((px_ - a[:, 0, None, None]) * ab[:, 0, None, None] + (py_ - a[:, 1, None, None]) * ab[:, 1, None, None])
    t = np.clip(t / ab_len2[:, None, None], 0.0, 1.0)
    qx = a[:, 0, None, None] + t * ab[:, 0, None, None]
    qy = a[:, 1, None, None] + t * ab[:, 1, None, None]
    dist = np.sqrt((px_ - qx) ** 2 + (py_ - qy) ** 2).min(axis=0)
    cover = _coverage(width / 2 - dist, c)
    return cover * min(1.0, width / c.px)


def random_walk(rng: np.random.Generator, start, heading: float, steps: int, step_len: float, turn: float):
    """Points [steps+1, 2] of a wandering path: a hair, a vessel branch."""
    pts = [np.asarray(start, np.float32)]
    for _ in range(steps):
        heading += rng.normal(0.0, turn)
        pts.append(pts[-1] + step_len * np.array([np.cos(heading), np.sin(heading)], np.float32))
    return np.stack(pts)


@lru_cache(maxsize=32)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """[S, cells] linear interpolation weights from a coarse grid of `cells` knots to S pixels."""
    pos = (np.arange(size) + 0.5) / size * (cells - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((size, cells), np.float32)
    m[np.arange(size), lo] = 1 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def smooth_noise(rng: np.random.Generator, size: int, cells: int, cells_y: int | None = None) -> np.ndarray:
    """Band-limited noise [S, S] of unit scale: N(0,1) on a coarse grid, bilinearly upsampled.

    `cells` knots across (and `cells_y` down, for fibre-like anisotropic texture).
    """
    cells_y = cells_y or cells
    coarse = rng.standard_normal((cells_y, cells)).astype(np.float32)
    return _interp_matrix(size, cells_y) @ coarse @ _interp_matrix(size, cells).T


@lru_cache(maxsize=32)
def _blur_matrix(size: int, sigma_px: float) -> np.ndarray:
    idx = np.arange(size, dtype=np.float32)
    k = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma_px) ** 2)
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)


def blur(img_SS: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur of a [S, S] or [S, S, C] image (edges renormalised, no padding)."""
    if sigma_px <= 0.05:
        return img_SS
    b = _blur_matrix(img_SS.shape[0], round(float(sigma_px), 3))
    if img_SS.ndim == 2:
        return b @ img_SS @ b.T
    return np.stack([b @ img_SS[..., ch] @ b.T for ch in range(img_SS.shape[2])], axis=-1)


def mix(base, value, alpha_SS):
    """Alpha-composite `value` (scalar, [3], [S, S] or [S, S, C]) over `base` with coverage alpha [S, S]."""
    alpha = alpha_SS if np.ndim(base) == 2 else alpha_SS[..., None]
    return base + (np.asarray(value, np.float32) - base) * alpha


def finish(img, rng: np.random.Generator, noise_std: float, gain: float, bias: float,
           blur_px: float = 0.0) -> np.ndarray:
    """Acquisition effects then quantisation: blur, contrast/brightness, noise -> uint8 [S, S, 3]."""
    img = blur(np.asarray(img, np.float32), blur_px)
    img = img * gain + bias
    img = img + rng.normal(0.0, noise_std, img.shape).astype(np.float32)
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


def size_word(value: float, lo: float, hi: float) -> str:
    """'small' | 'medium' | 'large': which third of its sampling range [lo, hi] a size falls in."""
    t = (value - lo) / max(hi - lo, 1e-9)
    return "small" if t < 1 / 3 else ("medium" if t < 2 / 3 else "large")
