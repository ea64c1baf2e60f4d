"""Report sections of a run's subgroup analysis and of its external validations (internal vs
external side by side, label alignment, recalibration)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrfuse.evaluation.external import (
    alignment_frame,
    overlap_message,
    recalibration_frame,
    side_by_side_frame,
    subgroup_intro,
)
from cxrfuse.evaluation.subgroups import subgroup_table
from cxrfuse.problems import CxrfuseError
from cxrfuse.reporting.document import Section
from cxrfuse.rundir import RunDir

EXTERNAL_HINT = ("No external validation yet: `cxrfuse evaluate RUN --on OTHER.parquet` scores "
                 "this run on another manifest (labels aligned across vocabularies).")  # fmt: skip


def _add_subgroups(section: Section, subgroups: Mapping[str, Any], root: Path, what: str) -> None:
    if "skipped" in subgroups:
        section.add("note", f"Subgroups skipped: {subgroups['skipped']}")
        return
    table = subgroup_table(subgroups)
    if not len(table):
        return
    section.add("table", table, f"{what}: {subgroup_intro(subgroups)}")
    for rel in subgroups.get("plots", []):
        section.add("image", root / rel, Path(rel).stem.replace("_", " "))


def subgroup_section(run_dir: Path, metrics: Mapping[str, Any]) -> Section:
    """Test metrics per sex, age band, view and dataset (what the manifest has)."""
    section = Section("Subgroups and calibration")
    if "subgroups" not in metrics:
        section.add("note", "Evaluated before subgroup analysis existed: rerun `cxrfuse evaluate`.")
        return section
    _add_subgroups(section, metrics["subgroups"], run_dir, "Internal test set")
    return section


def external_section(run_dir: Path) -> Section:
    """Every ``external/<name>/`` of the run: alignment, internal vs external, subgroups,
    recalibration, plots."""
    section = Section("External validation")
    externals = RunDir(run_dir).external_dirs()
    if not externals:
        section.add("text", EXTERNAL_HINT)
    for ext in externals:
        try:
            result = ext.result()
        except CxrfuseError as exc:
            section.add("warning", f"{ext.path}: {exc}")
            continue
        s = result["studies"]
        section.add("text", f"**{result['dataset']}** (`{result['manifest']}`, {result['images']} "
                    f"images): {s['scored']} of {s['in_manifest']} studies scored, at the run's "
                    f"val-chosen thresholds; {result['n_boot']} bootstrap resamples.")  # fmt: skip
        overlap = result.get("image_overlap")
        if overlap:
            section.add("warning" if overlap.get("found") else "note", overlap_message(overlap))
        if result.get("embedding", {}).get("warning"):
            section.add("warning", result["embedding"]["warning"])
        for v in result["external"].get("verdicts", []):
            section.add("warning", f"External set {result['dataset']}: {v['message']}")
        section.add("table", side_by_side_frame(result["side_by_side"]), "Internal test vs external.")
        section.add("table", alignment_frame(result["alignment"]),
                    "Label alignment (labels without a counterpart are listed, not scored).")  # fmt: skip
        _add_subgroups(section, result["subgroups"], ext.path, f"External set {result['dataset']}")
        if "recalibration" in result:
            r = result["recalibration"]
            section.add("table", recalibration_frame(r),
                        f"{r['method']} recalibration fitted on {r['calibration_studies']} studies "
                        f"({r['fraction']:.0%} of the patients), scored on the other "
                        f"{r['evaluation_studies']}.")  # fmt: skip
            for warning in r["warnings"]:
                section.add("note", warning)
        for rel in result.get("plots", []):
            if rel not in result["subgroups"].get("plots", []):
                section.add("image", ext.path / rel, f"{result['dataset']}: {Path(rel).stem.replace('_', ' ')}")
    return section
