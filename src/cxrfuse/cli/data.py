"""Data verbs: ``ingest`` (IU X-ray, MIMIC-CXR, NIH, any table), ``split``, ``phantoms``, ``stats``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrfuse.cli import app, console, csv_list, friendly_errors
from cxrfuse.problems import ProblemLog

ingest_app = typer.Typer(help="Turn a dataset layout on disk into a study manifest (Parquet).", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
_csv = csv_list


def _report_ingest(manifest: Any, problems: ProblemLog, out: Path) -> None:
    from cxrfuse.data.image_hashes import (
        HASH_AT_INGEST_MAX,
        add_image_hashes,
        cache_path_for,
        missing_hashes,
    )

    todo = missing_hashes(manifest)
    if 0 < todo <= HASH_AT_INGEST_MAX:
        manifest, unreadable = add_image_hashes(manifest, progress=True, cache=cache_path_for(out))
        for item in unreadable:
            problems.add("unreadable-image", item["path"], f"cannot hash: {item['error']}")
    elif todo:
        console.print(f"{todo} images: hashes left for `cxrfuse split` / `stats` to compute "
                      f"(more than {HASH_AT_INGEST_MAX:,})")
    path = manifest.save(out)
    console.print(f"wrote {len(manifest)} studies to [bold]{path}[/]")
    if len(problems):
        console.print(problems.summary())


def _overlap(manifest: Any, manifest_path: Path, workers: int | None,
             progress: bool) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The manifest with its image hashes (through the hash cache next to it) and its overlap
    report, with ``hashing``: how many were hashed now, taken from the cache or stored. A
    warning (a damaged cache, rebuilt) is one ``warning:`` line on stderr."""
    import warnings

    from cxrfuse.cli import err_console
    from cxrfuse.data.image_hashes import cache_path_for, hash_images, manifest_overlap

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        manifest, _, counts = hash_images(manifest, progress=progress, workers=workers,
                                          cache=cache_path_for(manifest_path))  # fmt: skip
    for item in caught:
        err_console.print(f"[yellow]warning:[/] {item.message}", soft_wrap=True, highlight=False)
    return manifest, {**manifest_overlap(manifest), "hashing": counts.to_dict()}


class IULayout(str, Enum):
    openi = "openi"
    kaggle = "kaggle"
    r2gen = "r2gen"


class LabelPolicy(str, Enum):
    ignore = "ignore"
    zero = "zero"
    one = "one"


@ingest_app.command("iu-xray")
@friendly_errors
def ingest_iu_xray_cmd(
    out: Annotated[Path, typer.Option(help="Manifest to write (.parquet).")],
    images: Annotated[Path | None, typer.Option(help="Image folder (openi), dataset folder (kaggle, r2gen).")] = None,
    reports: Annotated[Path | None, typer.Option(help="OpenI XML: NLMCXR_reports.tgz or a folder. Default: torchxrayvision's copy.")] = None,
    layout: Annotated[IULayout, typer.Option(help="Which IU X-ray layout the files follow.")] = IULayout.openi,
    findings: Annotated[str | None, typer.Option(help="Comma-separated finding vocabulary; 'Name=MeSH A|MeSH B' adds synonyms.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first problem instead of collecting them.")] = False,
) -> None:
    """Ingest IU X-ray (OpenI) reports and images.

    Example: `cxrfuse ingest iu-xray --out iu.parquet` (the reports torchxrayvision ships, no images);
    `cxrfuse ingest iu-xray --images NLMCXR_png --out iu.parquet`;
    `cxrfuse ingest iu-xray --layout kaggle --images archive/ --out iu.parquet`.
    """
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.labels import parse_findings

    manifest, problems = ingest_iu_xray(images, reports=reports, layout=layout.value,
                                        findings=parse_findings(_csv(findings)), strict=strict)
    _report_ingest(manifest, problems, out)


@ingest_app.command("mimic-cxr")
@friendly_errors
def ingest_mimic_cmd(
    root: Annotated[Path, typer.Option(help="MIMIC-CXR-JPG root (the folder with mimic-cxr-2.0.0-*.csv.gz and files/).")],
    out: Annotated[Path, typer.Option(help="Manifest to write (.parquet).")],
    reports: Annotated[Path | None, typer.Option(help="mimic-cxr-reports.zip, if not under ROOT.")] = None,
    views: Annotated[str, typer.Option(help="Comma-separated view positions to keep, or 'all'.")] = "PA",
    one_per_subject: Annotated[bool, typer.Option(help="Keep one image (and study) per subject.")] = False,
    uncertain: Annotated[LabelPolicy, typer.Option(help="CheXpert -1 (uncertain) becomes: ignore (NaN), zero or one.")] = LabelPolicy.ignore,
    blank: Annotated[LabelPolicy, typer.Option(help="Blank CheXpert values become: ignore (NaN), zero or one.")] = LabelPolicy.zero,
    task: Annotated[str | None, typer.Option(help="Restrict rows to a task, e.g. 'pneumonia-vs-no-finding'.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the one-per-subject choice.")] = 0,
    strict: Annotated[bool, typer.Option(help="Stop at the first problem.")] = False,
) -> None:
    """Ingest MIMIC-CXR-JPG (metadata, CheXpert labels, official split, reports).

    Example: `cxrfuse ingest mimic-cxr --root physionet.org/files/mimic-cxr-jpg/2.0.0 --task pneumonia-vs-no-finding --out mimic.parquet`
    """
    from cxrfuse.data.mimic_cxr import ingest_mimic_cxr

    manifest, problems = ingest_mimic_cxr(
        root, reports=reports, views=None if views.strip().lower() == "all" else _csv(views),
        one_image_per_subject=one_per_subject, uncertain=uncertain.value, blank=blank.value,
        task=task, seed=seed, strict=strict)
    _report_ingest(manifest, problems, out)


