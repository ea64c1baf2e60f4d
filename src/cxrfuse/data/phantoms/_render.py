"""The phantom rasteriser: anatomy and lesion density maps of one view, then exposure
(attenuation, window, gamma, blur, upsampling, noise) to 8-bit pixels and the lesion masks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from cxrfuse.data.phantoms._cases import (
    LAT_CX,
    LAT_RX,
    LUNG_CX,
    LUNG_RX,
    PhantomConfig,
    _Case,
    _Lesion,
    _lung_q,
    _Patient,
    _sample_case,
)

Array = np.ndarray


def _inside(d: Array, w: float) -> Array:
    """Soft indicator of ``d < 0`` with an edge ``w`` wide."""
    return np.clip(0.5 - d / w, 0.0, 1.0)


def _ellipse(
    u: Array, v: Array, cu: float, cv: float, ru: float, rv: float, w: float, angle: float = 0.0
) -> Array:
    """Soft filled (rotated) ellipse."""
    du, dv = u - cu, v - cv
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        du, dv = du * c + dv * s, dv * c - du * s
    q = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2)
    return _inside((q - 1.0) * min(ru, rv), w)


def _smooth(t: Array) -> Array:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[Array, Array]:
    """Pixel centres in [-1, 1] (x right, y down), float32."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _patient_frame(p: _Patient, size: int, mirror: bool = False) -> tuple[Array, Array, float]:
    """Patient coordinates (u, v) of every pixel and the soft-edge width in those units."""
    x, y = _grid(size)
    c, s = math.cos(p.rot), math.sin(p.rot)
    dx, dy = x - p.shift[0], y - p.shift[1]
    u = (dx * c + dy * s) / p.scale
    v = (dy * c - dx * s) / p.scale
    return (-u if mirror else u), v, 3.0 / size / p.scale


# ---------------------------------------------------------------------------- anatomy
@dataclass
class _Scene:
    """Density maps of one view; :func:`_expose` turns them into pixels."""

    u: Array
    v: Array
    w: float
    tissue: Array
    bone: Array
    air: Array  # lung air, 0..1 (lucent)
    markings: Array
    lung: Array  # lung field, ignoring the heart (where lung lesions may be drawn)
    heart: Array
    extra: Array  # lesion density
    angles: tuple[float, float]  # v of the costophrenic angles (right, left; lateral: posterior)


def _frontal_anatomy(p: _Patient, size: int, ctr: float) -> _Scene:
    u, v, w = _patient_frame(p, size)
    a, left = np.abs(u), u > 0
    hw = 0.26 + (p.body_w - 0.26) * _smooth((v + 1.08) / 0.42)
    tissue = 0.50 * np.sqrt(np.clip(1.0 - (u / hw) ** 2, 0.0, None)) + 0.06 * _smooth(v - 0.2)
    dome = np.where(left, np.float32(p.dome_l), np.float32(p.dome_r)) - p.dome_h * np.clip(
        1 - ((a - 0.40) / 0.34) ** 2, 0, None
    )
    lung = _inside((_lung_q(a, v) - 1.0) * LUNG_RX, w) * _inside(v - dome, w)
    width = ctr * 2 * (LUNG_CX + LUNG_RX)
    dx, dy = p.heart_shift
    heart = _ellipse(u, v, 0.17 * width + dx, 0.27 + dy, width / 2, 0.30, w, angle=-0.12)
    med = np.maximum(
        _inside(np.abs(u - 0.01) - 0.10 - 0.08 * _smooth(v + 0.25), w),
        _ellipse(u, v, 0.13, -0.33, 0.08, 0.07, w),
    )
    med = np.maximum(med, heart) * _inside(v - 0.2, 4 * w) + heart * _inside(0.2 - v, 4 * w)
    air = lung * (1.0 - med)
    trachea = _inside(np.abs(u - 0.01) - 0.026, w) * _inside(v + 0.28, 8 * w)
    bubble = p.bubble * _ellipse(u, v, 0.33, p.dome_l + 0.06, 0.09, 0.045, w) * left
    air = air + 0.5 * trachea + 0.6 * bubble
    bone = _frontal_bones(u, v, a, w, p) * (tissue > 0)
    marks = _markings(u, v, a, p, size) * air
    drop = p.dome_h * (1 - ((LUNG_RX + LUNG_CX - 0.40) / 0.34) ** 2)
    angles = (p.dome_r - drop, p.dome_l - drop)
    return _Scene(u, v, w, tissue, bone, air, marks, lung, heart, np.zeros_like(u), angles)


