"""IU X-ray (OpenI, Indiana University) in its three common layouts.

- ``openi``: the OpenI XML reports (``NLMCXR_reports.tgz`` or a folder of ``ecgen-radiology/N.xml``)
  and the OpenI PNG folder (``NLMCXR_png/CXR1_1_IM-0001-3001.png``). The reports default to the
  copy that torchxrayvision ships, so this layout works with no download.
- ``kaggle``: ``indiana_reports.csv`` (uid, MeSH, Problems, image, indication, comparison,
  findings, impression), ``indiana_projections.csv`` (uid, filename, projection) and
  ``images/images_normalized/``.
- ``r2gen``: ``annotation.json`` (train/val/test lists of ``{id, report, image_path}``) and
  ``images/CXR..._IM-..../0.png``. Labels and sections come from the OpenI XML joined on the
  report number, since R2Gen keeps neither.

Study id ``CXR{n}``; IU X-ray has one study per patient, so the patient id is the report number.
Labels: ``abnormal`` (from the MeSH major term ``normal``) and a multilabel vocabulary of MeSH
finding heads (:data:`cxrfuse.data.labels.IU_DEFAULT_FINDINGS`).
"""

from __future__ import annotations

import importlib.util
import json
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from cxrfuse.data.labels import ABNORMAL, IU_DEFAULT_FINDINGS, Finding, iu_labels
from cxrfuse.data.manifest import Manifest, normalise_view, view_kind
from cxrfuse.data.tables import read_csv
from cxrfuse.data.views import implausible_views
from cxrfuse.problems import DataError, ProblemLog
from cxrfuse.vocab import REPORT_SECTIONS

DATASET = "iu-xray"
Layout = Literal["openi", "kaggle", "r2gen"]


def _xrv_data_dir() -> Path:
    """torchxrayvision's ``data`` folder, found without importing it (an import pulls in torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise DataError("torchxrayvision is not installed; it ships the IU X-ray reports (pip install torchxrayvision)")
    return Path(spec.origin).parent / "data"


def bundled_reports() -> Path:
    """The OpenI reports archive inside the torchxrayvision wheel."""
    path = _xrv_data_dir() / "NLMCXR_reports.tgz"
    if not path.exists():
        raise DataError(f"{path}: torchxrayvision does not ship the IU X-ray reports in this version")
    return path


def bundled_dicom_metadata() -> Path | None:
    """torchxrayvision's table of IU X-ray DICOM headers (view positions, dates), if present."""
    path = _xrv_data_dir() / "nlmcxr_dicom_metadata.csv.gz"
    return path if path.exists() else None


def bundled_pixel_views() -> Path | None:
    """torchxrayvision's pixel-derived view of one image per IU study (``imageid, tsne-view``:
    PA or L, from a t-SNE of the images), if present."""
    path = _xrv_data_dir() / "nlmcxr_tsne_pa.csv.gz"
    return path if path.exists() else None


# ---------------------------------------------------------------------------- OpenI XML
@dataclass
class OpenIReport:
    """One parsed OpenI XML report."""

    number: int
    sections: dict[str, str | None]
    mesh_major: list[str]
    mesh_automatic: list[str]
    image_ids: list[str] = field(default_factory=list)
    where: str = ""  # the file (or archive member) it was read from

    @property
    def study_id(self) -> str:
        return f"CXR{self.number}"

    def text(self) -> str:
        return "\n".join(f"{k.upper()}: {v}" for k, v in self.sections.items() if v)


