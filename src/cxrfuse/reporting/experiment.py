"""The report of an experiment directory: overview, verdicts, per setting the modality table,
paired tests and complementarity, data, text, explanations, configuration, environment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrfuse.evaluation import (
    experiment_conclusion,
    format_table,
    format_value,
)
from cxrfuse.evaluation.experiment import (
    COMPLEMENTARITY_INTRO,
    PAIRED_INTRO,
    complementarity_table,
    paired_table,
)
from cxrfuse.reporting.document import Section
from cxrfuse.reporting.generation import generation_sections
from cxrfuse.reporting.runs import (
    _banners,
    _baseline_means,
    _shuffle_blocks,
    config_section,
    data_section,
    environment_section,
    explanation_section,
    text_section,
    verdict_banners,
    verdict_table,
)
from cxrfuse.rundir import ExperimentDir, RunDir


def modality_display(comp: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> pd.DataFrame:
    """The formatted modality table with the always-positive rule as a last row (from the
    test studies of one run of the setting)."""
    table = format_table(pd.DataFrame(comp["modality_table"]))
    if metrics is None or not metrics["test"].get("baselines"):
        return table
    base = _baseline_means(metrics)["always_positive"]
    row = {c: "" for c in table.columns} | {"modality": "Always positive (baseline)",
                                             "AUROC": "0.500", "Precision": format_value(
                                                 base["precision"]),
                                             "Recall": format_value(base["recall"]),
                                             "F1": format_value(base["f1"])}  # fmt: skip
    if "seeds" in table.columns:
        row["seeds"] = "-"
    return pd.concat([table, pd.DataFrame([{c: row.get(c, "") for c in table.columns}])],
                     ignore_index=True)  # fmt: skip



def experiment_sections(exp_dir: Path) -> tuple[str, list[Section]]:
    exp = ExperimentDir(exp_dir)
    evaluation = exp.evaluation()
    runs = {r["run"]: r for r in evaluation["runs"]}
    finished = [(name, exp_dir / r["dir"]) for name, r in runs.items() if r.get("headline")]
    run_json = {name: RunDir(d).info().model_dump() for name, d in finished}
    metrics = {name: RunDir(d).metrics().as_result() for name, d in finished}
    title = f"cxrfuse report: experiment {evaluation['experiment']}"
    top = Section("Overview")
    if all("verdicts" in m["test"] for m in metrics.values()):
        top.add("text", "**Conclusion.** "
                + (evaluation.get("conclusion") or experiment_conclusion(evaluation, metrics)))
    failed = [r for r in runs.values() if r["status"] != "finished"]
    top.add(
        "text",
        f"{len(runs)} run(s): {len(finished)} evaluated, {len(failed)} failed or unfinished. "
        f"Thresholds chosen on val ({evaluation['threshold_method']}), intervals from "
        f"{evaluation['n_boot']} bootstrap resamples of test studies.",
    )
    _banners(top, list(run_json.values()), list(metrics.values()))
    for name, m in metrics.items():
        for banner in verdict_banners(m["test"].get("verdicts", []), len(m["labels"]), name):
            top.add("warning", banner)
    for comp in evaluation["settings"]:
        setting_runs = [metrics[r] for r in comp["runs"] if r in metrics]
        top.add(
            "table",
            modality_display(comp, setting_runs[0] if setting_runs else None),
            f"Unimodal vs multimodal, setting {comp['setting']} "
            "(test; mean ± sd across seeds, or 95 % CI), and calling every test study positive",
        )
    sections = [top]
    if finished:
        first = finished[0]
        sections.append(data_section(run_json[first[0]], first[1]))
    sections.append(text_section(list(metrics.values())))
    sections.append(config_section(exp.config_path, "Configuration (experiment grid)"))
    results = Section("Results")
    rows = []
    for name, r in runs.items():
        row: dict[str, Any] = {
            "run": name,
            "setting": r.get("setting") or "-",
            "modalities": "+".join(r["modalities"]),
            "seed": r["seed"],
            "status": r["status"],
        }
        if name in metrics:
            for m in ("auroc", "f1", "exact_match"):
                ci = metrics[name]["ci"].get(f"headline/{m}", {})
                row[m] = format_value(
                    metrics[name]["test"]["headline"].get(m), None, ci.get("low"), ci.get("high")
                )
            kinds = dict.fromkeys(v["kind"] for v in metrics[name]["test"].get("verdicts", []))
            row["verdicts"] = ", ".join(kinds) or "-"
        else:
            row["auroc"] = (r.get("error") or "")[:120]
        rows.append(row)
    results.add("table", pd.DataFrame(rows), "Every run (test, 95 % bootstrap intervals)")
    every = [{"run": n, **v} for n, m in metrics.items() for v in m["test"].get("verdicts", [])]
    if every:
        results.add("table", verdict_table(every), "Verdicts of every run")
    sections.append(results)
    ablations = Section("Ablations")
    for comp in evaluation["settings"]:
        ablations.add("text", f"**Setting {comp['setting']}**")
        if comp.get("paired"):
            ablations.add(
                "table",
                paired_table(comp),
                f"{PAIRED_INTRO} Best unimodal: {comp['best_unimodal']}.",
            )
        if comp.get("complementarity"):
            ablations.add("table", complementarity_table(comp), COMPLEMENTARITY_INTRO)
        for rel in comp.get("plots", []):
            if rel.endswith("_venn.png"):
                ablations.add("image", exp_dir / rel, "Complementarity of the unimodal models")
    _shuffle_blocks(ablations, finished)
    sections.append(ablations)
    sections.append(explanation_section(finished))
    sections.extend(generation_sections(exp.generation_dirs()))
    plots = Section("Plots")
    for comp in evaluation["settings"]:
        for rel in comp.get("plots", []):
            if rel.endswith("_roc.png"):
                plots.add("image", exp_dir / rel, f"ROC by modality, setting {comp['setting']}")
    for name, run_dir in finished:
        if (
            len(run_json[name].get("modalities", [])) > 1
            and RunDir(run_dir).training_curves.exists()
        ):
            plots.add(
                "image", RunDir(run_dir).training_curves, f"Training curves, {name}"
            )
            break
    sections.append(plots)
    sections.append(environment_section([(n, run_json[n], metrics[n]) for n, _ in finished]))
    return title, sections


# ------------------------------------------------------------------------------ renderers
