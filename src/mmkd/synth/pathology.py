"""Procedural H&E histopathology patches and dermoscopy images (colour), with planted findings.

Same contract as `radiology`: anatomy from `rng_anatomy`, lesion from `rng_lesion`,
acquisition from `rng_noise`; colours are RGB in [0, 1] before the acquisition step.

Histopathology is stained by the Beer–Lambert law with the usual H&E optical-density
vectors (Ruifrok & Johnston): haematoxylin (nuclei, purple) and eosin (stroma, pink)
concentration maps become RGB. Normal tissue (stroma with glands lined by regular nuclei) is
the background of every patch; a finding replaces a region of it:
  carcinoma     crowded, large, pleomorphic, very dark nuclei in sheets, few irregular lumens
  inflammation  dense small round uniform dark nuclei (lymphocytes) over stroma
  necrosis      pale blotchy eosin with fine nuclear dust and no intact nuclei
Dermoscopy: skin of varied tone in a round dermatoscope field, sometimes hairs.
  nevus         round symmetric uniform brown lesion with a faint regular network
  melanoma      large asymmetric irregular lesion, several colours: dark brown, blue-grey veil, black dots
  bcc           pink pearly nodule with branching red vessels and blue-grey nests
"""

from __future__ import annotations

import numpy as np

from mmkd.synth.draw import blob, canvas, dots, finish, mix, polyline, random_walk, random_wobble, size_word, smooth_noise
from mmkd.synth.findings import Planted

H_OD = np.array([0.65, 0.70, 0.29], np.float32)  # haematoxylin optical density (RGB)
E_OD = np.array([0.07, 0.99, 0.11], np.float32)  # eosin
HISTO_MM_PER_UNIT = 0.128  # a patch is 256 µm across
DERM_MM_PER_UNIT = 12.0  # a dermoscopy field is 24 mm across


def _jittered_grid(rng, spacing: float, jitter: float):
    """Points (x_N, y_N) on a jittered grid covering the canvas: tissue-like even spacing."""
    ticks = np.arange(-1 + spacing / 2, 1, spacing)
    gx, gy = np.meshgrid(ticks, ticks)
    n = gx.size
    return (gx.ravel() + rng.uniform(-jitter, jitter, n)).astype(np.float32), \
        (gy.ravel() + rng.uniform(-jitter, jitter, n)).astype(np.float32)


def _inside(region_SS, xs, ys):
    """Mask over points: whether the region covers the pixel under each point."""
    s = region_SS.shape[0]
    ix = np.clip(((xs + 1) / 2 * s).astype(int), 0, s - 1)
    iy = np.clip(((ys + 1) / 2 * s).astype(int), 0, s - 1)
    return region_SS[iy, ix] > 0.02


