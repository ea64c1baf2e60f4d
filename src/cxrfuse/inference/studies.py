"""What a prediction takes and gives: the views of a study (:class:`StudyImage`), what was
read of each (:class:`ViewRead`), the answer (:class:`Prediction`), and the checks on them
that need no model: view positions a client gives or the upload order implies, blank views,
text length. The model side is :class:`cxrfuse.inference.predict.Predictor`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrfuse.data.images import require_regular_file
from cxrfuse.data.manifest import normalise_view, view_kind
from cxrfuse.problems import DataError
from cxrfuse.vocab import VIEW_POSITIONS

MAX_TEXT_CHARS = 20_000
"""Longest report (or indication, comparison) predicted on: a chest radiograph report is a
few thousand characters at most; a longer text is refused before any text work (a 5 MB one
once ran for minutes in section parsing and masking)."""



@dataclass
class StudyImage:
    """One view of a study: its bytes, a name to report it by, and its view position when
    the caller knows it (else the DICOM header's, else the upload order's: see
    :func:`upload_order_views`)."""

    name: str
    data: bytes
    view: str | None = None

    @classmethod
    def from_path(cls, path: str | Path, view: str | None = None) -> StudyImage:
        path = Path(path)
        require_regular_file(path)
        try:
            return cls(str(path), path.read_bytes(), view)
        except OSError as err:
            raise DataError(f"{path}: cannot read the image ({err.strerror or err})") from err


@dataclass
class ViewRead:
    """What was read of one uploaded view."""

    name: str
    format: str
    width: int
    height: int
    view: str
    view_source: str  # "client", "dicom header", "upload order" or "unknown"
    slot: int | None  # where the head reads it; None when the model ignores it


@dataclass
class Prediction:
    """The answer for one study (JSON-ready with :meth:`to_dict`)."""

    run: str
    labels: list[str]
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    threshold_method: str | None
    decisions: dict[str, bool]
    warnings: list[str]
    views: list[ViewRead] = field(default_factory=list)
    text_sections: list[str] = field(default_factory=list)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    pixels: list[np.ndarray] = field(default_factory=list, repr=False)
    """The model-input pixels (S x S uint8) of the views the head reads, in slot order."""
    verdicts: dict[str, list[str]] = field(default_factory=dict)
    """Per label, the kinds of the run's test-set verdicts (``chance``, ``trivial``, ...):
    a label with ``chance`` or ``trivial`` has decisions no better than a trivial rule."""

    @property
    def blank(self) -> bool:
        """Whether every view the head read is blank (:func:`is_blank`; False with none read)."""
        return bool(self.pixels) and all(is_blank(p) for p in self.pixels)

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (not the model inputs: ``asdict`` would deep-copy every tensor)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("inputs", "pixels")}  # fmt: skip
        out["views"] = [asdict(v) for v in self.views]
        return out


UPLOAD_ORDER = "upload order"
"""The ``view_source`` of a view whose position came from its place among the uploads."""


def client_view(name: str, given: str) -> str:
    """A view position a caller gave, normalised; a spelling cxrfuse does not know is an error
    naming the image (``UNKNOWN`` may be given on purpose)."""
    view = normalise_view(given)
    if view == "UNKNOWN" and given.strip().upper() != "UNKNOWN":
        raise DataError(f"{name}: view {given!r} is not a view position; give one of "
                        f"{', '.join(VIEW_POSITIONS)} (or a spelling such as L, LAT, "
                        "Frontal)")  # fmt: skip
    return view


def upload_order_views(reads: list[ViewRead]) -> list[ViewRead]:
    """Views of unknown position take their place from the upload order: the first becomes
    the frontal view when no view is frontal, the next the lateral when none is lateral
    (``view_source`` ``upload order``); others stay unknown."""
    kinds = {view_kind(r.view) for r in reads}
    free = [k for k in ("frontal", "lateral") if k not in kinds]
    for read in reads:
        if read.view == "UNKNOWN" and read.view_source == "unknown" and free:
            read.view = "FRONTAL" if free.pop(0) == "frontal" else "LATERAL"
            read.view_source = UPLOAD_ORDER
    return reads


def is_blank(pixels: np.ndarray) -> bool:
    """Whether a view's model-input pixels are all one value (a blank, black or white image)."""
    return pixels.size > 0 and int(pixels.min()) == int(pixels.max())


def blank_view_warnings(reads: Sequence[ViewRead], pixels: Sequence[np.ndarray]) -> list[str]:
    """A warning for each view the head reads whose model input is one flat value: the model
    sees no anatomy in it, so its probabilities carry no image evidence. ``pixels`` are in
    slot order (:meth:`Predictor.image_inputs`)."""
    read = sorted((r for r in reads if r.slot is not None), key=lambda r: r.slot)  # type: ignore[arg-type, return-value]
    return [f"{r.name}: blank image (every pixel the model reads is {int(p.flat[0])}): it shows "
            "no anatomy, so the probabilities carry no evidence from it"
            for r, p in zip(read, pixels) if is_blank(p)]  # fmt: skip



def check_text_length(where: str | None = None, **fields: str | None) -> None:
    """A DataError naming the field (or ``where``: the file it came from) when a text is longer
    than :data:`MAX_TEXT_CHARS`."""
    for name, value in fields.items():
        if value is not None and len(value) > MAX_TEXT_CHARS:
            raise DataError(f"{where or name}: {len(value):,} characters, over the limit of "
                            f"{MAX_TEXT_CHARS:,} for a {name} (a chest radiograph report is a few "
                            "thousand); give the study's report alone")  # fmt: skip


def study_text(report: str | None = None, indication: str | None = None,
               comparison: str | None = None) -> str | None:  # fmt: skip
    """One report text with section headings from a full ``report`` and/or the separate
    ``indication`` and ``comparison`` fields (None when all are empty); a field over
    :data:`MAX_TEXT_CHARS` is a DataError naming it."""
    check_text_length(report=report, indication=indication, comparison=comparison)
    parts = [f"{name.upper()}: {value.strip()}"
             for name, value in (("comparison", comparison), ("indication", indication))
             if value and value.strip()]  # fmt: skip
    if report and report.strip():
        parts.append(report.strip())
    return "\n".join(parts) or None

