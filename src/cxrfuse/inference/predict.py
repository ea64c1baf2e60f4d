"""Prediction for new studies: image files and report text through a trained run's own
encoders and head, decoded exactly as the store decodes (one code path for ``cxrfuse
predict``, the server and the Python API)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrfuse.data.images import decode_resized
from cxrfuse.data.mimic_cxr import parse_report_sections
from cxrfuse.inference.runs import LoadedRun, load_run
from cxrfuse.problems import DataError
from cxrfuse.rundir import RunDir
from cxrfuse.text import TextConfig, prepare_text


def image_inputs(run: LoadedRun, images: Sequence[str | Path],
                 weights: str | Path | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The study's view embeddings (frontal first, then lateral), as the head reads them
    (``weights``: an image-encoder weights file the user gives, see LoadedRun.image_encoder)."""
    spec = run.sidecar.image
    assert spec is not None
    if not images:
        raise DataError("this model reads images: pass at least one --image")
    encoder = run.image_encoder(weights=weights)
    size = encoder.spec.input_size
    pixels = []
    for path in images:
        try:
            pixels.append(encoder.preprocess(decode_resized(path, size)))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read the image ({err})") from err
    with torch.inference_mode():
        feats = encoder(torch.stack(pixels)).float()
    n_views, mode = int(spec.n_views), spec.views
    if mode == "frontal":
        feats = feats[:1]
    elif mode == "concat":  # slot 0 frontal, slot 1 lateral: images in that order
        feats = feats[:n_views]
    width = n_views if mode in ("frontal", "concat") else len(feats)
    views = torch.zeros((1, max(width, 1), feats.shape[1]))
    mask = torch.zeros(views.shape[:2], dtype=torch.bool)
    views[0, : len(feats)], mask[0, : len(feats)] = feats, True
    return {"image": views, "image_mask": mask}


def text_inputs(run: LoadedRun, report: str) -> dict[str, torch.Tensor]:
    """The report's embedding: the sections the run reads, masked as in training."""
    spec = run.sidecar.text
    assert spec is not None
    config = TextConfig(**spec.text_config)
    sections = parse_report_sections(report)
    if not any(sections.values()):
        raise DataError("the report has no section headings (INDICATION:, COMPARISON:, "
                        f"FINDINGS:, IMPRESSION:); this model reads {config.sections}")  # fmt: skip
    text = prepare_text(sections, config, spec.mask_labels_for)
    has_text = bool(text.strip())
    vector = run.text_encoder().encode([text]) if has_text else np.zeros((1, spec.dim), np.float32)
    return {"text": torch.as_tensor(np.asarray(vector, dtype=np.float32)),
            "text_mask": torch.tensor([has_text])}  # fmt: skip


def predict(run_dir: str | Path | RunDir, images: Sequence[str | Path] = (),
            report: str | None = None, image_weights: str | Path | None = None,
            ) -> dict[str, float]:  # fmt: skip
    """Probabilities per label for one study: image files (frontal first, then lateral) and
    the report text, embedded with the encoders named in the run's sidecar
    (``image_weights``: a local weights file for a run whose encoder used one)."""
    run = load_run(run_dir)
    inputs: dict[str, torch.Tensor] = {}
    if run.sidecar.image is not None:
        inputs |= image_inputs(run, images, image_weights)
    if run.sidecar.text is not None:
        if report is None:
            raise DataError("this model reads report text: pass --report")
        inputs |= text_inputs(run, report)
    probs = run.predict_proba(inputs)[0]
    return {name: float(p) for name, p in zip(run.labels, probs)}