def render_histopathology(size, finding, rng_anatomy, rng_lesion, rng_noise, lesion_strength=1.0, noise_scale=1.0):
    c, ra, rl = canvas(size), rng_anatomy, rng_lesion
    # normal tissue: fibrous stroma (anisotropic texture), sparse stromal nuclei, glands
    fibres = smooth_noise(ra, size, 4, 14)
    if ra.random() < 0.5:
        fibres = fibres.T
    eosin = 0.45 + 0.12 * fibres
    haem = np.full((size, size), 0.05, np.float32)
    n_stromal = int(ra.integers(6, 30))
    haem = np.maximum(haem, dots(c, ra.uniform(-1, 1, n_stromal), ra.uniform(-1, 1, n_stromal), 0.025, 0.9))
    for _ in range(int(ra.integers(1, 5))):
        gx, gy, lumen = ra.uniform(-0.6, 0.6), ra.uniform(-0.6, 0.6), ra.uniform(0.12, 0.2)
        eosin = mix(eosin, 0.75, blob(c, gx, gy, lumen + 0.09, lumen + 0.09))  # epithelium
        eosin = mix(eosin, 0.03, blob(c, gx, gy, lumen, lumen, wobble=random_wobble(ra, 0.05)))
        haem = mix(haem, 0.02, blob(c, gx, gy, lumen, lumen))
        n_nuclei = int(round(2 * np.pi * (lumen + 0.045) / 0.075))
        t = np.linspace(0, 2 * np.pi, n_nuclei, endpoint=False) + ra.uniform(0, 1)
        haem = np.maximum(haem, dots(c, gx + (lumen + 0.045) * np.cos(t), gy + (lumen + 0.045) * np.sin(t), 0.032, 1.1))

    planted = Planted("histopathology", finding, mask_SS=np.zeros((size, size), bool))
    if finding != "normal":
        target = rl.uniform(0.35, 1.0)  # share of the patch the finding covers
        if target > 0.85:
            region = np.ones((size, size), np.float32)
        else:
            radius = np.sqrt(target * 4 / np.pi)
            region = blob(c, rl.uniform(-0.35, 0.35), rl.uniform(-0.35, 0.35), radius, radius,
                          wobble=random_wobble(rl, 0.12), edge_px=2.0)
        if finding == "carcinoma":
            xs, ys = _jittered_grid(rl, 0.12, 0.035)
            keep = _inside(region, xs, ys)
            xs, ys = xs[keep], ys[keep]
            nuclei = dots(c, xs, ys, rl.uniform(0.04, 0.075, xs.size), rl.uniform(1.2, 2.0, xs.size))
            lesion_haem = np.maximum(0.25, nuclei)
            lesion_eosin = 0.55 + 0.05 * smooth_noise(rl, size, 8)
            for _ in range(int(rl.integers(0, 3))):
                lx, ly = rl.uniform(-0.7, 0.7, 2)
                lumen = blob(c, lx, ly, rl.uniform(0.05, 0.1), rl.uniform(0.05, 0.1), wobble=random_wobble(rl, 0.25))
                lesion_eosin, lesion_haem = mix(lesion_eosin, 0.05, lumen), mix(lesion_haem, 0.03, lumen)
        elif finding == "inflammation":
            xs, ys = _jittered_grid(rl, 0.08, 0.03)
            keep = _inside(region, xs, ys) & (rl.random(xs.size) < rl.uniform(0.5, 0.95))
            xs, ys = xs[keep], ys[keep]
            lesion_haem = np.maximum(0.06, dots(c, xs, ys, rl.uniform(0.026, 0.034, xs.size), 2.2))
            lesion_eosin = 0.4 + 0.08 * smooth_noise(rl, size, 6)
        else:  # necrosis
            xs, ys = _jittered_grid(rl, 0.1, 0.045)
            keep = _inside(region, xs, ys) & (rl.random(xs.size) < 0.7)
            xs, ys = xs[keep], ys[keep]
            lesion_haem = np.maximum(0.12 + 0.06 * smooth_noise(rl, size, 10), dots(c, xs, ys, 0.015, 0.9))
            lesion_eosin = rl.uniform(0.25, 0.45) + 0.12 * smooth_noise(rl, size, 10)
        planted.mask_SS = region > 0.5
        planted.extent = float(planted.mask_SS.mean())
        planted.count = 1
        planted.size_word = size_word(planted.extent, 0.35, 1.0)
        rows, cols = np.nonzero(planted.mask_SS)
        span_px = max(np.ptp(rows) if rows.size else 0, np.ptp(cols) if cols.size else 0) + 1
        planted.size_mm = span_px * c.px * HISTO_MM_PER_UNIT
        eosin = mix(eosin, lesion_eosin, region * lesion_strength)
        haem = mix(haem, lesion_haem, region * lesion_strength)
    # stain variation between labs/scanners: stain strength and hue (the optical-density vectors),
    # so that a class cannot be told from the patch's mean colour alone
    h_vec = H_OD * ra.uniform(0.85, 1.15, 3).astype(np.float32) * ra.uniform(0.65, 1.35)
    e_vec = E_OD * ra.uniform(0.85, 1.15, 3).astype(np.float32) * ra.uniform(0.7, 1.3)
    rgb = np.exp(-(np.clip(haem, 0, None)[..., None] * h_vec + np.clip(eosin, 0, None)[..., None] * e_vec))
    return finish(rgb, rng_noise, noise_std=noise_scale * rng_noise.uniform(0.01, 0.035), gain=rng_noise.uniform(0.9, 1.08),
                  bias=rng_noise.uniform(-0.04, 0.04), blur_px=rng_noise.uniform(0.0, 0.5) * size / 32), planted


_SKIN_TONES = np.array([(0.93, 0.78, 0.68), (0.87, 0.68, 0.55), (0.76, 0.57, 0.42), (0.64, 0.47, 0.35),
                        (0.5, 0.36, 0.27)], np.float32)


