"""Deterministic, label-conditioned synthetic chest radiographs ("phantoms").

The pixels of IU X-ray are not always at hand; phantoms let the whole pipeline (embedding,
fusion training, Grad-CAM scoring) run on a manifest whose reports and labels are real but
whose images are drawn here. A phantom is a simplified radiograph: body outline, two dark
lung fields, a bright mediastinum and heart, spine, clavicles, faint ribs, diaphragm domes
and lung markings, with a lesion drawn for each positive label that has a visual rule
(:func:`lesion_kind`) and a binary mask of where it was drawn.

Patient position, body size, heart size, exposure, gamma, noise and blur vary from study to
study, so no fixed pixel gives a label away; the lesions do. Every study's random stream is
seeded from ``(config.seed, study_id)`` through a stable hash, so a study renders to the same
bytes whatever the order, process or machine.

The two views of a study show the same patient and the same lesions: :func:`render_phantom`
draws the patient and lesions first from ``rng``, so two generators in the same state give
matching views.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from cxrfuse.data.manifest import LABEL_PREFIX, Manifest, label_column
from cxrfuse.problems import DataError

PHANTOM_VIEWS = {"frontal": "PA", "lateral": "LATERAL"}
"""Phantom view name -> manifest view position."""
SYNTHETIC_NOTE = (
    "The image pixels of this manifest are synthetic phantoms drawn by cxrfuse.data.phantoms "
    "from the labels; they are not radiographs of the patients. Reports and labels are real."
)
CONFIG_FILE = "phantoms.json"

Array = np.ndarray


class PhantomConfig(BaseModel):
    """How phantoms are drawn; part of the manifest metadata, so a run can be reproduced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(256, ge=32, le=4096, description="image side in pixels")
    seed: int = Field(0, ge=0, description="global seed, combined with each study id")
    lateral: bool = Field(True, description="also draw a lateral view")
    signal: float = Field(1.0, ge=0.0, le=1.0, description="lesion contrast (0 = invisible)")
    noise: float = Field(0.02, ge=0.0, le=0.5, description="mean noise standard deviation")
    blur: float = Field(0.7, ge=0.0, le=5.0, description="mean blur sigma, in pixels at 256 px")
    format: Literal["png"] = "png"
    compress_level: int = Field(
        1, ge=0, le=9, description="PNG deflate level; 0 stores the pixels uncompressed"
    )


# ---------------------------------------------------------------------------- label rules
_KEYWORDS: tuple[tuple[str, str], ...] = (
    # (keyword in the lowercased label name, lesion kind); first match wins
    ("cardiomegaly", "cardiomegaly"),
    ("enlarged cardiomediastinum", "cardiomegaly"),
    ("effusion", "effusion"),
    ("granuloma", "granuloma"),
    ("calcinosis", "calcinosis"),
    ("calcification", "calcinosis"),
    ("pneumothorax", "pneumothorax"),
    ("atelectasis", "atelectasis"),
    ("nodule", "nodule"),
    ("mass", "mass"),
    ("lung lesion", "nodule"),
    ("opacity", "opacity"),
    ("airspace", "opacity"),
    ("consolidation", "opacity"),
    ("pneumonia", "opacity"),
    ("infiltration", "opacity"),
    ("infiltrate", "opacity"),
    ("edema", "opacity"),
)


def lesion_kind(label: str) -> str | None:
    """The lesion a label draws (``"Pleural Effusion"`` -> ``"effusion"``), None if no rule.

    Names are matched case-insensitively by keyword, so IU, CheXpert and NIH names work.
    ``abnormal``, ``No Finding``, ``Support Devices``, ``Fracture`` and the like draw nothing.
    """
    name = re.sub(r"[_\-]+", " ", label.lower())
    for keyword, kind in _KEYWORDS:
        if keyword in name:
            return kind
    return None


def is_positive(value: object) -> bool:
    """True for a positive label value; unknown (None / NaN) counts as negative."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return not math.isnan(number) and number >= 0.5


def drawn_labels(labels: Mapping[str, object]) -> list[str]:
    """The positive labels that draw a lesion, in the mapping's order."""
    return [name for name, value in labels.items() if is_positive(value) and lesion_kind(name)]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any values, stable across processes and machines."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# ---------------------------------------------------------------------------- sampled case
@dataclass(frozen=True)
class _Patient:
    """Patient and exposure parameters shared by both views of a study."""

    shift: tuple[float, float]
    rot: float
    scale: float
    body_w: float
    ctr_normal: float
    ctr_large: float
    heart_shift: tuple[float, float]
    dome_r: float
    dome_l: float
    dome_h: float
    bubble: float
    rib_phase: float
    rib_period: float
    k: float
    gamma: float
    contrast: float
    bright: float
    noise: float
    blur: float