def _frontal_bones(u: Array, v: Array, a: Array, w: float, p: _Patient) -> Array:
    """Spine, clavicles, ribs, humeral heads."""
    spine = _inside(a - 0.065, 3 * w) * (0.06 + 0.035 * np.cos(np.pi * v / 0.105) ** 2)
    t = a - 0.08
    clav = _inside(np.abs(v - (-0.60 - 0.22 * t + 0.35 * t * t * (t - 0.3))) - 0.026, w)
    clav *= _inside(0.04 - a, w) * _inside(a - 0.80, w) * 0.20
    thorax = _inside(_lung_q(a, v + 0.03, LUNG_CX - 0.03, LUNG_RX + 0.09) - 1.0, 0.1)
    thorax *= _inside(v - 0.45 - 0.25 * a, 0.1)
    back = np.cos(
        2 * np.pi * (v + 0.25 * a - 0.75 * a * a - p.rib_phase * p.rib_period) / p.rib_period
    )
    front = np.cos(2 * np.pi * (v - 0.45 * a + 0.3 * a * a) / (1.15 * p.rib_period))
    ribs = thorax * (
        0.055 * np.clip((back - 0.5) / 0.5, 0, 1) + 0.03 * np.clip((front - 0.6) / 0.4, 0, 1)
    )
    humerus = _inside(np.hypot(a - 0.95, v + 0.72) - 0.15, w) * 0.22
    return spine + clav + ribs + humerus


def _markings(u: Array, v: Array, a: Array, p: _Patient, size: int) -> Array:
    """Vessel-like streaks fanning out of the hila."""
    rng = np.random.default_rng(int(p.rib_phase * 2**31) + size)
    table = np.clip(rng.standard_normal((2, 96, 13)).astype(np.float32) - 0.7, 0, None)
    dx, dv = a - 0.18, v + 0.02
    r = np.sqrt(dx * dx + dv * dv)
    t = dv / (np.abs(dx) + np.abs(dv) + 1e-6)  # "diamond angle": cheap, monotonic in the angle
    ti = (np.where(dx >= 0, t + 1.0, 3.0 - t) * 24.0).astype(np.intp) % 96
    rf = np.clip(r * 14.0, 0, 11.999)
    ri = rf.astype(np.intp)
    f = rf - ri.astype(np.float32)
    side = (u > 0).astype(np.intp)
    streak = table[side, ti, ri] * (1 - f) + table[side, ti, ri + 1] * f
    return 0.09 * streak * np.clip(1.1 - r / 0.6, 0.1, 1.0)