def render_dermoscopy(size, finding, rng_anatomy, rng_lesion, rng_noise, lesion_strength=1.0, noise_scale=1.0):
    c, ra, rl = canvas(size), rng_anatomy, rng_lesion
    tone = _SKIN_TONES[ra.integers(len(_SKIN_TONES))] * ra.uniform(0.94, 1.04, 3).astype(np.float32)
    img = tone * (1 + 0.04 * smooth_noise(ra, size, 6))[..., None]
    n_freckles = int(ra.integers(0, 7))
    freckles = dots(c, ra.uniform(-0.8, 0.8, n_freckles), ra.uniform(-0.8, 0.8, n_freckles), ra.uniform(0.02, 0.04, n_freckles))
    img = mix(img, tone * 0.75, freckles)
    hairs = np.zeros((size, size), np.float32)
    if ra.random() < 0.35:
        for _ in range(int(ra.integers(1, 4))):
            start = ra.uniform(-1, 1, 2)
            hairs = np.maximum(hairs, polyline(c, random_walk(ra, start, ra.uniform(0, 2 * np.pi), 8, 0.25, 0.25), 0.02))
    field = blob(c, ra.uniform(-0.05, 0.05), ra.uniform(-0.05, 0.05), ra.uniform(0.98, 1.12), ra.uniform(0.98, 1.12),
                 edge_px=3.0)

    planted = Planted("dermoscopy", finding, mask_SS=np.zeros((size, size), bool))
    layers = []
    if finding != "normal":
        if finding == "nevus":
            r = rl.uniform(0.18, 0.4)
            cx, cy = rl.uniform(-0.15, 0.15, 2)
            lesion = blob(c, cx, cy, r, r * rl.uniform(0.85, 1.0), angle=rl.uniform(0, np.pi),
                          wobble=random_wobble(rl, 0.03), edge_px=2.0)
            angle, period = rl.uniform(0, np.pi), 0.2
            u = c.x_SS * np.cos(angle) + c.y_SS * np.sin(angle)
            v = -c.x_SS * np.sin(angle) + c.y_SS * np.cos(angle)
            network = 0.5 + 0.5 * np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period)
            centre_dark = 1 - 0.12 * blob(c, cx, cy, 0.5 * r, 0.5 * r, edge_px=4.0)
            brown = np.array((0.55, 0.36, 0.24), np.float32) * rl.uniform(0.6, 1.2)
            layers = [(brown * ((0.92 + 0.08 * network) * centre_dark)[..., None], lesion)]
            lo, hi = 0.18, 0.4
        elif finding == "melanoma":
            r = rl.uniform(0.26, 0.5)
            cx, cy = rl.uniform(-0.25, 0.25, 2)
            lesion = blob(c, cx, cy, r, r * rl.uniform(0.7, 1.0), angle=rl.uniform(0, np.pi),
                          wobble=random_wobble(rl, 0.22, ks=(2, 3, 4)), edge_px=1.5)
            variegated = np.array((0.42, 0.26, 0.17), np.float32) * (1 + 0.25 * smooth_noise(rl, size, 6))[..., None]
            veil = blob(c, cx + rl.uniform(-0.5, 0.5) * r, cy + rl.uniform(-0.5, 0.5) * r, 0.45 * r, 0.35 * r,
                        angle=rl.uniform(0, np.pi), wobble=random_wobble(rl, 0.2)) * lesion * 0.75
            n_dots = int(rl.integers(5, 15))
            ang, rad = rl.uniform(0, 2 * np.pi, n_dots), rl.uniform(0.5, 0.95, n_dots) * r
            black = lesion * dots(c, cx + rad * np.cos(ang), cy + rad * np.sin(ang), rl.uniform(0.02, 0.035, n_dots))
            layers = [(variegated, lesion), ((0.45, 0.5, 0.62), veil), ((0.1, 0.08, 0.08), black)]
            lo, hi = 0.26, 0.5
        else:  # bcc
            r = rl.uniform(0.18, 0.36)
            cx, cy = rl.uniform(-0.2, 0.2, 2)
            lesion = blob(c, cx, cy, r, r * rl.uniform(0.8, 1.0), angle=rl.uniform(0, np.pi),
                          wobble=random_wobble(rl, 0.06), edge_px=2.0)
            pearly = mix(np.broadcast_to(np.array((0.88, 0.6, 0.6), np.float32), (size, size, 3)), (0.97, 0.85, 0.85),
                         0.6 * blob(c, cx - 0.3 * r, cy - 0.3 * r, 0.4 * r, 0.3 * r, edge_px=3.0))
            vessels = np.zeros((size, size), np.float32)
            for _ in range(int(rl.integers(2, 5))):
                trunk = random_walk(rl, (cx, cy), rl.uniform(0, 2 * np.pi), 4, 0.22 * r, 0.5)
                vessels = np.maximum(vessels, polyline(c, trunk, 0.03))
                branch = random_walk(rl, trunk[2], rl.uniform(0, 2 * np.pi), 2, 0.2 * r, 0.4)
                vessels = np.maximum(vessels, polyline(c, branch, 0.022))
            n_nests = int(rl.integers(1, 4))
            nests = dots(c, cx + rl.uniform(-0.5, 0.5, n_nests) * r, cy + rl.uniform(-0.5, 0.5, n_nests) * r,
                         rl.uniform(0.05, 0.08, n_nests))
            layers = [(pearly, lesion), ((0.65, 0.12, 0.15), vessels * lesion), ((0.42, 0.45, 0.55), nests * lesion)]
            lo, hi = 0.18, 0.36
        planted.mask_SS = lesion > 0.5
        planted.extent = float(planted.mask_SS.mean())
        planted.count = 1
        planted.size_mm = 2 * r * DERM_MM_PER_UNIT
        planted.size_word = size_word(r, lo, hi)
        for value, alpha in layers:
            img = mix(img, value, alpha * lesion_strength)
    img = mix(img, (0.16, 0.1, 0.07), hairs)
    img = mix(np.full_like(img, 0.04), img, field)  # the dark rim outside the dermatoscope's field
    img = img * rng_noise.uniform(0.92, 1.08, 3).astype(np.float32)  # white balance of the camera
    return finish(img, rng_noise, noise_std=noise_scale * rng_noise.uniform(0.01, 0.035), gain=rng_noise.uniform(0.88, 1.1),
                  bias=rng_noise.uniform(-0.05, 0.05), blur_px=rng_noise.uniform(0.0, 0.6) * size / 32), planted
