"""A prediction as FHIR R4: a ``Bundle`` holding one ``DiagnosticReport``, one ``Observation``
per label (probability, val-chosen threshold, decision, interpretation POS/NEG) and a
``Device`` for the algorithm (cxrfuse version, run name, model-card facts). Validated with
``fhir.resources`` (its R4B models: DiagnosticReport, Observation, Device and Bundle are the
same in R4 and R4B) before it is returned.

    from cxrfuse.interop.fhir import fhir_bundle, write_fhir

    bundle = fhir_bundle(prediction, "runs/exp/runs/image-seed0", study_uid="1.2.3")
    write_fhir(prediction, "answer.fhir.json", run="runs/exp/runs/image-seed0")

Warnings (synthetic training images, leaky text, test-set verdicts, unusual views) go into
the report's ``conclusion`` and each Observation's ``note``; everything is ``preliminary``
(machine output no clinician has read).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrfuse.files import write_json
from cxrfuse.inference import Prediction
from cxrfuse.interop.sr import cxrfuse_version
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import RunDir
from cxrfuse.rundir.modelcard import INTENDED_USE, card_metadata
from cxrfuse.runtime import now_iso

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
LABEL_SYSTEM = "urn:cxrfuse:label"
"""The code system of a cxrfuse label (the run's own vocabulary; no standard code is claimed)."""
DICOM_UID = "urn:dicom:uid"
BUNDLE_TYPES = ("collection", "transaction")
SYNTHETIC = ("SYNTHETIC: this model was trained on synthetic phantom images, not radiographs; "
             "its output says nothing about real patients.")


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _quantity(value: float, unit: str = "probability") -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": unit, "system": UCUM, "code": "1"}


def _run_facts(run: RunDir | str | Path | None) -> dict[str, Any]:
    """The model card's ``cxrfuse`` block of the run (empty without a run directory)."""
    if run is None:
        return {}
    run = run if isinstance(run, RunDir) else RunDir(run)
    try:
        return dict(card_metadata(run)["cxrfuse"])
    except (CxrfuseError, OSError, ValueError, KeyError):
        return {}


def _device(prediction: Prediction, facts: dict[str, Any]) -> dict[str, Any]:
    notes = [INTENDED_USE]
    if facts.get("synthetic_images"):
        notes.append(SYNTHETIC)
    if facts.get("manifest"):
        notes.append(f"Trained on {facts['manifest']} ({facts.get('images') or 'images unknown'}"
                     f", task {facts.get('task')}, n = {facts.get('n')}).")
    test = facts.get("test") or {}
    if "auroc" in test:
        ci = test["auroc"].get("ci95")
        interval = f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})" if ci else ""
        notes.append(f"Test macro AUROC {test['auroc']['value']:.3f}{interval} on "
                     f"{facts.get('n_test')} studies; thresholds chosen on val "
                     f"({facts.get('threshold_method')}).")
    elif facts:
        notes.append("The run was never evaluated: no test metrics, thresholds 0.5.")
    return {
        "resourceType": "Device",
        "status": "active",
        "manufacturer": "cxrfuse",
        "deviceName": [{"name": f"cxrfuse {prediction.run}", "type": "model-name"}],
        "type": {"text": "AI chest X-ray classification model (research use only)"},
        "version": [{"type": {"text": "cxrfuse"}, "value": cxrfuse_version()},
                    {"type": {"text": "run"}, "value": prediction.run}],
        "note": [{"text": n} for n in notes],
    }


def _observation(prediction: Prediction, label: str, device: str, subject: dict | None,
                 issued: str, focus: list[dict]) -> dict[str, Any]:  # fmt: skip
    p = prediction.probabilities[label]
    threshold = prediction.thresholds[label]
    positive = prediction.decisions[label]
    notes = [f"test-set verdict for this label: {kind} (its decisions are no better than a "
             "trivial rule)" for kind in prediction.verdicts.get(label, [])
             if kind in ("chance", "trivial")]  # fmt: skip
    method = prediction.threshold_method or "default 0.5 (never evaluated)"
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging",
                                  "display": "Imaging"}]}],
        "code": {"coding": [{"system": LABEL_SYSTEM, "code": label, "display": label}],
                 "text": label},
        "issued": issued,
        "device": {"reference": device},
        "method": {"text": f"cxrfuse run {prediction.run}: predicted probability, decided at "
                           f"the threshold chosen on val ({method})"},
        "valueQuantity": _quantity(p),
        "interpretation": [{"coding": [{"system": INTERPRETATION,
                                        "code": "POS" if positive else "NEG",
                                        "display": "Positive" if positive else "Negative"}]}],
        "component": [
            {"code": {"text": "threshold"}, "valueQuantity": _quantity(threshold, "threshold")},
            {"code": {"text": "decision"}, "valueBoolean": bool(positive)},
        ],
    }
    if subject:
        obs["subject"] = subject
    if focus:
        obs["focus"] = focus
    if notes:
        obs["note"] = [{"text": n} for n in notes]
    return obs