def parse_openi_xml(data: bytes | str, where: str) -> OpenIReport:
    """Parse one OpenI report; raises :class:`DataError` naming ``where`` when malformed."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{where}: malformed XML ({exc})") from exc
    uid = root.find("uId")
    match = re.fullmatch(r"CXR(\d+)", (uid.get("id") or "") if uid is not None else "")
    if match is None:
        raise DataError(f"{where}: no <uId id=\"CXRn\"> element")
    sections: dict[str, str | None] = {s: None for s in REPORT_SECTIONS}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        if label in sections:
            text = " ".join((node.text or "").split())
            sections[label] = text or None
    mesh = root.find("MeSH")
    major = [(m.text or "").strip() for m in mesh.iter("major")] if mesh is not None else []
    auto = [(m.text or "").strip() for m in mesh.iter("automatic")] if mesh is not None else []
    images = [p.get("id") for p in root.iter("parentImage") if p.get("id")]
    return OpenIReport(int(match.group(1)), sections, [m for m in major if m], [a for a in auto if a], images,
                       where=where)


def iter_openi_reports(source: Path, problems: ProblemLog) -> Iterator[OpenIReport]:
    """Yield the reports of a ``.tgz`` archive or a folder of XML files; bad files become problems."""
    if source.is_dir():
        files = sorted(source.rglob("*.xml"))
        if not files:
            raise DataError(f"{source}: folder holds no OpenI .xml reports")
        for path in files:
            try:
                yield parse_openi_xml(path.read_bytes(), str(path))
            except DataError as exc:
                problems.add("malformed-xml", str(path), str(exc).split(": ", 1)[-1])
        return
    if not source.exists():
        raise DataError(f"{source}: no such reports archive or folder")
    try:
        archive = tarfile.open(source)  # noqa: SIM115 - closed by the with-block below
    except tarfile.TarError as exc:
        raise DataError(f"{source}: not a readable tar archive ({exc})") from exc
    with archive:
        try:
            members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".xml")]
        except (EOFError, OSError, tarfile.TarError, zlib.error) as exc:
            raise DataError(f"{source}: truncated or corrupt archive ({type(exc).__name__}: "
                            f"{exc}); download it again") from exc
        if not members:
            raise DataError(f"{source}: archive holds no OpenI .xml reports")
        for member in members:
            where = f"{source}:{member.name}"
            try:
                handle = archive.extractfile(member)
                data = handle.read() if handle else b""
            except (EOFError, OSError, tarfile.TarError, zlib.error) as exc:
                raise DataError(f"{where}: truncated or corrupt archive member "
                                f"({type(exc).__name__}: {exc})") from exc
            try:
                yield parse_openi_xml(data, where)
            except DataError as exc:
                problems.add("malformed-xml", where, str(exc).split(": ", 2)[-1])


# ---------------------------------------------------------------------------- DICOM metadata
PROCESSING_CODE_VIEWS = {"60003": "LATERAL", "60025": "PA", "1": "PA", "2": "PA",
                         "3": "LATERAL", "4": "LATERAL"}  # fmt: skip
"""The CR processing menu (DICOM Acquisition Device Processing Code) of the IU X-ray images
that says the view: on the 3,851 images torchxrayvision's pixel-derived view covers, code
60003 is lateral on 151 of 155, 60025 frontal on 1,216 of 1,239, 1 and 2 frontal on 577 of
581, 3 and 4 lateral on 66 of 66, while the header's View Position says PA for 1,360 of the
1,366 images of code 60003 (``benchmarks/view_sources.py``)."""


def dicom_views(path: Path | None) -> dict[str, dict[str, Any]]:
    """``image_id -> {view, age, header_view, code_view}`` from the IU DICOM header table.

    ``header_view`` is the header's View Position (noisy: many laterals are marked PA, many are
    blank); ``code_view`` what the CR processing menu says (:data:`PROCESSING_CODE_VIEWS`);
    ``view`` the header's position, except that a frontal or blank header gives way to a
    processing code that says otherwise (see :func:`resolve_view`)."""
    if path is None:
        return {}
    cols = ["imageid", "View Position", "Patient's Birth Date", "Study Date",
            "Acquisition Device Processing Code"]  # fmt: skip
    table = pd.read_csv(path, usecols=lambda c: c in cols, dtype=str)
    if "Acquisition Device Processing Code" not in table:
        table["Acquisition Device Processing Code"] = None
    birth = pd.to_datetime(table["Patient's Birth Date"], format="%Y%m%d", errors="coerce")
    study = pd.to_datetime(table["Study Date"], format="%Y%m%d", errors="coerce")
    age = ((study - birth).dt.days / 365.25).round(1)
    ids = table["imageid"].str.replace(r"^CXR(\d+)_IM", r"CXR\1_IM", regex=True)
    out = {}
    for i, v, a, code in zip(ids, table["View Position"], age,
                             table["Acquisition Device Processing Code"]):  # fmt: skip
        header = normalise_view(v)
        code_view = PROCESSING_CODE_VIEWS.get(str(code).strip()) if isinstance(code, str) else None
        out[i] = {"view": header, "header_view": header, "code_view": code_view,
                  "age": a if pd.notna(a) and 0 <= a < 120 else None}
    return out


def pixel_views(path: Path | None) -> dict[str, str]:
    """``image_id -> PA | LATERAL`` from torchxrayvision's pixel-derived (t-SNE) view table."""
    if path is None:
        return {}
    table = pd.read_csv(path, dtype=str)
    if not {"imageid", "tsne-view"} <= set(table.columns):
        raise DataError(f"{path}: expected columns imageid and tsne-view")
    return {str(i): normalise_view(v) for i, v in zip(table["imageid"], table["tsne-view"])}