@ingest_app.command("nih")
@friendly_errors
def ingest_nih_cmd(
    csv: Annotated[Path, typer.Option(help="Data_Entry_2017-style CSV.")],
    images: Annotated[Path, typer.Option(help="Folder holding the PNG files.")],
    out: Annotated[Path, typer.Option(help="Manifest to write (.parquet).")],
    views: Annotated[str, typer.Option(help="Comma-separated view positions to keep, or 'all'.")] = "all",
    strict: Annotated[bool, typer.Option(help="Stop at the first problem.")] = False,
) -> None:
    """Ingest NIH ChestX-ray14 (image-only: no reports).

    Example: `cxrfuse ingest nih --csv ../shared/data/nih-cxr14-sample/labels.csv --images ../shared/data/nih-cxr14-sample/images --out nih.parquet`
    """
    from cxrfuse.data.nih import ingest_nih

    manifest, problems = ingest_nih(csv, images, views=None if views.strip().lower() == "all" else _csv(views),
                                    strict=strict)
    _report_ingest(manifest, problems, out)


@ingest_app.command("csv")
@friendly_errors
def ingest_csv_cmd(
    out: Annotated[Path, typer.Option(help="Manifest to write (.parquet).")],
    spec: Annotated[Path | None, typer.Option(help="YAML column mapping (see configs/ingest-csv-example.yaml).")] = None,
    table: Annotated[Path | None, typer.Option(help="The table (.csv, .tsv, .parquet); overrides the spec's.")] = None,
    images: Annotated[Path | None, typer.Option(help="Base folder of relative image paths.")] = None,
    study: Annotated[str | None, typer.Option(help="Study id column.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient id column.")] = None,
    image: Annotated[str | None, typer.Option(help="Image path column; comma-separated columns for a wide table.")] = None,
    view: Annotated[str | None, typer.Option(help="View column (comma-separated per image column for a wide table).")] = None,
    label: Annotated[list[str] | None, typer.Option(help="NAME=COLUMN (0/1/-1/blank, yes/no) or NAME=COLUMN:VALUE|VALUE (positive classes); repeatable.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name stored in the manifest.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a spec key, e.g. demographics.age=age_years.")] = None,
    strict: Annotated[bool, typer.Option(help="Stop at the first problem.")] = False,
) -> None:
    """Ingest any CSV/TSV/Parquet table with a column mapping (long: one image per row, rows grouped by study; wide: a list of image columns).

    Example: `cxrfuse ingest csv --spec configs/ingest-csv-example.yaml --out site.parquet`;
    `cxrfuse ingest csv --table export.csv --study accession --patient mrn --image png_path --label "pneumonia=dx pneumonia" --out site.parquet`
    """
    from cxrfuse.config import load_table_spec
    from cxrfuse.data.table_ingest import ingest_table

    overrides: dict[str, Any] = {"table": str(table) if table else None, "images": str(images) if images else None,
                                 "study": study, "patient": patient, "dataset": dataset}
    if image:
        columns = _csv(image) or []
        overrides["image"] = columns if len(columns) > 1 else columns[0]
    if view:
        views = _csv(view) or []
        overrides["view"] = views if isinstance(overrides.get("image"), list) else views[0]
    if label:
        overrides["labels"] = dict(_label_flag(item) for item in label)
    manifest, problems = ingest_table(load_table_spec(spec, overrides, set_ or []), strict=strict)
    _report_ingest(manifest, problems, out)


def _label_flag(item: str) -> tuple[str, dict[str, Any]]:
    """``"covid=final dx:COVID-19|SARS"`` -> ``("covid", {"column": "final dx", "positive": [...]})``."""
    from cxrfuse.problems import ConfigError

    name, sep, rest = item.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ConfigError(f"--label {item!r}: expected NAME=COLUMN or NAME=COLUMN:VALUE|VALUE")
    column, colon, values = rest.partition(":")
    entry: dict[str, Any] = {"column": column.strip()}
    if colon:
        entry["positive"] = [v.strip() for v in values.split("|") if v.strip()]
    return name.strip(), entry