@dataclass(frozen=True)
class _Lesion:
    """One lesion: its label, kind, side (+1 patient left), centre (x, y, depth z), params."""

    label: str
    kind: str
    side: int
    x: float
    y: float
    z: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Case:
    patient: _Patient
    lesions: tuple[_Lesion, ...]
    view_seed: int

    @property
    def cardiomegaly(self) -> bool:
        return any(les.kind == "cardiomegaly" for les in self.lesions)


def _sample_patient(rng: np.random.Generator, config: PhantomConfig) -> _Patient:
    """Always the same number of draws, so the patient does not depend on the labels."""
    u = [float(x) for x in rng.uniform(size=20)]
    dome_r = 0.50 + 0.08 * u[5]
    return _Patient(
        shift=(0.16 * (u[0] - 0.5), 0.12 * (u[1] - 0.5)),
        rot=math.radians(8.0 * (u[2] - 0.5)),
        scale=0.85 + 0.22 * u[3],
        body_w=0.94 + 0.12 * u[4],
        ctr_normal=0.40 + 0.09 * u[6],
        ctr_large=0.55 + 0.10 * u[7],
        heart_shift=(0.10 * (u[18] - 0.5), 0.06 * (u[19] - 0.5)),
        dome_r=dome_r,
        dome_l=dome_r + 0.01 + 0.05 * u[8],
        dome_h=0.10 + 0.07 * u[9],
        bubble=float(u[10] < 0.6),
        rib_phase=float(u[11]),
        rib_period=0.13 + 0.02 * u[12],
        k=1.9 + 0.6 * u[13],
        gamma=math.exp(0.5 * (u[14] - 0.5)),
        contrast=0.85 + 0.30 * u[15],
        bright=0.14 * (u[16] - 0.5),
        noise=config.noise * (0.5 + u[17]),
        blur=config.blur * (0.7 + 0.6 * float(rng.uniform())),
    )


def _lung_point(rng: np.random.Generator, lo: float, hi: float) -> tuple[int, float, float]:
    """A (side, x, y) inside a frontal lung field, with y between ``lo`` and ``hi``."""
    side = int(rng.choice([-1, 1]))
    for _ in range(64):
        a, y = rng.uniform(0.14, 0.68), rng.uniform(lo, hi)
        if _lung_q(a, y) < 0.75 and not (side > 0 and a < 0.42 and y > 0.05):  # not behind heart
            break
    return side, side * a, y


def _depth(rng: np.random.Generator) -> float:
    """Antero-posterior position of a lung lesion (lateral view), anterior negative."""
    return float(rng.uniform(-0.25, 0.30))


def _effusion_case(label: str, rng: np.random.Generator) -> _Lesion:
    side = int(rng.choice([-1, 1, 1]))
    params = {"height": rng.uniform(0.22, 0.42), "both": bool(rng.uniform() < 0.25)}
    return _Lesion(label, "effusion", side, side * 0.6, 0.45, 0.35, params)


def _calcinosis_case(label: str, rng: np.random.Generator) -> _Lesion:
    n = int(rng.integers(2, 6))  # dots along the aortic knob
    params = {
        "angles": rng.uniform(-1.2, 2.2, n).tolist(),
        "r": rng.uniform(0.006, 0.011, n).tolist(),
    }
    return _Lesion(label, "calcinosis", 1, 0.13, -0.33, 0.0, params)


def _pneumothorax_case(label: str, rng: np.random.Generator) -> _Lesion:
    side = int(rng.choice([-1, 1]))
    return _Lesion(
        label, "pneumothorax", side, side * 0.4, -0.5, -0.1, {"rim": rng.uniform(0.05, 0.11)}
    )


def _atelectasis_case(label: str, rng: np.random.Generator) -> _Lesion:
    side, x, y = int(rng.choice([-1, 1])), rng.uniform(0.22, 0.5), rng.uniform(0.12, 0.28)
    params = {"length": rng.uniform(0.18, 0.30), "thick": rng.uniform(0.016, 0.028),
              "angle": rng.uniform(-0.3, 0.3)}  # fmt: skip
    return _Lesion(label, "atelectasis", side, side * x, y, _depth(rng), params)


def _granuloma_case(label: str, rng: np.random.Generator) -> _Lesion:
    n = int(rng.integers(1, 4))
    pts = [(*_lung_point(rng, -0.55, 0.25)[1:], _depth(rng)) for _ in range(n)]
    params = {"pts": pts, "r": rng.uniform(0.009, 0.018, n).tolist()}
    return _Lesion(label, "granuloma", int(np.sign(pts[0][0])), *pts[0], params)


