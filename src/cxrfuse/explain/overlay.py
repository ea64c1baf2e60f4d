"""Drawing class activation maps: back onto the original view, side by side with it, as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw
from pytorch_grad_cam.utils.image import show_cam_on_image


def cam_to_original(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A square CAM of the model input back on an HxW original.

    The encoders' preprocessing takes the central square of the image and resizes it; the map
    is resized to that square and placed there, zero on the cropped-off margins.
    """
    height, width = shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    out = np.zeros((height, width), dtype=np.float32)
    out[top : top + side, left : left + side] = cv2.resize(
        cam.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR
    )
    return out


def overlay_panel(
    original: np.ndarray, cam: np.ndarray, caption: str = "", max_side: int = 512
) -> np.ndarray:
    """RGB uint8 panel: the view (left), the map blended over it (right), a caption strip below.

    ``original`` is HxW in [0, 1]; ``cam`` is the model-input map (any square size).
    Large views are shrunk so that their longer side is ``max_side``.
    """
    scale = min(1.0, max_side / max(original.shape))
    if scale < 1.0:
        size = (round(original.shape[1] * scale), round(original.shape[0] * scale))
        original = cv2.resize(original, size, interpolation=cv2.INTER_AREA)
    heat = cam_to_original(cam, original.shape[:2])
    rgb = np.repeat(original[..., None], 3, axis=2).astype(np.float32)
    blended = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.55)
    gap = np.full((rgb.shape[0], 4, 3), 255, dtype=np.uint8)
    panel = np.concatenate([(rgb * 255).round().astype(np.uint8), gap, blended], axis=1)
    if caption:
        strip = Image.new("RGB", (panel.shape[1], 18), "white")
        ImageDraw.Draw(strip).text((4, 3), caption, fill="black")
        panel = np.concatenate([panel, np.asarray(strip)], axis=0)
    return panel


def overlay_png(original: np.ndarray, cam: np.ndarray, caption: str = "", max_side: int = 512
                ) -> bytes:  # fmt: skip
    """:func:`overlay_panel` encoded as PNG bytes (nothing written to disk)."""
    buffer = io.BytesIO()
    Image.fromarray(overlay_panel(original, cam, caption, max_side)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_overlay(
    path: str | Path, original: np.ndarray, cam: np.ndarray, caption: str = "", max_side: int = 512
) -> Path:
    """Write :func:`overlay_panel` as a PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay_panel(original, cam, caption, max_side)).save(path, optimize=True)
    return path
