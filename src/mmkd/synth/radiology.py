"""Procedural axial chest CT and brain MRI (greyscale), with lesions planted in known places.

Both renderers share the contract of `findings.Renderer`: anatomy comes only from
`rng_anatomy`, the lesion only from `rng_lesion`, acquisition effects (contrast, noise, blur)
only from `rng_noise`. Intensities are in [0, 1] before the acquisition step. Radiological
convention: the patient's right is on the image's left (x < 0).

Findings (shape / number / texture / size / position differ on purpose):
  CT:  nodule (1-3 small round bright spots in one lung zone), mass (one large lobulated
       spiculated heterogeneous opacity), effusion (dependent fluid with a flat level at the
       bottom of one lung).
  MRI: tumour (one large ring-enhancing lesion with dark core and oedema), ms_lesions (3-6
       small bright ovals around both ventricles, radially oriented), infarct (a homogeneous
       bright wedge reaching the cortex of one hemisphere).
"""

from __future__ import annotations

import numpy as np

from mmkd.synth.draw import blob, canvas, dots, finish, mix, polyline, random_wobble, size_word, smooth_noise
from mmkd.synth.findings import Planted

CT_MM_PER_UNIT = 100.0  # 200 mm field of view across the canvas
MRI_MM_PER_UNIT = 110.0
_SIDE_SIGN = {"right": -1.0, "left": 1.0}  # radiological convention


def _acquire(img, size, rng_noise, noise_scale, noise=(0.015, 0.045), gain=(0.85, 1.15), bias=(-0.05, 0.05)):
    return finish(img, rng_noise, noise_std=noise_scale * rng_noise.uniform(*noise), gain=rng_noise.uniform(*gain),
                  bias=rng_noise.uniform(*bias), blur_px=rng_noise.uniform(0.0, 0.6) * size / 32)


def _point_in_ellipse_half(rng, cx, cy, rx, ry, zone_sign, margin, v_range=(0.15, 0.65)):
    """A point inside the ellipse, in its upper (zone_sign -1) or lower (+1) half, `margin` from the edge."""
    for _ in range(50):
        u = rng.uniform(-0.7, 0.7)
        v = zone_sign * rng.uniform(*v_range)
        if u * u + v * v <= (1.0 - margin) ** 2:
            return cx + u * rx, cy + v * ry
    return cx, cy + zone_sign * 0.3 * ry


