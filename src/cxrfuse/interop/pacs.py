"""A PACS round trip over DICOMweb: find studies (QIDO-RS), retrieve their radiographs
(WADO-RS), predict, store the DICOM results back (STOW-RS). ``cxrfuse pacs`` is a thin call
of :func:`answer_studies`:

    from cxrfuse.interop.pacs import answer_studies

    summary = answer_studies("runs/exp/runs/image-seed0", "http://127.0.0.1:8042/dicom-web",
                             modalities=("CR", "DX"), since="20240101")
    summary.answered, summary.skipped, summary.failed

Resumable: a study that already holds this run's SR is skipped (found by QIDO on its SR series
and their metadata: :func:`is_run_sr`), and within a study the SR is stored last, after the
overlays and the draft, so that an SR on the server means the study's answer is complete.
A study that fails (no image instances, a server error, a timeout, a transfer syntax no
installed decoder reads) is one line naming it; the others go on, and nothing is deleted.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrfuse.inference import Predictor, StudyImage
from cxrfuse.interop import dicom_results, object_kind
from cxrfuse.problems import ConfigError, CxrfuseError, DataError

DEFAULT_MODALITIES = ("CR", "DX")
DEFAULT_TIMEOUT = 30.0
QIDO_PAGE = 100
PREAMBLE = b"\x00" * 128
SR_MODALITY = "SR"
MANUFACTURER = "cxrfuse"
"""How a cxrfuse SR's Manufacturer begins (:data:`cxrfuse.interop.sr.MANUFACTURER`)."""
TID1500_TITLE = "126000"
"""CodeValue of the TID 1500 document title (DCM 126000 "Imaging Measurement Report")."""

# DICOM JSON tags (PS3.18 F.2) read from QIDO / metadata answers
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, MODALITIES_IN_STUDY, MANUFACTURER_TAG = "00080060", "00080061", "00080070"
STUDY_DATE, PATIENT_ID, SERIES_DESCRIPTION = "00080020", "00100020", "0008103E"
CONCEPT_NAME, CODE_VALUE, MODEL_NAME = "0040A043", "00080100", "00081090"


@dataclass
class StudyOutcome:
    """What happened to one study."""

    study_uid: str
    status: str  # "answered", "skipped" or "failed"
    message: str = ""
    stored: list[str] = field(default_factory=list)
    """SOP Instance UIDs stored back (SR last)."""
    prediction: dict[str, Any] | None = None