def _round_case(label: str, kind: str, rng: np.random.Generator) -> _Lesion:
    """Nodule (radius 5-15 px at 256 px) or mass (13-22 px)."""
    side, x, y = _lung_point(rng, -0.5, 0.25)
    lo, hi = (0.04, 0.117) if kind == "nodule" else (0.10, 0.17)
    return _Lesion(label, kind, side, x, y, _depth(rng), {"r": rng.uniform(lo, hi)})


def _opacity_case(label: str, rng: np.random.Generator) -> _Lesion:
    side, x, y = _lung_point(rng, -0.5, 0.25)
    params = {"rx": rng.uniform(0.10, 0.18), "ry": rng.uniform(0.08, 0.16),
              "patch": rng.standard_normal((6, 6)).astype(np.float32)}  # fmt: skip
    return _Lesion(label, "opacity", side, x, y, _depth(rng), params)


def _sample_lesion(label: str, kind: str, rng: np.random.Generator) -> _Lesion:
    """Position and shape of one lesion of ``kind``."""
    if kind == "cardiomegaly":  # drawn through the heart width, no own position
        return _Lesion(label, kind, 1, 0.1, 0.3, -0.15)
    if kind in ("nodule", "mass"):
        return _round_case(label, kind, rng)
    samplers = {"effusion": _effusion_case, "calcinosis": _calcinosis_case,
                "pneumothorax": _pneumothorax_case, "atelectasis": _atelectasis_case,
                "granuloma": _granuloma_case, "opacity": _opacity_case}  # fmt: skip
    return samplers[kind](label, rng)


def _sample_case(
    labels: Mapping[str, object], rng: np.random.Generator, config: PhantomConfig
) -> _Case:
    patient = _sample_patient(rng, config)
    lesion_seed, view_seed = (int(s) for s in rng.integers(0, 2**63 - 1, size=2))
    lesions = tuple(
        _sample_lesion(
            name, lesion_kind(name) or "", np.random.default_rng([lesion_seed, stable_seed(name)])
        )
        for name in drawn_labels(labels)
    )
    return _Case(patient, lesions, view_seed)


# ---------------------------------------------------------------------------- geometry helpers
LUNG_CX, LUNG_RX, LUNG_CY, LUNG_RY = 0.40, 0.31, -0.05, 0.68  # frontal lung field, |u| = a
LAT_CX, LAT_RX = 0.05, 0.42  # lateral lung field (u = depth, posterior positive)


def _lung_q(a: Any, v: Any, cx: float = LUNG_CX, rx: float = LUNG_RX, shrink: float = 0.0) -> Any:
    """Normalised radius of the lung field (<1 inside): half-ellipse apex above a vertical wall."""
    dy = np.minimum(v - LUNG_CY - shrink, 0.0) / (LUNG_RY - shrink)
    return np.sqrt(((a - cx) / (rx - shrink)) ** 2 + dy**2)


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


# ---------------------------------------------------------------------------- files
def file_stem(study_id: str) -> str:
    """A file-name-safe form of a study id (a hash suffix keeps altered ids distinct)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", study_id)
    return stem if stem == study_id else f"{stem}-{stable_seed(study_id) % 16**6:06x}"


def image_path(out_dir: Path, study_id: str, view: str) -> Path:
    """``out_dir/images/{study}_{frontal|lateral}.png``."""
    return Path(out_dir) / "images" / f"{file_stem(study_id)}_{_view_name(view)}.png"


def mask_path(out_dir: Path, study_id: str, view: str, label: str) -> Path:
    """``out_dir/masks/{study}_{frontal|lateral}_{label slug}.png`` (binary PNG)."""
    slug = label_column(label)[len(LABEL_PREFIX) :]
    return Path(out_dir) / "masks" / f"{file_stem(study_id)}_{_view_name(view)}_{slug}.png"


def study_rng(config: PhantomConfig, study_id: str) -> np.random.Generator:
    """The random stream of one study (the same for both of its views)."""
    return np.random.default_rng(stable_seed("cxrfuse-phantom", config.seed, study_id))


def encode_png(image: Array, level: int = 1) -> bytes:
    """8-bit greyscale PNG ('Up' filter, run-length deflate): ~3x faster than Pillow's."""
    h, w = image.shape
    rows = np.empty((h, w + 1), np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = image[0]
    rows[1:, 1:] = image[1:] - image[:-1]  # uint8 arithmetic wraps, as PNG expects

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    # run-length deflate: on noisy radiographs as small as the default strategy, twice as fast
    packer = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", packer.compress(rows.tobytes()) + packer.flush())
        + chunk(b"IEND", b"")
    )


