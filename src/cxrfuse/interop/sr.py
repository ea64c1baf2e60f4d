"""DICOM Structured Reports of one prediction (highdicom).

:func:`measurement_report` builds a TID 1500 Measurement Report in a Comprehensive SR: one
measurement group (TID 1501) per label with the finding as its finding type, the probability
(DCM 122157 "Probability", no units), the val-chosen threshold (private code) and the decision
as a qualitative evaluation (finding = SCT Present / Absent), the algorithm identification
(cxrfuse version, run name) and the source images (image library + each group's source images,
by SOP Class/Instance UID). The model-card facts, a note on generated UIDs and every warning of
the prediction are TEXT items of the report container.

:func:`draft_report` puts a generated report text (retrieval or VLM) in a separate
Comprehensive SR titled as a machine draft, PreliminaryFlag PRELIMINARY, VerificationFlag
UNVERIFIED, CompletionFlag PARTIAL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxrfuse.inference import Prediction
from cxrfuse.interop import codes as cx
from cxrfuse.interop.sources import UID_ROOT_NOTE, Source
from cxrfuse.rundir import RunDir
from cxrfuse.rundir.modelcard import card_metadata

MANUFACTURER = "cxrfuse (research software, not a medical device)"
SR_SERIES_NUMBER = 9001
DRAFT_SERIES_NUMBER = 9002
MAX_TEXT = 10_000
"""Characters of one TEXT item kept (UT allows more; viewers struggle beyond this)."""


def cxrfuse_version() -> str:
    """The installed cxrfuse version (the same lookup as ``cxrfuse.__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxrfuse")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0+unknown"


def model_facts(run: RunDir) -> list[str]:
    """One line per model-card fact a reader of the SR should see: training data (synthetic or
    real), labels, test AUROC with its interval or that the run was never evaluated."""
    meta = card_metadata(run)
    block = meta["cxrfuse"]
    facts = [f"run: {block['run']} (cxrfuse {cxrfuse_version()})",
             f"training data: {', '.join(meta.get('datasets') or ['unknown'])}; images: "
             + ("SYNTHETIC phantoms, not radiographs: results mean nothing clinically"
                if block.get("synthetic_images") else f"real ({block.get('images') or 'unknown'})"),
             (f"modalities: {', '.join(block.get('modalities') or [])}; labels: "
              f"{', '.join(block.get('labels') or [])}"),
             f"intended use: {block.get('intended_use')}; not a medical device"]  # fmt: skip
    test = block.get("test") or {}
    auroc = test.get("auroc")
    if auroc:
        ci = auroc.get("ci95")
        interval = f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})" if ci else " (no interval)"
        facts.append(f"test macro AUROC {auroc['value']:.3f}{interval}, n = {block.get('n_test')}")
    elif block.get("evaluated"):
        facts.append("test AUROC: not computed for this run")
    else:
        facts.append("not evaluated: no test AUROC, thresholds are the 0.5 default")
    if block.get("threshold_method"):
        facts.append(f"thresholds chosen on the validation split by {block['threshold_method']}")
    return facts


def _observation_context(run_name: str, device_uid: str) -> ObservationContext:
    device = DeviceObserverIdentifyingAttributes(
        uid=device_uid, name="cxrfuse", manufacturer_name="cxrfuse project",
        model_name=run_name[:64])  # fmt: skip
    return ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))  # fmt: skip


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(name=name, value=value[:MAX_TEXT],
                           relationship_type=RelationshipTypeValues.CONTAINS)  # fmt: skip


def _source_notes(sources: Sequence[Source], read: set[str]) -> list[str]:
    notes = []  # file names only: a local path may name a patient or a folder of the site
    for s in sources:
        name = Path(s.name).name
        state = "read by the model" if s.name in read else "not read by the model"
        if s.generated:
            notes.append(f"{name}: PNG/JPEG without a DICOM header ({state}); its UIDs "
                         f"(SOP Instance {s.sop_instance_uid}) were {UID_ROOT_NOTE}, and its "
                         "patient/study attributes copied from the study's DICOM images or "
                         "left empty")  # fmt: skip
        else:
            notes.append(f"{name}: DICOM SOP Instance {s.sop_instance_uid} ({state})")
    return notes