def resolve_view(header: str, code_view: str | None, pixel_view: str | None) -> tuple[str, str]:
    """The view position to trust for one OpenI image and the source it came from.

    Preference (measured in ``benchmarks/view_sources.py``): the pixel-derived view where
    torchxrayvision has one; a header that says lateral (never contradicted by the pixels);
    the processing menu; a header that says frontal; else unknown. A header AP stays AP when
    the pixels say frontal."""
    hk, ck, pk = view_kind(header), view_kind(code_view), view_kind(pixel_view)
    if pk != "unknown":
        return (header if hk == pk else str(pixel_view)), "pixels (torchxrayvision t-SNE)"
    if hk == "lateral":
        return header, "DICOM View Position"
    if ck != "unknown":
        return (header if hk == ck else str(code_view)), "DICOM processing code"
    if hk == "frontal":
        return header, "DICOM View Position"
    return "UNKNOWN", "none"


def _dicom_key(image_id: str) -> str:
    """OpenI image ids carry an extra ``_1`` for some reports (``CXR1_1_IM-...``); the table does not."""
    return re.sub(r"^CXR(\d+)_\d+_IM", r"CXR\1_IM", image_id)


# ---------------------------------------------------------------------------- layouts
def ingest_iu_xray(
    images: Path | None = None,
    *,
    reports: Path | None = None,
    layout: Layout = "openi",
    findings: tuple[Finding, ...] = IU_DEFAULT_FINDINGS,
    dicom_metadata: Path | None | Literal["bundled"] = "bundled",
    strict: bool = False,
) -> tuple[Manifest, ProblemLog]:
    """Ingest IU X-ray into a study manifest.

    ``images`` is the image folder (openi), the dataset root (kaggle: the folder with
    ``indiana_reports.csv``), or the R2Gen root (with ``annotation.json``); ``None`` ingests the
    reports alone (marked as having no images). ``reports`` overrides the OpenI XML source
    (default: the archive torchxrayvision ships).
    """
    problems = ProblemLog(strict=strict)
    meta_path = bundled_dicom_metadata() if dicom_metadata == "bundled" else dicom_metadata
    dicom = dicom_views(Path(meta_path) if meta_path else None)
    pixels = pixel_views(bundled_pixel_views() if dicom_metadata == "bundled" else None)
    if layout == "openi":
        records, info = _openi_records(images, reports, findings, dicom, pixels, problems)
    elif layout == "kaggle":
        if images is None:
            raise DataError("the kaggle layout needs the dataset folder (with indiana_reports.csv)")
        by_key = {_dicom_key(i): v for i, v in pixels.items()}  # Kaggle names drop the _1_
        records, info = _kaggle_records(Path(images), findings, dicom, by_key, problems)
    elif layout == "r2gen":
        if images is None:
            raise DataError("the r2gen layout needs the dataset folder (with annotation.json)")
        records, info = _r2gen_records(Path(images), reports, findings, dicom, problems)
    else:
        raise DataError(f"unknown IU X-ray layout {layout!r}; choose openi, kaggle or r2gen")
    if layout == "kaggle":
        for rec in records:
            reason = implausible_views(rec["views"])
            if reason:
                problems.add("implausible-views", rec["study_id"], f"{reason}; kept as "
                             "indiana_projections.csv says")  # fmt: skip
    for rec in records:
        if not any(rec.get(s) for s in REPORT_SECTIONS):
            problems.add("empty-report", rec["study_id"], "report has no comparison, indication, findings or impression")
    has_pixels = any(v.get("path") for r in records for v in r["views"])
    labels = [ABNORMAL, *(f.name for f in findings)]
    tasks = {"normal-abnormal": [ABNORMAL], "multilabel": [f.name for f in findings]}
    info.update(layout=layout, findings={f.name: list(f.mesh_terms) for f in findings},
                label_source="MeSH major terms of the OpenI report (derived from the report text)")
    manifest = Manifest.from_records(
        records, dataset=DATASET, labels=labels, tasks=tasks,
        images="real" if has_pixels else "none",
        problems={"counts": problems.counts(), "examples": problems.to_records()}, info=info,
    )
    return manifest, problems


