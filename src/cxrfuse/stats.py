"""What is in a manifest: counts, views, report sections, label prevalence, splits, problems."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from cxrfuse.data import patients_in_two_splits, split_summary
from cxrfuse.data.manifest import Manifest
from cxrfuse.vocab import REPORT_SECTIONS


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    """Plain-data summary of a manifest (JSON-serialisable)."""
    df = manifest.df
    views = Counter(v["view"] for vs in df["views"] for v in vs)
    n_images = int(df["views"].map(len).sum())
    on_disk = int(df["views"].map(lambda vs: sum(bool(v["path"]) for v in vs)).sum())
    labels = {}
    for name, col in zip(manifest.labels, manifest.label_columns):
        values = df[col]
        known = int(values.notna().sum())
        labels[name] = {"positive": int(np.nansum(values)), "known": known,
                        "prevalence": float(np.nansum(values) / known) if known else None}
    return {
        "dataset": manifest.dataset,
        "images": manifest.images,
        "studies": len(df),
        "patients": int(df["patient_id"].nunique()),
        "images_listed": n_images,
        "images_on_disk": on_disk,
        "studies_with_images": int(manifest.has_images().sum()),
        "studies_with_report": int(manifest.has_report().sum()),
        "views": dict(views.most_common()),
        "views_per_study": {int(k): int(v) for k, v in df["views"].map(len).value_counts().sort_index().items()},
        "sections": {s: int(df[s].fillna("").str.strip().astype(bool).sum()) for s in REPORT_SECTIONS},
        "labels": labels,
        "tasks": manifest.tasks,
        "splits": {str(k): int(v) for k, v in df["split"].fillna("(none)").value_counts().items()},
        "problems": manifest.problems.get("counts", {}),
        "patients_in_two_splits": patients_in_two_splits(manifest),
    }


def render_overlap(report: dict[str, Any]) -> list[Any]:
    """:func:`~cxrfuse.data.image_hashes.manifest_overlap` as a table, and a red line per finding."""
    from rich.text import Text

    if not report["images"]:
        return []  # no image on disk: nothing to compare
    table = Table(title=f"images shared between studies ({report['hashed']} of {report['images']} "
                        f"images hashed; near: perceptual-hash distance <= {report['threshold']})")
    for col in ("pairs", "exact", "near", "images", "examples"):
        table.add_column(col, justify="right" if col in ("exact", "near", "images") else "left")
    names = {"across_splits": "across splits", "across_patients": "across patients",
             "same_patient": "same patient, other study"}
    for kind, name in names.items():
        block = report[kind]
        examples = "; ".join(f"{e['a']['image_id']} ({e['a']['split'] or '-'}) ~ {e['b']['image_id']} "
                             f"({e['b']['split'] or '-'}): {e['match']}" for e in block["examples"][:3])
        table.add_row(name, str(block["exact"]), str(block["near"]), str(block["images"]), examples or "-")
    parts: list[Any] = [table]
    if not report["near_searched"]:
        parts.append(Text(report.get("near_skipped") or "near duplicates not searched: exact "
                          "copies only"))
    if report["unhashed"]:
        parts.append(Text(f"{report['unhashed']} image(s) could not be read and were not compared"))
    if report.get("hashing"):
        h = report["hashing"]
        parts.append(Text(f"image hashes: {h['hashed']} hashed now ({h['workers']} worker(s)), "
                          f"{h['cached']} from the cache, {h['in_manifest']} stored in the manifest"))
    for kind in ("across_splits", "across_patients"):
        block = report[kind]
        if block["exact"] or block["near"]:
            parts.append(Text(f"WARNING: {block['exact']} exact and {block['near']} near-duplicate image "
                              f"pair(s) {names[kind]}: the same radiograph may be in two places",
                              style="bold red"))
    return parts


def render_summary(manifest: Manifest, overlap: dict[str, Any] | None = None) -> Group:
    """The summary as rich tables for the terminal (with the image overlap report, if given)."""
    s = manifest_summary(manifest)
    overview = Table(title=f"{s['dataset']} manifest", show_header=False)
    for key in ("studies", "patients", "images_listed", "images_on_disk", "studies_with_images",
                "studies_with_report"):
        overview.add_row(key.replace("_", " "), str(s[key]))
    overview.add_row("pixels", {"phantom": "synthetic phantoms (not real radiographs)",
                                "real": "real images", "none": "none on disk"}[s["images"]])
    overview.add_row("views", ", ".join(f"{k} {v}" for k, v in s["views"].items()) or "-")
    overview.add_row("views per study", ", ".join(f"{k}: {v}" for k, v in s["views_per_study"].items()))
    overview.add_row("sections with text", ", ".join(f"{k} {v}" for k, v in s["sections"].items()))
    problems = [f"{k} {v}" for k, v in s["problems"].items()]
    if s["patients_in_two_splits"]:
        leaking = s["patients_in_two_splits"]
        examples = escape(", ".join(f"{p} ({'+'.join(v)})" for p, v in list(leaking.items())[:3]))
        problems.insert(0, f"[bold red]{len(leaking)} patient(s) in two splits[/] (e.g. {examples}): "
                           "train/experiment/evaluate refuse this manifest")
    overview.add_row("problems", ", ".join(problems) or "none")
    labels = Table(title="labels")
    for col in ("label", "positive", "known", "prevalence", "tasks"):
        labels.add_column(col, justify="right" if col in ("positive", "known", "prevalence") else "left")
    for name, row in s["labels"].items():
        tasks = ", ".join(t for t, names in manifest.tasks.items() if name in names)
        prevalence = "-" if row["prevalence"] is None else f"{row['prevalence']:.3f}"
        labels.add_row(name, str(row["positive"]), str(row["known"]), prevalence, tasks)
    parts: list[Any] = [overview, labels]
    if manifest.df["split"].notna().any():
        table = split_summary(manifest).T
        splits = Table(title="splits (label rows: positives/known)")
        splits.add_column("")
        for col in table.columns:
            splits.add_column(str(col), justify="right")
        for idx, row in table.iterrows():
            splits.add_row(str(idx), *[str(v) for v in row])
        parts.append(splits)
    if overlap is not None:
        parts += render_overlap(overlap)
    return Group(*parts)