def measurement_report(prediction: Prediction, sources: Sequence[Source], run: RunDir, *,
                       series_uid: str | None = None, instance_uid: str | None = None
                       ) -> hd.sr.ComprehensiveSR:  # fmt: skip
    """The TID 1500 Comprehensive SR of ``prediction`` (see the module doc)."""
    version = cxrfuse_version()
    read = {v.name for v in prediction.views if v.slot is not None}
    evidence = [s.header for s in sources]
    measured = [s.header for s in sources if s.name in read] or evidence
    algorithm = AlgorithmIdentification(name="cxrfuse", version=version,
                                        parameters=[f"run={prediction.run}"][:1])  # fmt: skip
    groups = []
    for label in prediction.labels:
        finding = cx.finding(label)
        probability = float(prediction.probabilities[label])
        threshold = float(prediction.thresholds[label])
        decision = bool(prediction.decisions[label])
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=str(generate_uid(entropy_srcs=[prediction.run, label,
                                                   *[s.sop_instance_uid for s in sources]])),
                identifier=f"{label}"[:64]),
            finding_type=finding,
            algorithm_id=algorithm,
            measurements=[
                Measurement(name=cx.PROBABILITY, value=probability, unit=cx.NO_UNITS),
                Measurement(name=cx.THRESHOLD, value=threshold, unit=cx.NO_UNITS),
            ],
            qualitative_evaluations=[QualitativeEvaluation(
                name=finding, value=cx.DECISION_PRESENT if decision else cx.DECISION_ABSENT)],
            source_images=[SourceImageForMeasurementGroup.from_source_image(ds)
                           for ds in measured],
        ))  # fmt: skip
    device_uid = str(generate_uid(entropy_srcs=["cxrfuse-device", prediction.run]))
    report = MeasurementReport(
        observation_context=_observation_context(prediction.run, device_uid),
        procedure_reported=cx.PROCEDURE, imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=[s.library_header() for s in sources])  # fmt: skip
    root = report[0]
    texts = [_text(cx.MODEL_FACT, fact) for fact in model_facts(run)]
    texts += [_text(cx.SOURCE_NOTE, note) for note in _source_notes(sources, read)]
    texts += [_text(cx.WARNING, warning) for warning in prediction.warnings]
    root.ContentSequence.extend(texts)
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report,
        series_instance_uid=series_uid or str(generate_uid()), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid or str(generate_uid()), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="cxrfuse AI result (TID 1500)")  # fmt: skip
    _finish(sr, version, prediction.run)
    return sr


def draft_text(draft: str | Mapping[str, Any]) -> tuple[str, str]:
    """The draft's text and what made it (``draft`` as a string or the answer's
    ``report_draft`` mapping: ``text``, ``generator``, ``note``)."""
    if isinstance(draft, str):
        return draft, "a report generator of cxrfuse"
    text = str(draft.get("text") or "")
    made = str(draft.get("generator") or "a report generator of cxrfuse")
    if draft.get("note"):
        made += f" ({draft['note']})"
    return text, made


def draft_report(draft: str | Mapping[str, Any], sources: Sequence[Source], run_name: str, *,
                 series_uid: str | None = None, instance_uid: str | None = None
                 ) -> hd.sr.ComprehensiveSR:  # fmt: skip
    """The machine-drafted report text as its own SR, marked as an unverified machine draft."""
    text, made = draft_text(draft)
    root = ContainerContentItem(name=cx.DRAFT_TITLE, template_id=None)
    root.ContentSequence = [
        _text(cx.DRAFT_NOTE, "MACHINE DRAFT, NOT VERIFIED BY A RADIOLOGIST, NOT A FINDING: "
                             f"generated by {made} for run {run_name}; a draft for a reader to "
                             "correct."),
        _text(cx.FINDINGS, text or "(empty draft)"),
    ]  # fmt: skip
    sr = hd.sr.ComprehensiveSR(
        evidence=[s.header for s in sources], content=root,
        series_instance_uid=series_uid or str(generate_uid()),
        series_number=DRAFT_SERIES_NUMBER, sop_instance_uid=instance_uid or str(generate_uid()),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=False, is_final=False,
        is_verified=False, series_description="cxrfuse MACHINE DRAFT report (unverified)")  # fmt: skip
    _finish(sr, cxrfuse_version(), run_name)
    return sr


def _finish(sr: Dataset, version: str, run_name: str) -> None:
    """Attributes every cxrfuse SR carries: the private scheme, the software version."""
    schemes = list(getattr(sr, "CodingSchemeIdentificationSequence", []) or [])
    schemes.append(cx.scheme_identification())
    sr.CodingSchemeIdentificationSequence = schemes
    sr.SoftwareVersions = version[:64]
    sr.ManufacturerModelName = run_name[:64]
    now = dt.datetime.now(dt.UTC)
    if not getattr(sr, "ContentDate", None):
        sr.ContentDate, sr.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