def _study_record(report: OpenIReport, views: list[dict[str, Any]], findings: tuple[Finding, ...],
                  dicom: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ages = [dicom.get(_dicom_key(v["image_id"]), {}).get("age") for v in views]
    return {
        "study_id": report.study_id,
        "patient_id": str(report.number),
        "views": views,
        **report.sections,
        "report": report.text() or None,
        "source_labels": report.mesh_major,
        "age": next((a for a in ages if a is not None), None),
        "labels": iu_labels(report.mesh_major, findings),
    }


def _openi_records(images: Path | None, reports: Path | None, findings: tuple[Finding, ...],
                   dicom: dict[str, dict[str, Any]], pixels: dict[str, str],
                   problems: ProblemLog) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    source = Path(reports) if reports else bundled_reports()
    image_dir = Path(images) if images else None
    if image_dir is not None and not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder does not exist")
    available = {p.stem: p for p in image_dir.rglob("*.png")} if image_dir else {}
    records = []
    seen: dict[int, str] = {}
    for report in iter_openi_reports(source, problems):
        if report.number in seen:
            problems.add("duplicate-report", report.where,
                         f"report id {report.study_id} is also in {seen[report.number]}; "
                         "the first is kept")
            continue
        seen[report.number] = report.where
        views, header_views, changed = [], [], []
        for image_id in report.image_ids:
            path = available.get(image_id)
            if image_dir is not None and path is None:
                problems.add("missing-image", f"{report.study_id}/{image_id}", f"no {image_id}.png under {image_dir}")
            meta = dicom.get(_dicom_key(image_id), {})
            header = meta.get("header_view", "UNKNOWN")
            view, source = resolve_view(header, meta.get("code_view"),
                                        pixels.get(image_id) or pixels.get(_dicom_key(image_id)))
            if view_kind(view) != view_kind(header) and header != "UNKNOWN":
                changed.append(f"{image_id} {header} -> {view} ({source})")
            views.append({"image_id": image_id, "path": str(path.resolve()) if path else None,
                          "view": view})
            header_views.append({"image_id": image_id, "view": header})
        reason = implausible_views(header_views)
        after = implausible_views(views)
        if after:
            reason = (f"{reason}; " if reason else "") + f"as corrected: {after}"
        if reason or changed:
            fix = f"; taken as {', '.join(changed)}" if changed else "; no other source to correct it"
            problems.add("implausible-views" if reason else "view-disagrees", report.study_id,
                         f"{reason or 'the DICOM View Position disagrees with a better source'}{fix}")
        records.append(_study_record(report, views, findings, dicom))
    records.sort(key=lambda r: int(r["patient_id"]))
    return records, {"reports": str(source), "images": str(image_dir) if image_dir else None,
                     "view_source": "pixel-derived view (torchxrayvision t-SNE) where present, "
                                    "else a lateral DICOM View Position, else the CR processing "
                                    "code, else the DICOM View Position (see implausible-views "
                                    "and view-disagrees problems)"}


def _kaggle_view(image_id: str, projection: str, view: str, dicom: dict[str, dict[str, Any]],
                 pixels: dict[str, str]) -> tuple[str, str | None]:
    """The view of a Kaggle image and, when the OpenI metadata of the same image (``CXR`` +
    file stem) disagrees, why: the pixel-derived view replaces the projection; a lateral
    header or the processing code is reported and the projection kept (how often the
    projection table is wrong cannot be measured here: the real table is not on this machine).
    ``pixels`` is keyed by :func:`_dicom_key`."""
    openi_id = f"CXR{image_id}"
    pixel = pixels.get(_dicom_key(openi_id))
    if pixel is not None and view_kind(pixel) != view_kind(view):
        return pixel, (f"projection {projection!r} but the pixel-derived view (torchxrayvision "
                       f"t-SNE) of {openi_id} says {pixel}; {pixel} taken")  # fmt: skip
    meta = dicom.get(_dicom_key(openi_id))
    if pixel is not None or meta is None or view_kind(view) == "unknown":
        return view, None
    header, code = meta["header_view"], meta.get("code_view")
    other, source = ((header, "DICOM View Position") if view_kind(header) == "lateral"
                     else (code, "DICOM processing code"))  # fmt: skip
    if other is not None and view_kind(other) != view_kind(view):
        return view, (f"projection {projection!r} but the {source} of {openi_id} says {other}; "
                      "the projection kept")  # fmt: skip
    return view, None


def _kaggle_records(root: Path, findings: tuple[Finding, ...], dicom: dict[str, dict[str, Any]],
                    pixels: dict[str, str],
                    problems: ProblemLog) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reports_csv, proj_csv = root / "indiana_reports.csv", root / "indiana_projections.csv"
    reports = read_csv(reports_csv, ["uid", "MeSH", "indication", "comparison", "findings", "impression"],
                       problems)
    projections = read_csv(proj_csv, ["uid", "filename", "projection"], problems)
    image_dir = next((d for d in (root / "images" / "images_normalized", root / "images_normalized", root / "images")
                      if d.is_dir()), None)
    if image_dir is None:
        problems.add("missing-image-folder", str(root), "no images/images_normalized folder; ingesting reports only")
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for row_no, row in enumerate(projections.itertuples(index=False), start=2):
        if not row.uid.strip().isdigit():
            problems.add("malformed-row", f"{proj_csv}:{row_no}", f"uid {row.uid!r} is not a number")
            continue
        path = image_dir / row.filename if image_dir else None
        if path is not None and not path.exists():
            problems.add("missing-image", f"{proj_csv}:{row_no}", f"{path} not found")
            path = None
        image_id = row.filename.removesuffix(".png").removesuffix(".dcm")
        view = normalise_view(row.projection)
        if view == "UNKNOWN" and row.projection.strip().upper() not in ("", "UNKNOWN"):
            problems.add("unknown-view", f"{proj_csv}:{row_no}",
                         f"projection {row.projection!r} is not a known view (Frontal, Lateral, "
                         "PA, AP, LL); the image is kept with view UNKNOWN")
        view, disagreement = _kaggle_view(image_id, row.projection, view, dicom, pixels)
        if disagreement:
            problems.add("view-disagrees", f"{proj_csv}:{row_no}", disagreement)
        by_uid.setdefault(row.uid.strip(), []).append(
            {"image_id": image_id, "path": str(path.resolve()) if path else None, "view": view})
    records: list[dict[str, Any]] = []
    seen: dict[int, str] = {}
    for row_no, row in enumerate(reports.itertuples(index=False), start=2):
        uid = row.uid.strip()
        if not uid.isdigit():
            problems.add("malformed-row", f"{reports_csv}:{row_no}", f"uid {row.uid!r} is not a number")
            continue
        sections = {s: (" ".join(getattr(row, s).split()) or None) for s in REPORT_SECTIONS}
        where = f"{reports_csv}:{row_no}"
        if int(uid) in seen:
            problems.add("duplicate-report", where, f"uid {uid} is also at {seen[int(uid)]}; "
                         "the first is kept")
            continue
        seen[int(uid)] = where
        mesh = _known_mesh(row.MeSH, where, problems)
        report = OpenIReport(int(uid), sections, mesh, [], where=where)
        records.append(_study_record(report, by_uid.get(uid, []), findings, dicom))
    return records, {"reports": str(reports_csv), "projections": str(proj_csv),
                     "images": str(image_dir) if image_dir else None, "view_source": "indiana_projections.csv"}


MESH_TERM = re.compile(r"[A-Za-z][A-Za-z0-9 ,'()/-]*")
"""A MeSH term of the Kaggle CSV: a heading that starts with a letter, then optional
``/qualifier`` parts (``Cardiomegaly/borderline``); numbers alone are not terms."""


def _known_mesh(cell: str, where: str, problems: ProblemLog) -> list[str]:
    """The MeSH terms of a Kaggle ``MeSH`` cell; a value that is not a term is a counted
    problem and left out of the labels (a study left with none is unlabelled)."""
    terms = []
    for term in (m.strip() for m in cell.split(";")):
        if not term:
            continue
        if MESH_TERM.fullmatch(term) is None:
            problems.add("unknown-mesh", where, f"MeSH value {term!r} is not a MeSH term; "
                         "left out of the labels")
            continue
        terms.append(term)
    return terms


def _r2gen_records(root: Path, reports: Path | None, findings: tuple[Finding, ...], dicom: dict[str, dict[str, Any]],
                   problems: ProblemLog) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    annotation = root / "annotation.json"
    if not annotation.exists():
        raise DataError(f"{annotation}: file not found")
    try:
        splits = json.loads(annotation.read_bytes())  # bytes: UTF-8, UTF-16 or UTF-32
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{annotation}: malformed JSON ({exc})") from exc
    except RecursionError as exc:
        raise DataError(f"{annotation}: JSON nested too deeply (arrays or objects inside each "
                        "other hundreds of levels down)") from exc
    if not isinstance(splits, dict):
        raise DataError(f"{annotation}: expected an object of splits (train, val, test), got "
                        f"a JSON {type(splits).__name__}")
    xml_source = Path(reports) if reports else bundled_reports()
    openi = {r.number: r for r in iter_openi_reports(xml_source, ProblemLog())}
    image_dir = root / "images" if (root / "images").is_dir() else root
    records = []
    for split, entries in splits.items():
        if not isinstance(entries, list):
            raise DataError(f"{annotation}: split {split!r} is a JSON {type(entries).__name__}, "
                            "not a list of entries")  # fmt: skip
        for i, entry in enumerate(entries):
            where = f"{annotation}:{split}[{i}]"
            if not isinstance(entry, dict):
                problems.add("malformed-row", where, f"entry is a JSON {type(entry).__name__}, not an object")
                continue
            match = re.match(r"CXR(\d+)_", str(entry.get("id", "")))
            if match is None or not isinstance(entry.get("image_path"), list):
                problems.add("malformed-row", where, "entry needs an id like CXR2384_IM-0942 and an image_path list")
                continue
            number = int(match.group(1))
            base = openi.get(number) or OpenIReport(number, {s: None for s in REPORT_SECTIONS}, [], [])
            if number not in openi:
                problems.add("unlabelled", where, f"report CXR{number} not in {xml_source}; no labels or sections")
            views = []
            for rel in entry["image_path"]:
                path = image_dir / rel
                if not path.exists():
                    problems.add("missing-image", where, f"{path} not found")
                views.append({"image_id": f"{entry['id']}/{Path(rel).stem}",
                              "path": str(path.resolve()) if path.exists() else None, "view": "UNKNOWN"})
            record = _study_record(base, views, findings, dicom)
            record["report"] = entry.get("report") or record["report"]
            record["split"] = {"validate": "val"}.get(split, split) if split in ("train", "val", "test", "validate") else None
            records.append(record)
    return records, {"annotation": str(annotation), "reports": str(xml_source), "images": str(image_dir),
                     "view_source": "none (R2Gen keeps no view positions)", "split_source": "annotation.json"}