@dataclass
class PacsSummary:
    """The outcome of every study found, in the order they were found."""

    url: str
    run: str
    outcomes: list[StudyOutcome] = field(default_factory=list)

    def _with(self, status: str) -> list[StudyOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def answered(self) -> list[StudyOutcome]:
        return self._with("answered")

    @property
    def skipped(self) -> list[StudyOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[StudyOutcome]:
        return self._with("failed")

    def line(self) -> str:
        return (f"{len(self.outcomes)} stud{'y' if len(self.outcomes) == 1 else 'ies'} found at "
                f"{self.url}: {len(self.answered)} answered, {len(self.skipped)} skipped "
                f"(already answered by run {self.run}), {len(self.failed)} failed")


# ---------------------------------------------------------------------------- small helpers
def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


def dicom_date(value: str | dt.date | None, option: str) -> str | None:
    """``2024-01-31`` / ``20240131`` / a date -> ``20240131``; a ConfigError naming the option
    otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).strftime("%Y%m%d")
        except ValueError:
            continue
    raise ConfigError(f"{option} {value!r}: not a date (give YYYY-MM-DD or YYYYMMDD)")


def parse_modalities(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"CR,DX"`` -> ``("CR", "DX")``; a ConfigError for anything that is not a DICOM
    modality code."""
    if value is None:
        return DEFAULT_MODALITIES
    items = [v.strip().upper() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v]
    bad = [v for v in items if not re.fullmatch(r"[A-Z0-9_]{1,16}", v)]
    if not items or bad:
        raise ConfigError(f"--modality {value!r}: give DICOM modality codes such as CR,DX")
    return tuple(dict.fromkeys(items))


def http_problem(err: BaseException, url: str, timeout: float) -> str | None:
    """A plain sentence for an HTTP failure (status, timeout, refused connection); None when
    ``err`` is no HTTP failure."""
    import requests

    if isinstance(err, requests.HTTPError) and err.response is not None:
        response = err.response
        return (f"the DICOMweb server answered HTTP {response.status_code} "
                f"{response.reason or ''} to {response.request.method} {response.url}").strip()
    if isinstance(err, requests.Timeout):
        return f"the DICOMweb server at {url} did not answer within {timeout:g} s (--timeout)"
    if isinstance(err, requests.ConnectionError):
        return f"cannot connect to the DICOMweb server at {url} ({_root_cause(err)})"
    if isinstance(err, requests.RequestException):
        return f"request to {url} failed ({err})"
    return None


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or (err.args and isinstance(err.args[0], BaseException)):
        err = err.__cause__ or err.args[0]
    return str(err) or type(err).__name__


def client_for(url: str, timeout: float = DEFAULT_TIMEOUT, headers: dict[str, str] | None = None):
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` with ``timeout`` seconds per request
    and no retries (a failing study is reported, a rerun retries it)."""
    from dicomweb_client import DICOMwebClient

    if not re.match(r"https?://[^/]+", url or ""):
        raise ConfigError(f"--url {url!r}: give the DICOMweb root, e.g. "
                          "http://127.0.0.1:8042/dicom-web")
    if timeout <= 0:
        raise ConfigError(f"--timeout {timeout}: give a positive number of seconds")
    try:
        client = DICOMwebClient(url.rstrip("/"), timeout=timeout, headers=headers)
    except ValueError as err:
        raise ConfigError(f"--url {url!r}: {err}") from err
    client.set_http_retry_params(retry=False)
    return client


# ---------------------------------------------------------------------------- QIDO
def find_studies(client: Any, *, study: str | None = None, since: str | None = None,
                 date: str | None = None, modalities: Sequence[str] = DEFAULT_MODALITIES,
                 limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """QIDO-RS: the studies to answer (their DICOM JSON), oldest first: one study by UID, or
    those with an image series of ``modalities`` on ``date`` or ``since`` a date."""
    filters: dict[str, Any] = {MODALITIES_IN_STUDY: ",".join(modalities)}
    if study:
        filters = {STUDY_UID: study}
    if date:
        filters[STUDY_DATE] = date
    elif since:
        filters[STUDY_DATE] = f"{since}-"
    found: dict[str, dict[str, Any]] = {}
    page = QIDO_PAGE  # all of them, then the oldest ``limit``
    while True:  # page by offset; a server that ignores the offset ends it (no new study)
        batch = client.search_for_studies(search_filters=filters, limit=page, offset=len(found),
                                          fields=["ModalitiesInStudy", "StudyDate", "PatientID"])
        new = {str(_value(s, STUDY_UID)): s for s in batch
               if _value(s, STUDY_UID) and str(_value(s, STUDY_UID)) not in found}  # fmt: skip
        found |= new
        if not new or len(batch) < page:
            break
    studies = sorted(found.values(),
                     key=lambda s: (str(_value(s, STUDY_DATE) or ""), str(_value(s, STUDY_UID))))
    return studies[:limit] if limit else studies


def is_run_sr(metadata: dict[str, Any], run_name: str) -> bool:
    """True for this run's TID 1500 SR as :mod:`cxrfuse.interop.sr` writes it (not its machine
    draft): Modality SR, a cxrfuse Manufacturer, the document title Imaging Measurement Report
    (DCM 126000) and the run's name as ManufacturerModelName."""
    if _value(metadata, MODALITY) != SR_MODALITY:
        return False
    if not str(_value(metadata, MANUFACTURER_TAG) or "").startswith(MANUFACTURER):
        return False
    title = _value(metadata, CONCEPT_NAME) or {}
    if _value(title, CODE_VALUE) != TID1500_TITLE:
        return False
    return str(_value(metadata, MODEL_NAME) or "") == run_name[:64]


def already_answered(client: Any, study_uid: str, run_name: str) -> bool:
    """Whether the study holds this run's SR (QIDO on its SR series, then their metadata)."""
    for series in client.search_for_series(study_uid, search_filters={MODALITY: SR_MODALITY}):
        series_uid = _value(series, SERIES_UID)
        if not series_uid:
            continue
        if any(is_run_sr(m, run_name)
               for m in client.retrieve_series_metadata(study_uid, series_uid)):  # fmt: skip
            return True
    return False


# ---------------------------------------------------------------------------- WADO
def retrieve_images(client: Any, study_uid: str, modalities: Sequence[str]) -> list[Any]:
    """WADO-RS: the study's image instances of ``modalities`` as stored (any transfer
    syntax), series by series; a DataError when the study has none."""
    series = client.search_for_series(study_uid, fields=["Modality", "SeriesDescription"])
    wanted = [s for s in series if _value(s, MODALITY) in modalities and _value(s, SERIES_UID)]
    datasets = []
    for item in wanted:
        datasets += client.retrieve_series(study_uid, _value(item, SERIES_UID),
                                           media_types=(("application/dicom", "*"),))  # fmt: skip
    images = [ds for ds in datasets if "PixelData" in ds]
    if not images:
        held = sorted({str(_value(s, MODALITY)) for s in series})
        raise DataError(f"no image instances of modality {'/'.join(modalities)} (the study holds "
                        f"{len(series)} series: {', '.join(held) or 'none'})")  # fmt: skip
    return images


def check_decodable(ds: Any) -> None:
    """A DataError naming the instance and its transfer syntax when no installed decoder
    reads its pixel data."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DataError(f"instance {getattr(ds, 'SOPInstanceUID', '?')}: transfer syntax "
                        f"{syntax.name} ({syntax}) cannot be decoded here (no installed pydicom "
                        "decoder reads it)")  # fmt: skip


def study_image(ds: Any) -> StudyImage:
    """One retrieved instance as a :class:`StudyImage` (its DICOM bytes; the view from its
    header)."""
    import pydicom

    check_decodable(ds)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return StudyImage(f"instance {ds.SOPInstanceUID}", buffer.getvalue())


# ---------------------------------------------------------------------------- one study
def answer_study(client: Any, predictor: Any, study_uid: str, *,
                 modalities: Sequence[str] = DEFAULT_MODALITIES, overlays: bool = False,
                 draft: bool = False, resume: bool = True) -> StudyOutcome:  # fmt: skip
    """Answer one study: skip it when it holds this run's SR (``resume``), else retrieve,
    predict, build the DICOM results and store them (SR last). Errors propagate.
    ``predictor``: a :class:`Predictor`, or a :class:`cxrfuse.serve.Service` (its
    ``analyse_dicom``: Grad-CAM overlays and the draft report too)."""
    run_name = _run_name(predictor)
    if resume and already_answered(client, study_uid, run_name):
        return StudyOutcome(study_uid, "skipped", f"already holds the SR of run {run_name}")
    datasets = retrieve_images(client, study_uid, modalities)
    images = [study_image(ds) for ds in datasets]
    answer, results = analyse(predictor, images, overlays=overlays, draft=draft)
    kinds = [object_kind(ds) for ds in results]
    if "sr" not in kinds:
        raise CxrfuseError("no SR was made: " + "; ".join(answer.get("warnings") or [])[-300:])
    sr = results[kinds.index("sr")]
    others = [ds for ds, kind in zip(results, kinds) if kind != "sr"]
    for ds in results:  # Part 10 files (dicomweb-client writes the preamble only if set)
        ds.preamble = ds.preamble or PREAMBLE
    stored = []
    if others:  # overlays and the draft first: the SR on the server marks a complete answer
        _stored(client.store_instances(others, study_instance_uid=study_uid), others)
        stored += [str(ds.SOPInstanceUID) for ds in others]
    _stored(client.store_instances([sr], study_instance_uid=study_uid), [sr])
    stored.append(str(sr.SOPInstanceUID))
    positive = [label for label in answer["labels"] if answer["decisions"][label]]
    return StudyOutcome(study_uid, "answered",
                        f"{len(images)} image(s); positive: {', '.join(positive) or 'none'}; "
                        f"stored {len(stored)} object(s)", stored, answer)  # fmt: skip


def _run_name(predictor: Any) -> str:
    inner = getattr(predictor, "predictor", predictor)  # a Service holds its Predictor
    return str(inner.run.run.name)


def analyse(predictor: Any, images: list[StudyImage], *, overlays: bool = False,
            draft: bool = False) -> tuple[dict[str, Any], list[Any]]:  # fmt: skip
    """One study's JSON answer and DICOM objects (SR first): through a Service's
    ``analyse_dicom`` when ``predictor`` is one, else :func:`cxrfuse.interop.dicom_results`
    of the Predictor's prediction (no overlays, no draft)."""
    if hasattr(predictor, "analyse_dicom"):
        return predictor.analyse_dicom(images, explain=overlays, draft=draft, dicom=True)
    if overlays or draft:
        raise ConfigError("overlays and the draft report need a cxrfuse.serve.Service "
                          "(cxrfuse pacs --overlays/--draft makes one)")  # fmt: skip
    prediction = predictor.predict(images)
    return prediction.to_dict(), dicom_results(prediction, images, predictor.run.run)


def _stored(response: Any, sent: Sequence[Any]) -> None:
    """A STOW-RS answer that lists failed instances is an error naming them."""
    failed = list(getattr(response, "FailedSOPSequence", None) or [])
    if failed:
        uids = [str(getattr(item, "ReferencedSOPInstanceUID", "?")) for item in failed]
        raise CxrfuseError(f"the server refused {len(failed)} of {len(sent)} object(s) "
                           f"({', '.join(uids)})")  # fmt: skip


# ---------------------------------------------------------------------------- many studies
def answer_studies(run: str | Path | Predictor | Any, url: str, *, study: str | None = None,
                   since: str | dt.date | None = None, date: str | dt.date | None = None,
                   modalities: str | Sequence[str] | None = DEFAULT_MODALITIES,
                   limit: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                   overlays: bool = False, draft: bool = False, resume: bool = True,
                   progress: bool = True, on_outcome: Callable[[StudyOutcome], None] | None = None,
                   client: Any = None) -> PacsSummary:  # fmt: skip
    """Find the studies at the DICOMweb root ``url`` (QIDO-RS), answer each with the run
    (WADO-RS, predict, STOW-RS) and return what happened to each. A study that fails is
    recorded (``on_outcome`` sees it at once) and the next one goes on; a failure to search
    the server at all raises a CxrfuseError naming it. ``run``: a run directory, a
    :class:`Predictor`, or a :class:`cxrfuse.serve.Service` (needed for ``overlays`` /
    ``draft``)."""
    modalities = parse_modalities(modalities)
    since_ = dicom_date(since, "--since")
    date_ = dicom_date(date, "--date")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: give a positive number of studies")
    client = client or client_for(url, timeout)
    try:
        found = find_studies(client, study=study, since=since_, date=date_,
                             modalities=modalities, limit=limit)  # fmt: skip
    except Exception as err:
        problem = http_problem(err, url, timeout)
        if problem is None:
            raise
        raise CxrfuseError(f"cannot search for studies: {problem}") from err
    predictor = run if isinstance(run, Predictor) or hasattr(run, "analyse_dicom") else Predictor(run)
    summary = PacsSummary(url, _run_name(predictor))
    if study and not found:
        summary.outcomes.append(StudyOutcome(study, "failed", "no such study on the server"))
        if on_outcome:
            on_outcome(summary.outcomes[-1])
    from tqdm.auto import tqdm

    bar = tqdm(found, desc="studies", unit="study", disable=not progress, **_bar_settings())
    for item in bar:
        uid = str(_value(item, STUDY_UID))
        try:
            outcome = answer_study(client, predictor, uid, modalities=modalities,
                                   overlays=overlays, draft=draft, resume=resume)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - one study's failure never stops the rest
            outcome = StudyOutcome(uid, "failed", study_problem(err, url, timeout))
        summary.outcomes.append(outcome)
        bar.set_postfix(answered=len(summary.answered), skipped=len(summary.skipped),
                        failed=len(summary.failed), refresh=False)  # fmt: skip
        if on_outcome:
            on_outcome(outcome)
    bar.close()
    return summary


def _bar_settings() -> dict[str, Any]:
    """tqdm's ``TQDM_*`` settings as they are now (tqdm reads them once, when it is first
    imported: a log's one-line-per-update format set by the CLI afterwards would be missed)."""
    import os

    out: dict[str, Any] = {}
    if os.environ.get("TQDM_BAR_FORMAT"):
        out["bar_format"] = os.environ["TQDM_BAR_FORMAT"]
    if os.environ.get("TQDM_ASCII"):
        out["ascii"] = os.environ["TQDM_ASCII"]
    try:
        out["mininterval"] = float(os.environ["TQDM_MININTERVAL"])
    except (KeyError, ValueError):
        pass
    return out


def study_problem(err: BaseException, url: str, timeout: float) -> str:
    """One sentence for a study's failure."""
    problem = http_problem(err, url, timeout)
    if problem is not None:
        return problem
    if isinstance(err, CxrfuseError):
        return str(err)
    from pydicom.errors import InvalidDicomError

    if isinstance(err, InvalidDicomError):
        return ("the server sent an instance that is not a DICOM Part 10 file (no preamble and "
                "'DICM' prefix: it was stored without one); it cannot be read")
    if isinstance(err, OSError | ValueError):
        return f"{type(err).__name__}: {err}"
    return f"unexpected {type(err).__name__}: {err}"