def _write_png(array: Array, path: Path, level: int) -> None:
    """Write atomically (temp file renamed into place) so an interrupted run leaves no stubs.

    Images go through :func:`encode_png`; boolean masks are written as 1-bit PNGs.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    if array.dtype == np.bool_:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=max(level, 1))
    else:
        tmp.write_bytes(encode_png(array, level))
    tmp.replace(path)


def _render_study(
    job: tuple[str, dict[str, float], str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], int]:
    """Render and write one study's missing files; return its views and files written."""
    study_id, labels, out, config_dict = job
    config, out_dir = PhantomConfig(**config_dict), Path(out)
    views, written = [], 0
    for view in ["frontal", "lateral"] if config.lateral else ["frontal"]:
        img_file = image_path(out_dir, study_id, view)
        mask_files = {
            name: mask_path(out_dir, study_id, view, name) for name in drawn_labels(labels)
        }
        if not img_file.exists() or not all(f.exists() for f in mask_files.values()):
            image, masks = render_phantom(
                labels, view=view, rng=study_rng(config, study_id), config=config
            )
            for file, array in [(img_file, image), *((mask_files[n], m) for n, m in masks.items())]:
                if not file.exists():
                    _write_png(array, file, config.compress_level)
                    written += 1
        views.append(
            {
                "image_id": f"{study_id}-phantom-{view}",
                "path": str(img_file.resolve()),
                "view": PHANTOM_VIEWS[view],
            }
        )
    return views, written


def _check_config(out_dir: Path, config: PhantomConfig) -> None:
    """Refuse to mix phantoms of different configs in one folder (files would be skipped)."""
    path = out_dir / CONFIG_FILE
    wanted = config.model_dump()
    if path.exists():
        found = json.loads(path.read_text())
        if found != wanted:
            raise DataError(
                f"{out_dir}: holds phantoms made with config {found}, not {wanted}; "
                "use another output folder or delete this one"
            )
    else:
        path.write_text(json.dumps(wanted, indent=2) + "\n")


def make_phantoms(
    manifest: Manifest,
    out_dir: str | Path,
    config: PhantomConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Manifest:
    """Draw phantom images for every study of ``manifest`` and return the phantom manifest.

    Writes ``out_dir/images/{study}_{frontal|lateral}.png``, lesion masks under
    ``out_dir/masks/`` and ``out_dir/manifest.parquet``. Every study (also one without images)
    gets phantom views that replace its own; reports and labels are kept. Files that exist
    are not rewritten, so an interrupted run resumes, and a rerun gives identical bytes.
    """
    config = config or PhantomConfig()
    out_dir = Path(out_dir).resolve()
    for sub in ("images", "masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    jobs = [
        (sid, labels, str(out_dir), config.model_dump()) for sid, labels in _study_labels(manifest)
    ]
    bar = tqdm(total=len(jobs), desc="phantoms", unit="study", disable=not progress)
    results = []
    with bar, _executor(workers) as pool:
        for result in (
            pool.map(_render_study, jobs, chunksize=16) if pool else map(_render_study, jobs)
        ):
            results.append(result)
            bar.update()
    df = manifest.df.copy()
    df["views"] = [views for views, _ in results]
    info = {
        **manifest.info,
        "phantoms": {
            "config": config.model_dump(),
            "out_dir": str(out_dir),
            "synthetic": True,
            "note": SYNTHETIC_NOTE,
            "mask_pattern": "masks/{study}_{frontal|lateral}_{label slug}.png",
        },
    }
    phantom = manifest.replace(df=df, images="phantom", info=info)
    phantom.save(out_dir / "manifest.parquet")
    written = sum(n for _, n in results)
    if progress:
        tqdm.write(f"phantoms: {written} file(s) written, {len(jobs)} studies in {out_dir}")
    return phantom


def _study_labels(manifest: Manifest) -> list[tuple[str, dict[str, float]]]:
    columns = manifest.label_columns
    values = (
        manifest.df[columns].to_numpy(dtype=np.float64) if columns else np.zeros((len(manifest), 0))
    )
    return [
        (str(sid), {name: float(x) for name, x in zip(manifest.labels, row)})
        for sid, row in zip(manifest.df["study_id"], values)
    ]


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _executor(workers: int) -> ProcessPoolExecutor | _NoPool:
    return ProcessPoolExecutor(max_workers=workers) if workers > 1 else _NoPool()