def _lateral_anatomy(p: _Patient, size: int, ctr: float) -> _Scene:
    u, v, w = _patient_frame(p, size)  # facing image left: anterior = negative u
    depth = 0.34 + (0.72 * p.body_w - 0.34) * _smooth((v + 1.05) / 0.45)
    tissue = 0.62 * np.sqrt(np.clip(1.0 - ((u - 0.06) / depth) ** 2, 0.0, None))
    tissue += 0.10 * _ellipse(u, v, 0.0, -0.95, 0.5, 0.3, 0.3)  # raised arms
    dome = p.dome_r + 0.12 * (u - 0.05) / 0.42 - p.dome_h * np.clip(1 - (u / 0.45) ** 2, 0, None)
    lung = _inside((_lung_q(u, v, LAT_CX, LAT_RX) - 1.0) * LAT_RX, w) * _inside(v - dome, w)
    grow = (ctr - 0.45) * 0.9
    heart = _ellipse(
        u,
        v,
        -0.17 + 0.5 * grow + p.heart_shift[0],
        0.24 + p.heart_shift[1],
        0.22 + grow,
        0.22,
        w,
        angle=0.35,
    )
    air = lung * (1.0 - heart)
    trachea = _inside(np.abs(u - (0.02 + 0.08 * (v + 1.0))) - 0.028, w) * _inside(v + 0.32, 8 * w)
    air = air + 0.4 * trachea
    bone = _lateral_bones(u, v, w, p, 0.06 + 0.62 * depth) * _inside(np.abs(u - 0.06) - depth, w)
    marks = _markings(np.abs(u - 0.0) + 0.1, v, np.abs(u) + 0.1, p, size) * air
    angle = p.dome_r + 0.12 * (LAT_CX + LAT_RX - 0.05) / 0.42
    return _Scene(u, v, w, tissue, bone, air, marks, lung, heart, np.zeros_like(u), (angle, angle))


def _lateral_bones(u: Array, v: Array, w: float, p: _Patient, axis: Array) -> Array:
    """Thoracic spine (vertebral bodies and discs) along ``axis``, sternum, faint ribs."""
    bodies = _inside(np.abs(u - axis) - 0.06, w) * np.where(
        np.cos(np.pi * v / 0.105) ** 2 > 0.2, np.float32(0.15), np.float32(0.05)
    )
    sternum = _inside(np.abs(u + 0.45 - 0.08 * (v + 0.6)) - 0.018, w)
    sternum *= _inside(v - 0.18, w) * _inside(-0.62 - v, w) * 0.22
    ribs = np.cos(2 * np.pi * (v - 0.4 * u - p.rib_phase * p.rib_period) / p.rib_period)
    ribs = 0.05 * np.clip((ribs - 0.6) / 0.4, 0, 1) * _inside(-u, 0.5) * _inside(v - 0.5, 0.1)
    return bodies + sternum + ribs


# ---------------------------------------------------------------------------- lesions
def _at(les: _Lesion, lateral: bool, x: float | None = None, z: float | None = None) -> float:
    """Horizontal patient coordinate of a point in this view (frontal: x, lateral: depth)."""
    return float(z if z is not None else les.z) if lateral else float(x if x is not None else les.x)


def _effusion(s: _Scene, les: _Lesion, lat: bool) -> Array:
    edge = 0.47 if lat else LUNG_CX + LUNG_RX
    e = s.u if lat else np.abs(s.u)
    base = s.angles[int(les.side > 0)]
    level = base - les.params["height"] + 0.6 * (edge - e) ** 2
    region = s.lung * _inside(level - s.v, 0.04)
    if not lat and not les.params["both"]:
        region = region * (s.u * les.side > 0)
    return region


def _pneumothorax(s: _Scene, les: _Lesion, lat: bool) -> Array:
    rim = les.params["rim"]
    if lat:
        inner = _lung_q(s.u, s.v, LAT_CX, LAT_RX, shrink=rim)
    else:
        inner = _lung_q(np.abs(s.u), s.v, shrink=rim)
    region = s.lung * _inside(1.0 - inner, s.w) * _inside(s.v + 0.1, 0.1)
    return region if lat else region * (s.u * les.side > 0)


def _dots(s: _Scene, pts: Iterable[tuple[float, float]], radii: Iterable[float]) -> Array:
    out = np.zeros_like(s.u)
    for (cu, cv), r in zip(pts, radii):
        r = max(r, 0.8 * s.w)
        np.maximum(out, _inside(np.hypot(s.u - cu, s.v - cv) - r, s.w), out=out)
    return out


