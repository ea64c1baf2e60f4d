"""Drawing class activation maps: back onto the original view, side by side with it, as PNG.

The colour scale is fixed, never stretched per image: a map's raw values (the ReLU'd CAM
before pytorch-grad-cam's per-image min-max scaling) are divided by a ``scale`` (a run-level
constant, :meth:`cxrfuse.explain.Explainer.calibrate`, or, when none is known, the map's own
maximum, which the colour bar then says) and clipped to [0, 1]; a colour bar with the raw
values at its ends sits beside every map. A map that is empty or flat (:func:`map_note`) is not
drawn: the panel says so instead. The region of the original the model saw (the central
square of a ``crop`` fit) is outlined; the margins it never saw get no colour.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cxrfuse.data.images import LEGACY_FIT, SquareRegion, square_region

EMPTY_EPS = 1e-8
"""A raw map whose maximum is below this is empty (no location raises the score)."""
FLAT_RANGE = 0.05
"""A raw map whose spread (max - min) is below this fraction of its maximum is flat."""
FAINT = 0.02
"""A raw map whose maximum is below this fraction of the run-level scale is too faint to show."""
NOT_SHOWN = "the model's output does not depend on this image region in a way {method} can show"
FLAT_NOTE = "the map is flat: " + NOT_SHOWN
IMAGE_WEIGHT = 0.55
BAR_WIDTH = 14
LINE_HEIGHT = 13


def map_note(raw: np.ndarray, scale: float | None = None, method: str = "Grad-CAM") -> str | None:
    """Why a raw (ReLU'd, not min-max scaled) map must not be shown as a result, or None.

    Empty (maximum ~ 0), flat (spread under :data:`FLAT_RANGE` of the maximum) or, against a
    run-level ``scale``, too faint (maximum under :data:`FAINT` of it)."""
    top = float(np.max(raw)) if raw.size else 0.0
    if not np.isfinite(top):
        return f"the map is not finite: {method} failed numerically on this image"
    if top < EMPTY_EPS:
        return "the map is empty (zero everywhere): " + NOT_SHOWN.format(method=method)
    if float(np.max(raw) - np.min(raw)) < FLAT_RANGE * top:
        return FLAT_NOTE.format(method=method)
    if scale is not None and scale > 0 and top < FAINT * scale:
        return (f"the map is flat: its maximum {top:.2g} is under {FAINT:.0%} of the run-level "
                f"scale {scale:.2g}: " + NOT_SHOWN.format(method=method))  # fmt: skip
    return None


def cam_to_original(
    cam: np.ndarray, shape: tuple[int, int], region: SquareRegion | None = None
) -> np.ndarray:
    """A square CAM of the model input back on an HxW original.

    ``region`` (:func:`cxrfuse.data.images.square_region`, the legacy central-square crop by
    default) is where the model's square lies on the original; the map is stretched over it,
    zero outside it (margins the crop dropped; the pad's bars fall outside the image)."""
    import cv2

    height, width = shape
    region = region or square_region(width, height, LEGACY_FIT)
    cam = np.asarray(cam, dtype=np.float32)
    k = region.side / cam.shape[1]
    matrix = np.array([[k, 0.0, region.left + 0.5 * k - 0.5],
                       [0.0, k, region.top + 0.5 * k - 0.5]], dtype=np.float64)  # fmt: skip
    heat = cv2.warpAffine(cam, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    heat[~_seen_mask((height, width), region)] = 0.0
    return heat


def _seen_mask(shape: tuple[int, int], region: SquareRegion) -> np.ndarray:
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    top, left = max(0, round(region.top)), max(0, round(region.left))
    bottom = min(height, round(region.top + region.side))
    right = min(width, round(region.left + region.side))
    mask[top:bottom, left:right] = True
    return mask


MIN_PANEL_SIDE = 192
"""Views smaller than this (pixels, longer side) are enlarged for drawing."""
CHAR_WIDTH = 7
"""Pixels a caption character may take in PIL's default font (wrapping never cuts a line)."""


def colour(values: np.ndarray) -> np.ndarray:
    """RGB float in [0, 1] of values in [0, 1] (the jet colour map, as pytorch-grad-cam)."""
    import cv2

    index = np.uint8(np.round(255 * np.clip(values, 0.0, 1.0)))
    return cv2.cvtColor(cv2.applyColorMap(index, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB) / 255.0


def colour_bar(height: int, low: str, high: str) -> np.ndarray:
    """A vertical jet bar (top = high) with the raw values at its ends, RGB uint8."""
    bar_h = max(height - 2 * LINE_HEIGHT, 8)
    ramp = np.linspace(1.0, 0.0, bar_h, dtype=np.float32)[:, None].repeat(BAR_WIDTH, axis=1)
    width = max(BAR_WIDTH + 4, 7 * max(len(low), len(high)) + 4)
    strip = Image.new("RGB", (width, height), "white")
    strip.paste(Image.fromarray(np.uint8(np.round(colour(ramp) * 255))), (2, LINE_HEIGHT))
    draw = ImageDraw.Draw(strip)
    draw.text((2, 0), high, fill="black")
    draw.text((2, LINE_HEIGHT + bar_h), low, fill="black")
    return np.asarray(strip)


@dataclass
class MapDrawing:
    """How to draw one map: its raw values, the fixed scale and what to say beneath it."""

    raw: np.ndarray  # (S, S) ReLU'd CAM at the model input, not min-max scaled
    scale: float | None = None  # run-level; None: the map's own maximum (said on the bar)
    note: str | None = None  # a flat/empty map: the note is shown instead of the map
    fit: str = LEGACY_FIT


def overlay_panel(
    original: np.ndarray,
    cam: np.ndarray | MapDrawing,
    caption: str | Sequence[str] = "",
    max_side: int = 512,
) -> np.ndarray:
    """RGB uint8 panel: the view (left; the region the model saw outlined when it is not the
    whole view), the map blended over it on a fixed scale (right) with its colour bar, and
    the caption lines below.

    ``original`` is HxW (any float range: clipped to [0, 1]); ``cam`` is the model-input map
    (any square size): a :class:`MapDrawing`, or an array already in [0, 1] (shown as it is,
    the bar running 0 to 1). Large views are shrunk so that their longer side is ``max_side``.
    """
    import cv2

    drawing = cam if isinstance(cam, MapDrawing) else MapDrawing(np.asarray(cam), scale=1.0)
    original = np.asarray(original, dtype=np.float32)
    full_h, full_w = original.shape[:2]
    region = square_region(full_w, full_h, drawing.fit)
    # large views shrink to max_side; small ones (phantoms, thumbnails) grow to MIN_PANEL_SIDE
    # so that the caption under them fits and stays legible
    scale = min(max(1.0, MIN_PANEL_SIDE / max(original.shape)), max_side / max(original.shape))
    if scale != 1.0:
        size = (round(original.shape[1] * scale), round(original.shape[0] * scale))
        original = cv2.resize(original, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    original = np.clip(original, 0.0, 1.0)  # resampling overshoots 1.0 by an ulp near white
    height, width = original.shape[:2]
    k = width / full_w
    shown = SquareRegion(region.left * k, region.top * k, region.side * k, region.fit)
    raw = np.maximum(np.asarray(drawing.raw, dtype=np.float32), 0.0)
    top = drawing.scale if drawing.scale else float(raw.max()) if raw.size else 0.0
    rgb = np.repeat(original[..., None], 3, axis=2)
    left_panel = rgb.copy()
    seen = _seen_mask((height, width), shown)
    if not seen.all():
        outline = np.uint8(seen) * 255
        edges = cv2.morphologyEx(outline, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        left_panel[edges & seen] = (0.1, 0.9, 0.2)
    if drawing.note is None and top > 0:
        heat = cam_to_original(raw / top, (height, width), shown)
        blended = IMAGE_WEIGHT * rgb + (1 - IMAGE_WEIGHT) * colour(heat)
        blended[~seen] = rgb[~seen]
        bar = colour_bar(height, "0", f"{top:.3g}")
    else:
        blended = 0.35 * rgb + 0.65  # washed out: no map is shown
        bar = np.full((height, BAR_WIDTH + 4, 3), 255, dtype=np.uint8)
    right = Image.fromarray(np.uint8(np.round(np.clip(blended, 0, 1) * 255)))
    if drawing.note is not None or top <= 0:
        ImageDraw.Draw(right).text((4, 4), "no map", fill=(160, 20, 20))
    gap = np.full((height, 4, 3), 255, dtype=np.uint8)
    panel = np.concatenate([np.uint8(np.round(left_panel * 255)), gap, np.asarray(right), bar],
                           axis=1)  # fmt: skip
    lines = [caption] if isinstance(caption, str) else list(caption)
    if drawing.note:
        lines.append(f"NO MAP: {drawing.note}")
    if not seen.all():
        lines.append("green outline: the central square the model saw (crop fit); the rest "
                     "was cut off before the model")  # fmt: skip
    wrapped = [w for line in lines if line for w in textwrap.wrap(line, max(
        24, (panel.shape[1] - 8) // CHAR_WIDTH))]  # fmt: skip
    if wrapped:
        strip = Image.new("RGB", (panel.shape[1], LINE_HEIGHT * len(wrapped) + 5), "white")
        draw = ImageDraw.Draw(strip)
        for i, line in enumerate(wrapped):
            draw.text((4, 3 + LINE_HEIGHT * i), line, fill="black")
        panel = np.concatenate([panel, np.asarray(strip)], axis=0)
    return panel


def overlay_png(original: np.ndarray, cam: np.ndarray | MapDrawing,
                caption: str | Sequence[str] = "", max_side: int = 512) -> bytes:  # fmt: skip
    """:func:`overlay_panel` encoded as PNG bytes (nothing written to disk)."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_panel(original, cam, caption, max_side)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_overlay(
    path: str | Path,
    original: np.ndarray,
    cam: np.ndarray | MapDrawing,
    caption: str | Sequence[str] = "",
    max_side: int = 512,
) -> Path:
    """Write :func:`overlay_panel` as a PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_panel(original, cam, caption, max_side)).save(path, optimize=True)
    return path