def conclusion_text(prediction: Prediction, synthetic: bool) -> str:
    """The report's conclusion: the decisions, then every warning of the answer."""
    pos = [f"{label} (p = {prediction.probabilities[label]:.3f} >= "
           f"{prediction.thresholds[label]:.3f})" for label in prediction.labels
           if prediction.decisions[label]]  # fmt: skip
    parts = [SYNTHETIC] if synthetic else []
    parts.append(f"Machine output of cxrfuse run {prediction.run} (research use only, not "
                 "read by a clinician).")
    parts.append(f"Positive at the val-chosen thresholds: {', '.join(pos)}." if pos
                 else "No label positive at the val-chosen thresholds.")  # fmt: skip
    parts += [f"Warning: {w}" for w in prediction.warnings]
    return "\n".join(parts)


def as_prediction(answer: Prediction | Mapping[str, Any]) -> Prediction:
    """A :class:`Prediction`, or its JSON answer (``Prediction.to_dict()``, the ``/v1/predict``
    answer), as a Prediction (the views are not carried over)."""
    if isinstance(answer, Prediction):
        return answer
    keys = ("run", "labels", "probabilities", "thresholds", "threshold_method", "decisions",
            "warnings")
    missing = [k for k in keys if k not in answer]
    if missing:
        raise CxrfuseError(f"not a cxrfuse prediction: no {', '.join(missing)}")
    return Prediction(*(answer[k] for k in keys), verdicts=dict(answer.get("verdicts") or {}),
                      text_sections=list(answer.get("text_sections") or []))


def fhir_bundle(prediction: Prediction | Mapping[str, Any], run: RunDir | str | Path | None = None, *,
                study_uid: str | None = None, patient_id: str | None = None,
                issued: str | None = None, bundle_type: str = "collection") -> dict[str, Any]:  # fmt: skip
    """The prediction as a validated FHIR R4 Bundle (JSON-ready dict). ``run``: its run
    directory (model-card facts for the Device); ``study_uid``: the DICOM StudyInstanceUID it
    answers (an identifier reference); ``patient_id``: the subject's identifier;
    ``bundle_type``: ``collection`` or ``transaction`` (POST-able to a FHIR server).
    ``prediction`` may also be its JSON answer (``Prediction.to_dict()``)."""
    prediction = as_prediction(prediction)
    if bundle_type not in BUNDLE_TYPES:
        raise CxrfuseError(f"FHIR bundle type {bundle_type!r}: give one of {', '.join(BUNDLE_TYPES)}")
    facts = _run_facts(run)
    synthetic = bool(facts.get("synthetic_images")) or any(
        "synthetic phantom" in w for w in prediction.warnings)
    issued = issued or now_iso()
    device_id, report_id = _urn(), _urn()
    subject = ({"identifier": {"value": patient_id}} if patient_id else None)
    focus = ([{"identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"},
               "display": "DICOM study"}] if study_uid else [])  # fmt: skip
    observations = [(_urn(), _observation(prediction, label, device_id, subject, issued, focus))
                    for label in prediction.labels]  # fmt: skip
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": f"cxrfuse chest X-ray classification ({prediction.run})"},
        "issued": issued,
        "result": [{"reference": ref, "display": obs["code"]["text"]} for ref, obs in observations],
        "conclusion": conclusion_text(prediction, synthetic),
    }
    # R4 has no Device performer of a DiagnosticReport: each Observation names the device
    if subject:
        report["subject"] = subject
    if study_uid:
        report["identifier"] = [{"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}]
    entries = [(report_id, report), *observations, (device_id, _device(prediction, facts))]
    bundle = {"resourceType": "Bundle", "type": bundle_type, "timestamp": issued,
              "entry": [_entry(url, resource, bundle_type) for url, resource in entries]}
    validate_bundle(bundle)
    return bundle


def _entry(url: str, resource: dict[str, Any], bundle_type: str) -> dict[str, Any]:
    entry = {"fullUrl": url, "resource": resource}
    if bundle_type == "transaction":
        entry["request"] = {"method": "POST", "url": resource["resourceType"]}
    return entry


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Check the bundle against the FHIR models of ``fhir.resources`` (a failure is a bug in
    cxrfuse: it names the field)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as err:
        raise CxrfuseError(f"the FHIR bundle cxrfuse built is not valid FHIR: {err}") from err


def write_fhir(prediction: Prediction | Mapping[str, Any], path: str | Path, run: RunDir | str | Path | None = None,
               **kwargs: Any) -> Path:  # fmt: skip
    """Write :func:`fhir_bundle` as JSON (atomic); the path written."""
    return write_json(Path(path), fhir_bundle(prediction, run, **kwargs), indent=2)