def _calcinosis(s: _Scene, les: _Lesion, lat: bool) -> Array:
    cu = 0.02 if lat else les.x
    pts = [(cu + 0.07 * math.cos(t), les.y - 0.065 * math.sin(t)) for t in les.params["angles"]]
    return _dots(s, pts, les.params["r"])


def _granuloma(s: _Scene, les: _Lesion, lat: bool) -> Array:
    pts = [(_at(les, lat, x, z), y) for x, y, z in les.params["pts"]]
    return _dots(s, pts, les.params["r"])


def _nodule(s: _Scene, les: _Lesion, lat: bool) -> Array:
    r = les.params["r"]
    d = np.hypot(s.u - _at(les, lat), s.v - les.y) / r
    return np.sqrt(np.clip(1.0 - d * d, 0.0, None)) ** 0.5 * _inside(d - 1.0, s.w / r)


def _atelectasis(s: _Scene, les: _Lesion, lat: bool) -> Array:
    p = les.params
    band = _ellipse(s.u, s.v, _at(les, lat), les.y, p["length"] / 2, p["thick"], s.w, p["angle"])
    return band * s.lung


def _opacity(s: _Scene, les: _Lesion, lat: bool) -> Array:
    p = les.params
    blob = _ellipse(s.u, s.v, _at(les, lat), les.y, p["rx"], p["ry"], 0.12)
    size = s.u.shape[0]
    patch = np.asarray(Image.fromarray(p["patch"], mode="F").resize((size, size), Image.BICUBIC))
    return np.clip(blob * (0.75 + 0.35 * patch), 0.0, 1.0) * s.lung


_DRAW: dict[str, tuple[Callable[[_Scene, _Lesion, bool], Array], float, float]] = {
    # kind: (alpha function, added density, mask threshold)
    "effusion": (_effusion, 0.0, 0.5),
    "pneumothorax": (_pneumothorax, 0.0, 0.5),
    "calcinosis": (_calcinosis, 0.9, 0.5),
    "granuloma": (_granuloma, 0.8, 0.5),
    "nodule": (_nodule, 0.22, 0.3),
    "mass": (_nodule, 0.26, 0.3),
    "atelectasis": (_atelectasis, 0.20, 0.5),
    "opacity": (_opacity, 0.22, 0.35),
}


def _apply_lesions(
    scene: _Scene, case: _Case, lateral: bool, signal: float
) -> dict[str, tuple[Array, float]]:
    """Add every lesion's density to ``scene``; return each label's alpha and mask threshold."""
    alphas: dict[str, tuple[Array, float]] = {}
    for les in case.lesions:
        if les.kind == "cardiomegaly":
            alpha, density, threshold = scene.heart, 0.0, 0.5
        else:
            fn, density, threshold = _DRAW[les.kind]
            alpha = fn(scene, les, lateral)
        if les.kind == "effusion":
            scene.air = scene.air * (1.0 - signal * alpha)
            scene.extra += 0.10 * signal * alpha
        elif les.kind == "pneumothorax":
            scene.air = scene.air + 0.25 * signal * alpha
            scene.markings = scene.markings * (1.0 - signal * alpha)
            edge = alpha * (1.0 - alpha) * 4.0  # visceral pleural line
            scene.extra += 0.05 * signal * edge
        scene.extra += density * signal * alpha
        alphas[les.label] = (alpha, threshold)
    return alphas


def _mask(alpha: Array, threshold: float, size: int) -> Array:
    """Boolean mask at output size; never empty when anything was drawn."""
    alpha = _upsample(alpha.astype(np.float32, copy=False), size)
    mask = alpha > threshold
    if not mask.any() and alpha.max() > 0:
        mask = alpha >= 0.5 * alpha.max()
    return mask


# ---------------------------------------------------------------------------- rendering
def _inner_size(size: int) -> int:
    """Anatomy and lesions are drawn at half resolution (then blurred and upsampled)."""
    return size // 2 if size >= 128 and size % 2 == 0 else size