def render_ct(size, finding, rng_anatomy, rng_lesion, rng_noise, lesion_strength=1.0, noise_scale=1.0):
    c, ra, rl = canvas(size), rng_anatomy, rng_lesion
    sx, sy = ra.uniform(0.9, 1.08, 2)
    ox, oy = ra.uniform(-0.07, 0.07, 2)
    img = np.full((size, size), 0.03, np.float32)
    img = mix(img, 0.4, blob(c, ox, oy + 0.04, 0.88 * sx, 0.66 * sy, wobble=random_wobble(ra, 0.03)))  # fat
    muscle = 0.53 + 0.03 * smooth_noise(ra, size, 6)
    img = mix(img, muscle, blob(c, ox, oy + 0.04, 0.8 * sx, 0.58 * sy, wobble=random_wobble(ra, 0.03)))
    lungs = {}
    for side, sgn in _SIDE_SIGN.items():
        lx, ly = ox + sgn * 0.36 * sx, oy - 0.04
        lrx, lry = 0.26 * sx * ra.uniform(0.92, 1.08), 0.42 * sy * ra.uniform(0.92, 1.08)
        lung = blob(c, lx, ly, lrx, lry, angle=sgn * ra.uniform(0.0, 0.15), wobble=random_wobble(ra, 0.04))
        lungs[side] = (lx, ly, lrx, lry, lung)
        img = mix(img, 0.1 + 0.02 * smooth_noise(ra, size, 10), lung)
        # vessels: faint, small, many — the distractors a nodule must stand out from
        n_vessels = int(ra.integers(4, 9))
        ang, rad = ra.uniform(0, 2 * np.pi, n_vessels), np.sqrt(ra.uniform(0, 0.7, n_vessels))
        img = img + lung * dots(c, lx + rad * np.cos(ang) * lrx, ly + rad * np.sin(ang) * lry,
                                ra.uniform(0.02, 0.035, n_vessels), 0.12)
    img = mix(img, 0.62, blob(c, ox + 0.05 * sx, oy + 0.12 * sy, 0.14 * sx, 0.15 * sy, wobble=random_wobble(ra, 0.05)))
    img = mix(img, 0.66, blob(c, ox + 0.07 * sx, oy + 0.36 * sy, 0.055, 0.055))  # aorta
    img = mix(img, 0.95, blob(c, ox, oy + 0.5 * sy, 0.09, 0.085))  # vertebra
    img = mix(img, 0.3, blob(c, ox, oy + 0.43 * sy, 0.03, 0.03))  # spinal canal

    planted = Planted("ct", finding, mask_SS=np.zeros((size, size), bool))
    if finding != "normal":
        side = str(rl.choice(["right", "left"]))
        zone = str(rl.choice(["upper", "lower"]))
        lx, ly, lrx, lry, lung = lungs[side]
        zsign = -1.0 if zone == "upper" else 1.0
        if finding == "nodule":
            count = int(rl.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
            radii = rl.uniform(0.065, 0.11, count)
            xs, ys = [], []
            for r in radii:
                for _ in range(30):  # keep nodules apart so they can be counted
                    x, y = _point_in_ellipse_half(rl, lx, ly, lrx, lry, zsign, margin=r / lrx + 0.1)
                    if all((x - x2) ** 2 + (y - y2) ** 2 > (0.25) ** 2 for x2, y2 in zip(xs, ys)):
                        break
                xs.append(x)
                ys.append(y)
            lesion = dots(c, xs, ys, radii)
            value = rl.uniform(0.68, 0.8)
            big = float(radii.max())
            planted.count, planted.size_mm, planted.size_word = count, 2 * big * CT_MM_PER_UNIT, size_word(big, 0.065, 0.11)
        elif finding == "mass":
            r = rl.uniform(0.14, 0.22)
            x, y = lx + rl.uniform(-0.25, 0.25) * lrx, ly + zsign * rl.uniform(0.25, 0.45) * lry
            lesion = blob(c, x, y, r, r * rl.uniform(0.85, 1.1), angle=rl.uniform(0, np.pi),
                          wobble=random_wobble(rl, 0.16, ks=(3, 5, 8)))
            value = rl.uniform(0.6, 0.72) + 0.06 * smooth_noise(rl, size, 12)
            planted.count, planted.size_mm, planted.size_word = 1, 2 * r * CT_MM_PER_UNIT, size_word(r, 0.14, 0.22)
        else:  # effusion: dependent fluid (bottom of the image, supine) with a meniscus
            zone = "lower"
            depth = rl.uniform(0.2, 0.55)  # share of the lung's height
            level = ly + lry - 2 * depth * lry
            meniscus = level + 0.35 * lry * ((c.x_SS - lx) / lrx) ** 2
            lesion = lung * np.clip((c.y_SS - meniscus) / c.px + 0.5, 0.0, 1.0)
            value = 0.44 + 0.02 * smooth_noise(rl, size, 6)
            planted.count, planted.size_word = 1, size_word(depth, 0.2, 0.55)
            planted.size_mm = 2 * depth * lry * CT_MM_PER_UNIT
        planted.side, planted.region = side, zone
        planted.mask_SS = lesion > 0.5
        planted.extent = float(planted.mask_SS.mean())
        img = mix(img, value, lesion * lesion_strength)
    return _acquire(img, size, rng_noise, noise_scale), planted


def render_mri(size, finding, rng_anatomy, rng_lesion, rng_noise, lesion_strength=1.0, noise_scale=1.0):
    c, ra, rl = canvas(size), rng_anatomy, rng_lesion
    sx, sy = ra.uniform(0.9, 1.06, 2)
    ox, oy = ra.uniform(-0.06, 0.06, 2)
    hx, hy = 0.74 * sx, 0.9 * sy
    img = np.full((size, size), 0.02, np.float32)
    img = mix(img, 0.75, blob(c, ox, oy, hx, hy, wobble=random_wobble(ra, 0.02)))  # scalp
    img = mix(img, 0.12, blob(c, ox, oy, hx - 0.05, hy - 0.05))  # skull
    brx, bry = hx - 0.1, hy - 0.1
    brain = blob(c, ox, oy, brx, bry, wobble=random_wobble(ra, 0.02))
    img = mix(img, 0.5 + 0.05 * smooth_noise(ra, size, 12), brain)  # cortex (FLAIR: grey > white)
    white = blob(c, ox, oy, brx - 0.13, bry - 0.13, wobble=random_wobble(ra, 0.08, ks=(5, 7, 9)))
    img = mix(img, 0.38 + 0.03 * smooth_noise(ra, size, 8), white)
    img = mix(img, 0.2, brain * polyline(c, [(ox, oy - bry), (ox, oy + bry)], 0.025))  # falx
    for s in (-1.0, 1.0):  # lateral ventricles, dark CSF
        img = mix(img, 0.1, blob(c, ox + s * 0.085, oy - 0.03, 0.045, 0.17 * sy, angle=s * 0.3))

    planted = Planted("mri", finding, mask_SS=np.zeros((size, size), bool))
    if finding != "normal":
        side = str(rl.choice(["right", "left"]))
        zone = str(rl.choice(["frontal", "occipital"]))
        ssign, zsign = _SIDE_SIGN[side], (-1.0 if zone == "frontal" else 1.0)
        if finding == "tumour":
            r = rl.uniform(0.13, 0.22)
            x, y = ox + ssign * rl.uniform(0.3, 0.5) * brx, oy + zsign * rl.uniform(0.25, 0.5) * bry
            oedema = brain * blob(c, x, y, 1.55 * r, 1.4 * r, wobble=random_wobble(rl, 0.15))
            rim = blob(c, x, y, r, r * rl.uniform(0.85, 1.1), wobble=random_wobble(rl, 0.06))
            core = blob(c, x, y, 0.62 * r, 0.62 * r, wobble=random_wobble(rl, 0.1))
            layers = [(0.68, oedema), (0.92, rim), (0.25, core)]
            lesion = rim
            planted.count, planted.size_mm, planted.size_word = 1, 2 * r * MRI_MM_PER_UNIT, size_word(r, 0.13, 0.22)
        elif finding == "ms_lesions":
            count = int(rl.integers(3, 7))
            theta = rl.uniform(0, 2 * np.pi, count)
            # alternate hemispheres so both sides are always involved
            theta = np.where((np.arange(count) % 2 == 0) == (np.cos(theta) < 0), theta, np.pi - theta)
            dist = rl.uniform(0.17, 0.32, count)
            radii = rl.uniform(0.035, 0.06, count)
            lesion = np.zeros((size, size), np.float32)
            for t, d, r in zip(theta, dist, radii):
                x, y = ox + d * np.cos(t), oy - 0.03 + d * np.sin(t) * 1.3
                lesion = np.maximum(lesion, blob(c, x, y, 1.7 * r, r, angle=t))
            layers = [(0.9, lesion)]
            side, zone = "both", "periventricular"
            big = float(radii.max())
            planted.count, planted.size_mm = count, 2 * 1.7 * big * MRI_MM_PER_UNIT
            planted.size_word = size_word(big, 0.035, 0.06)
        else:  # infarct: a wedge from the cortex inwards, inside one quadrant of the brain
            width = rl.uniform(0.45, 0.9)
            inner = rl.uniform(0.35, 0.6)
            quad_centre = np.arctan2(zsign, ssign)
            centre = quad_centre + rl.uniform(-1, 1) * (np.pi / 4 - width / 2 - 0.05)
            rho = np.sqrt(((c.x_SS - ox) / brx) ** 2 + ((c.y_SS - oy) / bry) ** 2)
            dtheta = np.angle(np.exp(1j * (np.arctan2(c.y_SS - oy, c.x_SS - ox) - centre)))
            in_angle = np.clip((width / 2 - np.abs(dtheta)) * rho * brx / c.px + 0.5, 0, 1)
            in_depth = np.clip((rho - inner) * brx / c.px + 0.5, 0, 1)
            lesion = (brain * in_angle * in_depth).astype(np.float32)
            layers = [(0.78 + 0.03 * smooth_noise(rl, size, 8), lesion)]
            planted.count = 1
            planted.size_mm = (1 - inner) * 0.5 * (brx + bry) * MRI_MM_PER_UNIT
            planted.size_word = size_word(width * (1 - inner), 0.45 * 0.4, 0.9 * 0.65)
        planted.side, planted.region = side, zone
        planted.mask_SS = lesion > 0.5
        planted.extent = float(planted.mask_SS.mean())
        for value, alpha in layers:
            img = mix(img, value, alpha * lesion_strength)
    return _acquire(img, size, rng_noise, noise_scale), planted
