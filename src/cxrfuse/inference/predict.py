"""Prediction for new studies: image files (PNG, JPEG, DICOM) and report text through a trained
run's own encoders and head, decoded exactly as the store decodes. One code path for
``cxrfuse predict``, the server (:mod:`cxrfuse.serve`) and the Python API:

    from cxrfuse.inference import Predictor, StudyImage

    predictor = Predictor("runs/exp/runs/multimodal-seed0")      # model loaded once
    result = predictor.predict([StudyImage.from_path("f.dcm")], indication="cough")
    result.probabilities, result.thresholds, result.decisions, result.warnings

A :class:`Prediction` carries the probabilities, the run's val-chosen thresholds (0.5 with a
warning when the run was never evaluated), the decisions at them, the views as read (format,
size, view position from the client or the DICOM header) and the warnings a user must read.
The study-side types and checks that need no model (:class:`StudyImage`, :class:`ViewRead`,
:class:`Prediction`, view positions, blank views, text length) are :mod:`cxrfuse.inference.studies`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrfuse.data.images import (
    MAX_PIXELS,
    ImageHeader,
    decode_resized_bytes,
    read_header,
)
from cxrfuse.data.manifest import view_kind
from cxrfuse.data.mimic_cxr import parse_report_sections
from cxrfuse.data.views import view_slots
from cxrfuse.encoders.image import ImageEncoder
from cxrfuse.encoders.text import TextEncoder
from cxrfuse.inference.runs import LoadedRun, load_run
from cxrfuse.inference.studies import (
    MAX_TEXT_CHARS,  # noqa: F401 (re-exported: the package face imports it from here)
    UPLOAD_ORDER,
    Prediction,
    StudyImage,
    ViewRead,
    blank_view_warnings,
    check_text_length,
    client_view,
    study_text,
    upload_order_views,
)
from cxrfuse.problems import ConfigError, CxrfuseError, DataError
from cxrfuse.rundir import RunDir, Verdict
from cxrfuse.text import TextConfig, label_patterns, prepare_text
from cxrfuse.vocab import (
    FRONTAL_VIEWS,
    LATERAL_VIEWS,
    LEAKY_SECTIONS,
    PHANTOM,
    REPORT_SECTIONS,
    VIEW_KINDS,
)

DEFAULT_THRESHOLD = 0.5
MIN_SIDE = 256
"""Views with a shorter side than this (or than the model input) are reported as unusual."""
MAX_ASPECT = 1.6
"""Views longer than this ratio lose much of themselves to the central square crop."""


def run_verdicts(run: RunDir) -> list[Verdict]:
    """The verdicts of the run's evaluation (``metrics.json``); none when it was never
    evaluated or its metrics cannot be read (prediction must not fail on them)."""
    if not run.has_metrics():
        return []
    try:
        return run.metrics().verdicts
    except (CxrfuseError, ValueError):
        return []


def _thresholds(run: LoadedRun) -> tuple[dict[str, float], str | None, list[str]]:
    chosen = dict(run.sidecar.thresholds)
    missing = [label for label in run.labels if label not in chosen]
    warnings = []
    if missing:
        warnings.append(f"no val-chosen threshold for {', '.join(missing)} (the run was never "
                        f"evaluated: `cxrfuse evaluate {run.run.name}`); deciding at "
                        f"{DEFAULT_THRESHOLD}")  # fmt: skip
    thresholds = {label: float(chosen.get(label, DEFAULT_THRESHOLD)) for label in run.labels}
    method = run.sidecar.threshold_method if not missing else None
    return thresholds, method, warnings


class Predictor:
    """A run loaded once (head, encoders, thresholds) that predicts study after study."""

    def __init__(self, run_dir: str | Path | RunDir | LoadedRun, device: str = "cpu",
                 image_weights: str | Path | None = None, backend: str = "torch") -> None:  # fmt: skip
        """``image_weights``: a local image-encoder weights file, for a run trained with one
        (a run directory never makes cxrfuse read a file outside it). ``backend``: ``torch``
        or ``onnxruntime`` (the run's ``model.onnx`` runs image encoder + head)."""
        self.run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
        self.device = device
        self.backend = None
        if backend != "torch":
            from cxrfuse.inference.onnx_backend import BACKENDS, OnnxBackend

            if backend not in BACKENDS:
                raise ConfigError(f"--backend {backend!r}: give one of {', '.join(BACKENDS)}")
            self.backend = OnnxBackend(self.run.run_dir)
        self.image_encoder: ImageEncoder | None = None
        self.text_encoder: TextEncoder | None = None
        if self.run.sidecar.image is not None:
            self.image_encoder = self.run.image_encoder(device=device, weights=image_weights).eval()
        if self.run.sidecar.text is not None:
            self.text_encoder = self.run.text_encoder()
            self.text_config = TextConfig(**self.run.sidecar.text.text_config)
        self.thresholds, self.threshold_method, self._threshold_warnings = _thresholds(self.run)
        self.verdicts = run_verdicts(self.run.run)

    @property
    def labels(self) -> list[str]:
        return self.run.labels

    @property
    def reads_images(self) -> bool:
        return self.image_encoder is not None

    @property
    def text_sections(self) -> list[str]:
        """The report sections the model reads (empty for an image-only model)."""
        return list(self.text_config.sections) if self.text_encoder is not None else []

    # ------------------------------------------------------------------ warnings
    def standing_warnings(self) -> list[str]:
        """Warnings that hold for every prediction of this run."""
        out = []
        if self.run.info.images == PHANTOM:
            out.append("this model was trained on synthetic phantom images, not radiographs: "
                       "its outputs say nothing about real patients")  # fmt: skip
        leaky = [s for s in self.text_sections if s in LEAKY_SECTIONS]
        if leaky:
            out.append(f"this model reads the report's {' and '.join(s.upper() for s in leaky)}, "
                       "the text its labels were derived from: its output restates the report "
                       "rather than reading the image (label leakage)")  # fmt: skip
        for v in self.verdicts:
            out.append(f"test-set verdict ({v.kind}): {v.message}")
        return out + self._threshold_warnings

    def label_verdicts(self) -> dict[str, list[str]]:
        """Per label, the kinds of its test-set verdicts (a model-wide verdict counts for every
        label)."""
        return {label: list(dict.fromkeys(v.kind for v in self.verdicts
                                          if v.label in (label, None)))
                for label in self.labels}  # fmt: skip

    def _text_warnings(self, text: str | None) -> tuple[list[str], dict[str, str | None]]:
        sections = parse_report_sections(text) if text else dict.fromkeys(REPORT_SECTIONS)
        given = [s for s in REPORT_SECTIONS if sections.get(s)]
        wanted = self.text_sections
        out = []
        if not wanted:
            if given:
                out.append("this model reads images only: the text given was ignored")
            return out, sections
        if not given and text:
            out.append(f"the text given has no section headings (INDICATION:, FINDINGS:, ...): "
                       f"nothing of it was read; this model reads {', '.join(wanted)}")  # fmt: skip
        elif not given:
            out.append(f"no report text given; this model reads {', '.join(wanted)} and "
                       "predicted as for a study without a report")  # fmt: skip
        elif not set(given) & set(wanted):
            out.append(f"the text given has {', '.join(given)} but this model was trained on "
                       f"{', '.join(wanted)}: it read an empty report")  # fmt: skip
        elif set(given) - set(wanted):
            ignored = [s for s in given if s not in wanted]
            out.append(f"section(s) {', '.join(ignored)} ignored: this model was trained on "
                       f"{', '.join(wanted)} only")  # fmt: skip
        named = []
        for label, pattern in label_patterns(self.labels).items():
            hits = [m.group(0) for s in wanted for m in pattern.finditer(sections[s] or "")]
            if hits:
                named.append(f"{label}: {', '.join(repr(h) for h in dict.fromkeys(hits))}")
        if named:
            masked = self.text_config.mask_labels and self.run.sidecar.text.mask_labels_for
            how = ("masked before the model reads it, as in training" if masked
                   else "the model reads it unmasked")  # fmt: skip
            out.append(f"the text the model reads names a finding ({'; '.join(named)}): "
                       f"a diagnosis model must not be given findings ({how})")  # fmt: skip
        return out, sections

    def _image_warnings(self, header: ImageHeader, name: str, view: str) -> list[str]:
        out = []
        size = self.image_encoder.spec.input_size if self.image_encoder else 0
        short, long = sorted((header.width, header.height))
        if short < size:
            out.append(f"{name}: {header.width}x{header.height} px is smaller than the "
                       f"{size}-px model input (upsampled)")  # fmt: skip
        elif short < MIN_SIDE:
            out.append(f"{name}: {header.width}x{header.height} px is small for a chest "
                       "radiograph (they are usually 1,000-3,000 px a side)")  # fmt: skip
        fit = self.run.sidecar.image.fit if self.run.sidecar.image else "pad"
        if long > MAX_ASPECT * short and fit == "crop":
            lost = 1 - short / long
            out.append(f"{name}: aspect ratio {long / short:.2f}; the central square crop drops "
                       f"{lost:.0%} of the image")  # fmt: skip
        if view not in FRONTAL_VIEWS | LATERAL_VIEWS:
            out.append(f"{name}: unknown view position (give it, e.g. PA or LATERAL); the "
                       f"model was trained on {self.training_views_text()}")  # fmt: skip
        if header.frames > 1:
            out.append(f"{name}: {header.frames} frames; only the first was read")
        return out

    @property
    def training_views(self) -> dict[str, int] | None:
        """The view kinds the run's training read (run.json ``views.train``); None for a run
        that did not record them (an earlier version): unknown, not guessed."""
        return self.run.info.views.get("train") or None

    def training_views_text(self) -> str:
        """The run's training views in words: ``frontal views only (250 frontal)``."""
        counts = self.training_views
        if counts is None:
            return "views this run did not record (trained by an earlier cxrfuse)"
        seen = [k for k in VIEW_KINDS if counts.get(k)]
        numbers = ", ".join(f"{counts[k]} {k}" for k in seen)
        if not seen:
            return "no view at all"
        if seen == ["unknown"]:
            return f"views of unknown position only ({numbers})"
        kinds = " and ".join(k for k in seen if k != "unknown")
        only = " only" if len(seen) == 1 else ""
        return f"{kinds} views{only} ({numbers})"

    def _view_kind_warnings(self, reads: Sequence[ViewRead]) -> list[str]:
        """A warning for each view read whose kind the run never read in training (none when
        training read views of unknown position: the kind may be among them)."""
        counts = self.training_views
        if counts is None or counts.get("unknown"):
            return []
        out = []
        for read in reads:
            kind = view_kind(read.view)
            if read.slot is not None and kind != "unknown" and not counts.get(kind):
                out.append(f"{read.name}: a {kind} view ({read.view}, {read.view_source}), "
                           f"but this model was trained on {self.training_views_text()}: it "
                           f"never saw a {kind} view, its output on this one is untested")  # fmt: skip
        return out

    # ------------------------------------------------------------------ inputs
    def read_views(self, images: Sequence[StudyImage]) -> tuple[list[ViewRead], list[ImageHeader]]:
        """Headers and view positions of the study's images (no pixel decoded yet); a bad
        file raises a DataError naming it."""
        reads, headers = [], []
        for image in images:
            try:
                header = read_header(image.data)
            except ValueError as err:
                raise DataError(f"{image.name}: {err}") from err
            if header.pixels > MAX_PIXELS:
                raise DataError(f"{image.name}: {header.width}x{header.height}x{header.frames} "
                                f"pixels exceed the limit of {MAX_PIXELS:,} (refused "
                                "unread)")  # fmt: skip
            if image.view:
                view, source = client_view(image.name, image.view), "client"
            elif header.view:
                view, source = header.view, "dicom header"
            else:
                view, source = "UNKNOWN", "unknown"
            reads.append(ViewRead(image.name, header.format, header.width, header.height, view,
                                  source, None))  # fmt: skip
            headers.append(header)
        return upload_order_views(reads), headers

    def slots(self, reads: Sequence[ViewRead]) -> list[tuple[int, int]]:
        """(index into ``reads``, head slot) of the views the head reads, in slot order: the
        layout training used (:func:`cxrfuse.data.views.view_slots` over the views' positions,
        in upload order). ``frontal`` reads the first frontal view, ``concat`` the first
        frontal and the first lateral, ``mean`` / ``attention`` every view; no view of another
        position stands in for a missing one (its slot stays empty: zeros, mask False)."""
        spec = self.run.sidecar.image
        assert spec is not None
        layout = view_slots([r.view for r in reads], spec.views)
        return [(index, slot) for slot, index in enumerate(layout) if index is not None]

    def empty_slots(self, reads: Sequence[ViewRead]) -> list[str]:
        """The view kinds whose fixed slot (``frontal`` / ``concat`` fusion) no view fills."""
        spec = self.run.sidecar.image
        assert spec is not None
        if spec.views not in ("frontal", "concat"):
            return []
        layout = view_slots([r.view for r in reads], spec.views)
        return [kind for kind, index in zip(("frontal", "lateral"), layout) if index is None]

    def image_inputs(self, images: Sequence[StudyImage], reads: list[ViewRead]
                     ) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:  # fmt: skip
        """The study's view embeddings in the head's slots, and the model-input pixels (in
        slot order)."""
        assert self.image_encoder is not None
        spec = self.run.sidecar.image
        assert spec is not None
        size = self.image_encoder.spec.input_size
        chosen = self.slots(reads)
        pixels = []
        for index, slot in chosen:
            reads[index].slot = slot
            try:
                pixels.append(decode_resized_bytes(images[index].data, size, spec.fit))
            except (OSError, ValueError) as err:
                raise DataError(f"{images[index].name}: cannot read the image ({err})") from err
        width = int(spec.n_views) if spec.views in ("frontal", "concat") else len(pixels)
        slots = [slot for _, slot in chosen]
        inputs = [self.image_encoder.preprocess(p) for p in pixels]  # each view once
        if self.backend is not None:  # image encoder + head run together in predict()
            shape = (inputs[0] if inputs else self.image_encoder.preprocess(
                np.zeros((size, size), dtype=np.uint8))).shape  # fmt: skip
            return _in_slots("pixels", slots, inputs, width, tuple(shape)), pixels
        feats: Sequence[torch.Tensor] = []
        if inputs:  # no view fills a slot: the head reads zeros, as training gave such a study
            with torch.inference_mode():
                feats = self.image_encoder(torch.stack(inputs).to(self.device)).float().cpu()
        return _in_slots("image", slots, feats, width, (self.image_encoder.feature_dim,)), pixels

    def text_inputs(self, sections: Mapping[str, str | None]) -> dict[str, torch.Tensor]:
        """The report's embedding: the sections the run reads, masked as in training."""
        spec = self.run.sidecar.text
        assert spec is not None and self.text_encoder is not None
        text = prepare_text(sections, self.text_config, spec.mask_labels_for)
        has_text = bool(text.strip())
        vector = (self.text_encoder.encode([text]) if has_text
                  else np.zeros((1, spec.dim), np.float32))  # fmt: skip
        return {"text": torch.as_tensor(np.asarray(vector, dtype=np.float32)),
                "text_mask": torch.tensor([has_text])}  # fmt: skip

    # ------------------------------------------------------------------ predict
    def predict(self, images: Sequence[StudyImage | str | Path] = (), *,
                report: str | None = None, indication: str | None = None,
                comparison: str | None = None, views: Sequence[str | None] | None = None
                ) -> Prediction:  # fmt: skip
        """Probabilities, thresholds, decisions and warnings for one study: its images
        (frontal first, then lateral, unless ``views`` or DICOM headers say which is which)
        and its text (a full ``report`` with headings, or ``indication`` / ``comparison``)."""
        check_text_length(report=report, indication=indication, comparison=comparison)  # first
        study = [im if isinstance(im, StudyImage) else StudyImage.from_path(im) for im in images]
        if views is not None:
            if len(views) != len(study):
                raise DataError(f"{len(views)} view(s) given for {len(study)} image(s); give "
                                "one view per image (or none)")  # fmt: skip
            study = [replace(image, view=view or image.view) for image, view in zip(study, views)]
        warnings = self.standing_warnings()
        inputs: dict[str, torch.Tensor] = {}
        reads: list[ViewRead] = []
        pixels: list[np.ndarray] = []
        if self.reads_images:
            if not study:
                raise DataError("this model reads images: give at least one image")
            reads, headers = self.read_views(study)
            image_inputs, pixels = self.image_inputs(study, reads)
            inputs |= image_inputs
            for read, header in zip(reads, headers):
                warnings += self._image_warnings(header, read.name, read.view)
                if read.slot is None:
                    warnings.append(f"{read.name}: not read ({self.run.sidecar.image.views} "
                                    "view fusion reads "
                                    f"{len([r for r in reads if r.slot is not None])} "
                                    "view(s))")  # fmt: skip
            warnings += [f"{r.name}: no view position given or in a DICOM header; taken as "
                         f"{r.view.lower()} from the upload order (frontal first, then lateral): "
                         "give the views to be sure" for r in reads if r.view_source == UPLOAD_ORDER]
            warnings += self._view_kind_warnings(reads)
            warnings += blank_view_warnings(reads, pixels)
            for kind in self.empty_slots(reads):
                warnings.append(f"no {kind} view given: the {kind} slot of this model "
                                f"({self.run.sidecar.image.views} view fusion) is left empty "
                                "(zeros), as training left it for a study without one")  # fmt: skip
        elif study:
            warnings.append("this model reads report text only: the images were ignored")
        text = study_text(report, indication, comparison)
        text_warnings, sections = self._text_warnings(text)
        warnings += text_warnings
        if self.text_encoder is not None:
            if not self.reads_images and not any(sections.get(s) for s in self.text_sections):
                raise DataError(f"this model reads report text only ({', '.join(self.text_sections)}) "
                                "and the text given has none of it: give the report with "
                                "section headings, or its sections")  # fmt: skip
            inputs |= self.text_inputs(sections)
        if self.backend is not None:
            probs, views = self.backend.run(inputs)
            probs = probs[0]
            if inputs.pop("pixels", None) is not None:
                inputs["image"] = torch.as_tensor(views)
        else:
            probs = self.run.predict_proba(inputs)[0]
        probabilities = {name: float(p) for name, p in zip(self.labels, probs)}
        decisions = {name: bool(probabilities[name] >= self.thresholds[name])
                     for name in self.labels}  # fmt: skip
        return Prediction(self.run.run.name, self.labels, probabilities, dict(self.thresholds),
                          self.threshold_method, decisions, warnings, reads,
                          [s for s in self.text_sections if sections.get(s)], inputs,
                          pixels, self.label_verdicts())  # fmt: skip


def predict(run_dir: str | Path | RunDir, images: Sequence[str | Path | StudyImage] = (),
            report: str | None = None, image_weights: str | Path | None = None,
            **kwargs: Any) -> Prediction:  # fmt: skip
    """One study's :class:`Prediction` (loads the run each call: use :class:`Predictor` for
    many studies). ``kwargs``: ``indication``, ``comparison``, ``views``."""
    return Predictor(run_dir, image_weights=image_weights).predict(images, report=report, **kwargs)


def _in_slots(name: str, slots: Sequence[int], items: Sequence[torch.Tensor], width: int,
              shape: tuple[int, ...]) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{name: (1, width, *shape), "image_mask": (1, width)}``: each item in its slot, zeros
    and mask False in a slot no view fills."""
    values = torch.zeros((1, max(width, 1), *shape))
    mask = torch.zeros(values.shape[:2], dtype=torch.bool)
    for slot, item in zip(slots, items):
        values[0, slot], mask[0, slot] = item, True
    return {name: values, "image_mask": mask}