@app.command("split")
@friendly_errors
def split_cmd(
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest to split.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the split manifest (default: in place).")] = None,
    fractions: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.7,0.1,0.2",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    task: Annotated[str | None, typer.Option(help="Task or label to stratify on (default: all labels).")] = None,
    folds: Annotated[int, typer.Option(help="Also assign k-fold indices over train+val (0 = none).")] = 0,
    keep_existing: Annotated[bool, typer.Option(help="Keep a split the source already has (MIMIC, R2Gen).")] = False,
    overlap: Annotated[bool, typer.Option(help="Hash the images (stored in the manifest) and report copies and near duplicates shared across splits and patients.")] = True,
    workers: Annotated[int | None, typer.Option(help="Processes that hash images (default: the CPUs).")] = None,
) -> None:
    """Patient-level, stratified, seeded train/val/test split (and optional k folds), stored in the manifest.

    Example: `cxrfuse split iu.parquet --fractions 0.7,0.1,0.2 --task multilabel --seed 0 --folds 5`
    """
    from cxrfuse.data import read_manifest
    from cxrfuse.data.splits import assign_folds, assign_splits, check_patient_leakage
    from cxrfuse.stats import render_summary

    manifest = read_manifest(manifest_path)
    if not (keep_existing and manifest.df["split"].notna().all()):
        parts = [float(x) for x in _csv(fractions) or []]
        manifest = assign_splits(manifest, tuple(parts), seed=seed, task=task)  # type: ignore[arg-type]
    check_patient_leakage(manifest, manifest_path)
    if folds:
        manifest = assign_folds(manifest, folds, seed=seed, task=task)
    report = None
    if overlap:
        manifest, report = _overlap(manifest, manifest_path, workers, progress=True)
    path = manifest.save(out or manifest_path)
    console.print(render_summary(manifest, overlap=report))
    console.print(f"wrote [bold]{path}[/] (no patient is in two splits)")


@app.command("phantoms")
@friendly_errors
def phantoms_cmd(
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest whose studies get phantom images.")],
    out: Annotated[Path, typer.Option(help="Output folder (images/, masks/, manifest.parquet).")],
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed; each study's phantom depends only on the seed and its id.")] = 0,
    lateral: Annotated[bool, typer.Option(help="Also render a lateral view.")] = True,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
) -> None:
    """Render label-conditioned synthetic radiographs (and lesion masks) for every study.

    The pixels are synthetic: use them to exercise the pipeline where real images are not at hand.
    Example: `cxrfuse phantoms iu.parquet --out phantoms/ --size 256`
    """
    from cxrfuse.data import read_manifest
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms

    manifest = read_manifest(manifest_path)
    config = PhantomConfig(size=size, seed=seed, lateral=lateral)
    result = make_phantoms(manifest, out, config, workers=workers)
    console.print(f"wrote phantoms for {len(result)} studies; manifest [bold]{out / 'manifest.parquet'}[/]")


@app.command("stats")
@friendly_errors
def stats_cmd(
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest to describe.")],
    task: Annotated[str | None, typer.Option(help="Task for the leakage audit (default: each task of the manifest).")] = None,
    sections: Annotated[str, typer.Option(help="Report sections the text models would read.")] = "findings,impression",
    mask: Annotated[bool, typer.Option(help="Audit the text after label-mention masking.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    overlap: Annotated[bool, typer.Option(help="Report images shared across splits and patients (hashes the images the manifest has no hashes for: kept in the hash cache next to the manifest, not in it).")] = True,
    workers: Annotated[int | None, typer.Option(help="Processes that hash images (default: the CPUs).")] = None,
) -> None:
    """Summarise a manifest: studies, views, sections, label prevalence, splits, problems, and the text leakage audit.

    Example: `cxrfuse stats iu.parquet --sections findings,impression` or `cxrfuse stats iu.parquet --sections indication --json`
    """
    from cxrfuse.data import read_manifest
    from cxrfuse.runtime import environment_info
    from cxrfuse.stats import manifest_summary, render_summary
    from cxrfuse.text import TextConfig, audit_leakage

    manifest = read_manifest(manifest_path)
    config = TextConfig(sections=_csv(sections) or [], mask_labels=mask)
    tasks = [task] if task else list(manifest.tasks)
    # one pass of sections + cleaning shared by every task (cached in cxrfuse.text), masking per task
    audits = ({t: audit_leakage(manifest, config, task=t, progress=not as_json) for t in tasks}
              if manifest.has_report().any() else {})
    environment = environment_info()
    report = None
    if overlap:
        report = _overlap(manifest, manifest_path, workers, progress=not as_json)[1]
    if as_json:
        summary = manifest_summary(manifest)
        summary["image_overlap"] = report
        summary["leakage_audit"] = {t: a.to_dict() for t, a in audits.items()}
        summary["environment"] = environment
        console.print_json(json.dumps(summary, default=str))
        return
    console.print(render_summary(manifest, overlap=report))
    for audit in audits.values():
        console.print(audit.render())
    packages = ", ".join(f"{k} {v}" for k, v in environment["packages"].items() if v)
    console.print(f"environment: python {environment['python']}, {environment['cpu_threads']} "
                  f"torch CPU thread(s), {environment['device']}; {packages}",
                  highlight=False, soft_wrap=True)
