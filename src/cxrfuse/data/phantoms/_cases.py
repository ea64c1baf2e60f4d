"""Phantom cases: the draw's config, which label draws which lesion, and the sampled
patient and lesions of one study (all the randomness before any pixel is drawn)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


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


def study_rng(config: PhantomConfig, study_id: str) -> np.random.Generator:
    """The random stream of one study (the same for both of its views)."""
    return np.random.default_rng(stable_seed("cxrfuse-phantom", config.seed, study_id))
