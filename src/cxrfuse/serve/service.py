"""What the server does with a study, as a Python API: the run's :class:`Predictor` (loaded
once), and on request Grad-CAM overlays per view and label (:class:`cxrfuse.explain.Explainer`),
the image vs report attribution of each label (exact two-player Shapley values,
:func:`cxrfuse.explain.modality_attribution`) and a draft report (:mod:`cxrfuse.serve.draft`).

    from cxrfuse.serve import Service
    from cxrfuse.inference import StudyImage

    service = Service("runs/exp/runs/multimodal-seed0")
    answer = service.analyse([StudyImage.from_path("f.dcm")], indication="cough", explain=True)
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from cxrfuse.data.images import gray8_bytes
from cxrfuse.explain import Explainer, ModalityInputs, ModalityMeans, modality_attribution
from cxrfuse.explain.explainer import CaptionFacts, ViewInput
from cxrfuse.explain.overlay import overlay_png
from cxrfuse.explain.runs import caption_facts, untrained_view_note
from cxrfuse.inference import Prediction, Predictor, StudyImage
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import RunDir
from cxrfuse.serve.draft import Drafter
from cxrfuse.vocab import PHANTOM

UPLOAD_ID = "upload"
log = logging.getLogger("cxrfuse.serve")


def failure(what: str, err: BaseException) -> str:
    """The warning (and log line) of an optional part of an answer that failed: its exception
    type and message, so that neither the client nor the operator is left with a type alone."""
    message = f"{what} failed ({type(err).__name__}: {err}); the probabilities above are unaffected"
    log.warning("%s", message)
    log.debug("%s: traceback", what, exc_info=err)  # the traceback only at debug level
    return message


NO_SKILL_KINDS = ("chance", "trivial")
"""Verdicts after which the page shows a label's probability without a positive/negative call."""


def cxrfuse_version() -> str:
    try:
        return version("cxrfuse")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "unknown"