def _upsample(a: Array, size: int) -> Array:
    """Bilinear 2x upsampling in numpy (or a PIL resize for other factors)."""
    n = a.shape[0]
    if n == size:
        return a
    if size != 2 * n:
        return np.asarray(Image.fromarray(a, mode="F").resize((size, size), Image.BILINEAR))
    pad = np.concatenate([a[:1], a, a[-1:]])
    rows = np.empty((2 * n, n), np.float32)
    rows[0::2] = 0.75 * a + 0.25 * pad[:-2]
    rows[1::2] = 0.75 * a + 0.25 * pad[2:]
    pad = np.concatenate([rows[:, :1], rows, rows[:, -1:]], axis=1)
    out = np.empty((2 * n, 2 * n), np.float32)
    out[:, 0::2] = 0.75 * rows + 0.25 * pad[:, :-2]
    out[:, 1::2] = 0.75 * rows + 0.25 * pad[:, 2:]
    return out


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> Array:
    """A fixed field of unit Gaussian noise; each image takes a random crop and flip of it."""
    return np.random.default_rng(20240501 + size).standard_normal(
        (size + 64, size + 64), np.float32
    )


def _noise(size: int, rng: np.random.Generator) -> Array:
    y, x, flip_y, flip_x = (int(i) for i in rng.integers(0, [64, 64, 2, 2]))
    crop = _noise_bank(size)[y : y + size, x : x + size]
    return crop[:: 1 - 2 * flip_y, :: 1 - 2 * flip_x]


def _expose(scene: _Scene, p: _Patient, rng: np.random.Generator, size: int) -> Array:
    """Densities -> film: exponential attenuation, window, gamma, blur, upsampling, noise."""
    from scipy.ndimage import gaussian_filter

    density = scene.tissue + scene.bone + scene.markings + scene.extra - 0.30 * scene.air
    img = 1.0 - np.exp(-p.k * np.maximum(density, 0.0))
    img = np.clip((img - 0.05) * (p.contrast / 0.8) + p.bright, 0.0, 1.0) ** p.gamma
    sigma = p.blur * size / 256 * img.shape[0] / size
    if sigma > 0.05:
        img = gaussian_filter(img, sigma, mode="nearest", truncate=2.5)
    img = _upsample(img, size)
    if p.noise > 0:
        img = img + p.noise * _noise(size, rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_phantom(
    labels: Mapping[str, float],
    *,
    view: str,
    rng: np.random.Generator,
    config: PhantomConfig | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Draw one phantom view: a uint8 image (size x size) and a bool mask per drawn label.

    ``view`` is ``"frontal"`` (or PA/AP/FRONTAL) or ``"lateral"`` (or LATERAL/LL). Masks come
    only for positive labels with a visual rule (:func:`lesion_kind`); unknown values are
    negative. Two generators in the same state give two views of the same patient.
    """
    config = config or PhantomConfig()
    lateral = _view_name(view) == "lateral"
    case = _sample_case(labels, rng, config)
    p = case.patient
    ctr = (
        p.ctr_normal + config.signal * (p.ctr_large - p.ctr_normal)
        if case.cardiomegaly
        else p.ctr_normal
    )
    scene = (_lateral_anatomy if lateral else _frontal_anatomy)(p, _inner_size(config.size), ctr)
    alphas = _apply_lesions(scene, case, lateral, config.signal)
    view_rng = np.random.default_rng([case.view_seed, int(lateral)])
    image = _expose(scene, p, view_rng, config.size)
    return image, {label: _mask(a, t, config.size) for label, (a, t) in alphas.items()}


def _view_name(view: str) -> str:
    name = view.strip().lower()
    if name in ("frontal", "pa", "ap"):
        return "frontal"
    if name in ("lateral", "ll"):
        return "lateral"
    raise ValueError(f"view {view!r}: expected 'frontal' or 'lateral'")