class Service:
    """A run opened once for serving; :meth:`analyse` is thread-safe (one study at a time)."""

    def __init__(self, run_dir: str | Path, device: str = "cpu",
                 predictor: Predictor | None = None, backend: str = "torch") -> None:  # fmt: skip
        """``predictor``: one already loaded (e.g. with user-given image weights); ``backend``:
        torch or onnxruntime (the run's model.onnx)."""
        self.predictor = predictor or Predictor(run_dir, device=device, backend=backend)
        self.run = self.predictor.run
        self.device = device
        self._lock = threading.Lock()
        self._means: ModalityMeans | None = None
        self._means_note: str | None = None
        self._drafter: Drafter | None = None
        self._draft_note: str | None = None
        self._draft_loaded = False
        self._scales: dict[str, float] | None = None
        self._scales_note: str | None = None
        self._facts: CaptionFacts | None = None
        self.card = model_card(self)
        self.card["backend"] = "torch" if self.predictor.backend is None else "onnxruntime"

    @property
    def fused(self) -> bool:
        return self.predictor.reads_images and bool(self.predictor.text_sections)

    # ------------------------------------------------------------------ lazily loaded helpers
    def _training_means(self) -> ModalityMeans | None:
        if self._means is None and self._means_note is None:
            try:
                self._means = ModalityMeans.of_run_arrays(self.run.arrays())
            except (CxrfuseError, OSError, KeyError, TypeError) as err:
                self._means_note = (f"training means unavailable ({err}); a removed modality "
                                    "is treated as missing (zeros)")  # fmt: skip
        return self._means

    def drafter(self) -> tuple[Drafter | None, str | None]:
        if not self._draft_loaded:
            try:
                self._drafter, self._draft_note = Drafter.from_run(self.run)
            except (CxrfuseError, OSError) as err:
                self._drafter, self._draft_note = None, f"the stored generator cannot be used ({err})"
            self._draft_loaded = True
        return self._drafter, self._draft_note

    def caption_facts(self) -> CaptionFacts:
        if self._facts is None:
            self._facts = caption_facts(self.run)
        return self._facts

    def colour_scales(self, method: str = "gradcam") -> tuple[dict[str, float], str | None]:
        """The run-level colour scale of each label (:meth:`Explainer.calibrate` on the run's
        val images, once), and a note when there is none (images or stores unreadable here)."""
        if self._scales is None:
            self._scales = {}
            encoder = self.predictor.image_encoder
            try:
                texts = {}
                if self.run.sidecar.text is not None:
                    arrays = self.run.arrays()
                    texts = {str(sid): (vec, bool(present)) for sid, vec, present
                             in zip(arrays.study_ids, arrays.text, arrays.text_mask)}  # fmt: skip
                assert encoder is not None and self.run.sidecar.image is not None
                explainer = Explainer(encoder, self.run.head, self.predictor.labels,
                                      output=self.run.output, texts=texts, device=self.device,
                                      fit=self.run.sidecar.image.fit)  # fmt: skip
                try:
                    self._scales = explainer.calibrate(self.run.manifest(), method=method)
                finally:
                    self.run.head.to("cpu")
            except Exception as err:  # noqa: BLE001 - the maps are drawn on their own maximum
                log.warning("no run-level colour scale (%s: %s)", type(err).__name__, err)
                self._scales_note = f"{type(err).__name__}: {err}"
            if not self._scales and self._scales_note is None:
                self._scales_note = "no readable val image of the run"
        note = None
        if self._scales_note:
            note = (f"no run-level colour scale ({self._scales_note}): each map is drawn on its "
                    "own maximum, given on its colour bar; compare maps by that number")  # fmt: skip
        return self._scales, note

    # ------------------------------------------------------------------ analyses
    def attribution(self, prediction: Prediction) -> dict[str, Any]:
        """Per label: the image and report shares of the prediction (|Shapley| shares)."""
        if not self.fused:
            only = "image" if self.predictor.reads_images else "text"
            return {"removal": None, "note": f"this model reads {only} only",
                    "labels": {label: {f"{only}_share": 1.0} for label in self.predictor.labels}}
        means = self._training_means()
        removal = "mean" if means is not None else "zeros"
        inputs = ModalityInputs(**{k: v.numpy() for k, v in prediction.inputs.items()})
        table = modality_attribution(self.run.head, inputs, self.predictor.labels,
                                     output=self.run.output, removal=removal, means=means)  # fmt: skip
        out: dict[str, Any] = {}
        for row in table.to_dict("records"):
            image, text = abs(row["shapley_image"]), abs(row["shapley_text"])
            total = image + text
            out[row["label"]] = {
                "image_share": image / total if total > 0 else None,
                "text_share": text / total if total > 0 else None,
                "shapley_image": float(row["shapley_image"]),
                "shapley_text": float(row["shapley_text"]),
                "p_without_image": float(row["p_without_image"]),
                "p_without_text": float(row["p_without_text"]),
            }
        note = ("a removed modality is replaced by its training-set mean" if removal == "mean"
                else self._means_note)  # fmt: skip
        return {"removal": removal, "note": note, "labels": out}

    def overlays(self, prediction: Prediction, images: Sequence[StudyImage],
                 labels: Sequence[str] | None = None, warnings: list[str] | None = None
                 ) -> list[dict[str, Any]]:  # fmt: skip
        """Grad-CAM of every view the head read, for each label, as base64 PNG panels on the
        run's fixed colour scale. Views of a type the model was not trained on get a warning
        (appended to ``warnings``) instead of a map; flat or empty maps say so (``shown``)."""
        encoder = self.predictor.image_encoder
        side = self.run.sidecar.image
        if encoder is None or side is None:
            return []
        warnings = warnings if warnings is not None else []
        # the view kinds training read, where the run recorded them (run.json views.train)
        trained = (getattr(self.run.info, "views", None) or {}).get("train")
        texts = {}
        if "text" in prediction.inputs:
            texts = {UPLOAD_ID: (prediction.inputs["text"][0].numpy(),
                                 bool(prediction.inputs["text_mask"][0]))}  # fmt: skip
        views, mapped = [], []
        read = sorted((i for i, r in enumerate(prediction.views) if r.slot is not None),
                      key=lambda i: prediction.views[i].slot)  # type: ignore[arg-type, return-value]
        for index, pixels in zip(read, prediction.pixels):
            r = prediction.views[index]
            refused = untrained_view_note(side, r.view, trained)
            if refused:
                warnings.append(f"{r.name}: {refused}")
            original = gray8_bytes(images[index].data).astype(np.float32) / 255.0
            views.append(ViewInput(UPLOAD_ID, str(index), r.view, "", int(r.slot), original,
                                   encoder.preprocess(pixels)))  # fmt: skip
            if not refused:
                mapped.append(views[-1])
        if not mapped:
            return []
        scales, scale_note = self.colour_scales()
        if scale_note:
            warnings.append(scale_note)
        explainer = Explainer(encoder, self.run.head, self.predictor.labels, output=self.run.output,
                              texts=texts, device=self.device, fit=side.fit, scales=dict(scales),
                              facts=self.caption_facts())  # fmt: skip
        try:
            maps = explainer.explain_views(views, labels, only=mapped)
        finally:
            self.run.head.to("cpu")  # predict_proba reads the head on the CPU
        originals = {v.image_id: v.original for v in views}
        out = []
        for m in maps:
            name = prediction.views[int(m.image_id)].name
            caption = m.caption(explainer.facts)
            caption[0] = caption[0].replace(f"{UPLOAD_ID} ", f"{name} ", 1)
            png = overlay_png(originals[m.image_id], m.drawing(), caption)
            if m.note:
                warnings.append(f"{name} {m.label}: {m.note}")
            out.append({"image": name, "view": m.view, "label": m.label,
                        "method": m.method, "probability": m.probability,
                        "shown": m.shown, "note": m.note, "raw_max": m.raw_max,
                        "scale": m.scale, "fit": m.fit, "caption": caption,
                        "png_base64": base64.b64encode(png).decode("ascii")})  # fmt: skip
        return out

    def analyse(self, images: Sequence[StudyImage], *, report: str | None = None,
                indication: str | None = None, comparison: str | None = None,
                views: Sequence[str | None] | None = None, explain: bool = False,
                draft: bool = True, dicom: bool = False) -> dict[str, Any]:  # fmt: skip
        """The JSON answer of ``POST /v1/predict`` for one study; with ``dicom`` also its DICOM
        objects under ``"dicom"`` (:func:`dicom_answer`)."""
        answer, objs = self.analyse_dicom(images, report=report, indication=indication,
                                          comparison=comparison, views=views, explain=explain,
                                          draft=draft, dicom=dicom)  # fmt: skip
        if dicom:
            answer["dicom"] = dicom_answer(objs)
        return answer

    def analyse_dicom(self, images: Sequence[StudyImage], *, report: str | None = None,
                      indication: str | None = None, comparison: str | None = None,
                      views: Sequence[str | None] | None = None, explain: bool = False,
                      draft: bool = True, dicom: bool = True
                      ) -> tuple[dict[str, Any], list[Any]]:  # fmt: skip
        """:meth:`analyse`'s answer and, with ``dicom``, the study's DICOM objects
        (:func:`cxrfuse.interop.dicom_results`: the TID 1500 SR, the machine-draft SR when a
        draft was made, one secondary capture per overlay shown)."""
        with self._lock:
            prediction, answer = self._analyse(images, report=report, indication=indication,
                                               comparison=comparison, views=views,
                                               explain=explain, draft=draft)  # fmt: skip
            if not dicom:
                return answer, []
            from cxrfuse.interop import dicom_results  # highdicom: only when DICOM is asked

            try:  # every overlay: a map not shown is a panel that says why (burned in)
                objs = dicom_results(prediction, images, self.run.run,
                                     overlays=answer.get("overlays") or [],
                                     draft=answer.get("report_draft"))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - never lose the prediction to it
                answer["warnings"].append(failure("the DICOM objects", err))
                objs = []
            return answer, objs

    def _analyse(self, images: Sequence[StudyImage], *, report: str | None, indication: str | None,
                 comparison: str | None, views: Sequence[str | None] | None, explain: bool,
                 draft: bool) -> tuple[Prediction, dict[str, Any]]:  # fmt: skip
        """One study's prediction and JSON answer (the caller holds the lock)."""
        prediction = self.predictor.predict(images, report=report, indication=indication,
                                            comparison=comparison, views=views)  # fmt: skip
        answer = prediction.to_dict()
        answer["attribution"] = answer["overlays"] = None
        warnings = answer["warnings"]
        if explain:
            try:
                answer["attribution"] = self.attribution(prediction)
            except Exception as err:  # noqa: BLE001 - never lose the prediction to it
                warnings.append(failure("the image vs report attribution", err))
            try:
                answer["overlays"] = self.overlays(prediction, images, warnings=warnings)
            except Exception as err:  # noqa: BLE001 - never lose the prediction to it
                warnings.append(failure("Grad-CAM", err))
        answer["report_draft"] = None
        if draft:
            try:
                drafter, note = self.drafter()
                read_none = ("image_mask" in prediction.inputs
                             and not prediction.inputs["image_mask"].any())  # fmt: skip
                if drafter is not None and read_none:
                    warnings.append("no draft report: the model read no view of this study")
                elif drafter is not None and prediction.blank:
                    warnings.append("no draft report: every view the model read is blank")
                elif drafter is not None and "image" in prediction.inputs:
                    answer["report_draft"] = drafter.draft(prediction.inputs["image"],
                                                           prediction.inputs["image_mask"])
                elif note:
                    warnings.append(f"no draft report: {note}")
            except Exception as err:  # noqa: BLE001 - never lose the prediction to it
                warnings.append(failure("the draft report", err))
        return prediction, answer


def dicom_answer(objs: Sequence[Any]) -> list[dict[str, Any]]:
    """The DICOM objects of an answer as JSON: per object its kind (``sr``, ``draft``,
    ``overlay``), SOP Class / Instance UIDs, study UID, and the Part 10 file as base64."""
    from cxrfuse.interop import dicom_bytes, object_kind

    out = []
    for ds in objs:
        out.append({"kind": object_kind(ds), "sop_class_uid": str(ds.SOPClassUID),
                    "sop_instance_uid": str(ds.SOPInstanceUID),
                    "study_instance_uid": str(ds.StudyInstanceUID),
                    "dicom_base64": base64.b64encode(dicom_bytes(ds)).decode("ascii")})  # fmt: skip
    return out


def write_overlays(answer: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write the answer's overlay PNGs into ``folder`` (``<image>__<label>__<method>.png``) and
    replace each overlay's ``png_base64`` by its ``file`` (for ``cxrfuse predict --explain``)."""
    from cxrfuse.data.manifest import label_slug
    from cxrfuse.files import atomic_path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for overlay in answer.get("overlays") or []:
        stem = Path(overlay["image"]).name.split(".")[0] or "image"
        name = f"{stem}__{label_slug(overlay['label'])}__{overlay['method']}"
        path = out / f"{name}.png"
        copy = 1
        while path in written:  # two uploads of one name
            copy += 1
            path = out / f"{name}-{copy}.png"
        with atomic_path(path) as tmp:
            tmp.write_bytes(base64.b64decode(overlay.pop("png_base64")))
        overlay["file"] = str(path)
        written.append(path)
    return written


def model_card(service: Service) -> dict[str, Any]:
    """What a reader should know about the served model, from its run directory."""
    run, predictor = service.run, service.predictor
    info, sidecar = run.info, run.sidecar
    encoders: dict[str, Any] = {}
    if sidecar.image is not None:
        image = sidecar.image
        encoders["image"] = {"encoder": image.encoder, "weights": Path(image.weights).name,
                             "input_size": image.input_size, "view_fusion": image.views,
                             "n_views": image.n_views, "finetuned": image.finetuned,
                             "training_views": predictor.training_views_text()}  # fmt: skip
    if sidecar.text is not None:
        encoders["text"] = {"encoder": sidecar.text.encoder, "sections": predictor.text_sections,
                            "masked_labels": list(sidecar.text.mask_labels_for)}  # fmt: skip
    metrics: dict[str, Any] | None = None
    rundir = RunDir(run.run_dir)
    if rundir.has_metrics():
        try:
            raw = rundir.metrics()
        except CxrfuseError:
            raw = None
        if raw is not None:
            metrics = {"split": "test", "n_boot": raw.n_boot,
                       "headline": {name: {"value": value, "ci": raw.ci.get(f"headline/{name}")}
                                    for name, value in raw.test.headline.items()},
                       "per_label": {name: {"auroc": m.get("auroc"), "f1": m.get("f1"),
                                            "auroc_ci": raw.ci.get(f"label/{name}/auroc")}
                                     for name, m in raw.test.per_label.items()},
                       "baselines": raw.test.baselines}  # fmt: skip
    if sidecar.image is not None:  # how a non-square view became the model's square input
        encoders["image"]["fit"] = sidecar.image.fit
    return {
        "run": info.name,
        "kind": info.kind,
        "task": sidecar.task,
        "labels": predictor.labels,
        "output": sidecar.output,
        "thresholds": predictor.thresholds,
        "threshold_method": predictor.threshold_method,
        "threshold_split": "val" if predictor.threshold_method else None,
        "modalities": sidecar.modalities,
        "encoders": encoders,
        "training_data": {"manifest": Path(info.manifest).name if info.manifest else None,
                          "n": dict(info.n), "images": info.images,
                          "synthetic_images": info.images == PHANTOM},
        "test_metrics": metrics,
        "trained": info.finished or info.started,
        "seed": info.seed,
        "cxrfuse_version": cxrfuse_version(),
        "served_on": date.today().isoformat(),
        "verdicts": [v.model_dump() for v in predictor.verdicts],
        "no_skill": {label: [k for k in kinds if k in NO_SKILL_KINDS]
                     for label, kinds in predictor.label_verdicts().items()
                     if any(k in NO_SKILL_KINDS for k in kinds)},
        "warnings": predictor.standing_warnings(),
    }
