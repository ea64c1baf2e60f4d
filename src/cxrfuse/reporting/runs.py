"""Report sections of a fusion run and of an experiment (a grid of runs): overview with the
synthetic-image and text-leakage banners, data, text configuration and leakage audit,
configuration, results with intervals, ablations, explanations, plots, environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrfuse.data import split_summary
from cxrfuse.data.manifest import read_manifest
from cxrfuse.evaluation import (
    HEADLINE,
    format_value,
    modality_name,
    run_conclusion,
)
from cxrfuse.evaluation.run import resolve_manifest
from cxrfuse.problems import CxrfuseError
from cxrfuse.reporting.document import Section
from cxrfuse.reporting.external import external_section, subgroup_section
from cxrfuse.rundir import RunDir, layout
from cxrfuse.stats import manifest_summary

PHANTOM_NOTE = (
    "The images are synthetic phantoms, rendered from each study's labels; no number in this "
    "report says anything about real radiographs."
)


# ------------------------------------------------------------------------------ run report


def run_sections(run_dir: Path) -> tuple[str, list[Section]]:
    run = RunDir(run_dir).info().model_dump()
    metrics = RunDir(run_dir).metrics().as_result()
    title = f"cxrfuse report: run {metrics['run']}"
    top = Section("Overview")
    if "verdicts" in metrics["test"]:
        top.add("text", f"**Conclusion.** {run_conclusion(metrics)}")
    top.add(
        "text",
        f"Task **{run.get('task')}** ({len(metrics['labels'])} label(s)), modalities "
        f"**{' + '.join(metrics['modalities'])}** ({modality_name(metrics['modalities'])}), seed "
        f"{run.get('seed')}, status {run.get('status')}; evaluated {metrics.get('evaluated')}.",
    )
    _banners(top, [run], [metrics])
    for banner in verdict_banners(metrics["test"].get("verdicts", []), len(metrics["labels"])):
        top.add("warning", banner)
    top.add(
        "table",
        headline_table(metrics),
        "Test metrics at val-chosen thresholds "
        f"({metrics['threshold_method']}), 95 % bootstrap intervals over {metrics['n_boot']} "
        "resamples of test studies, beside the trivial rules on the same studies (always "
        "positive, always negative; AUROC's chance line 0.5; AUPRC of a random ranking = "
        "prevalence).",
    )
    sections = [
        top,
        data_section(run, run_dir),
        text_section([metrics]),
        config_section(RunDir(run_dir).config_path),
    ]
    results = Section("Results")
    results.add(
        "table",
        per_label_table(metrics),
        "Per label (test): n known, positives, prevalence, threshold chosen on val; F1 of "
        "calling every study positive beside the model's.",
    )
    if metrics["test"].get("verdicts"):
        results.add("table", verdict_table(metrics["test"]["verdicts"]),
                    "Verdicts: the conditions that hold for this run's test predictions")  # fmt: skip
    if len(metrics["labels"]) > 1:
        micro = ", ".join(f"{k} {format_value(v)}" for k, v in metrics["test"]["micro"].items())
        exact = metrics["test"]["exact_match"]
        results.add(
            "text",
            f"Micro averages over all known (study, label) pairs: {micro}. Exact-match accuracy "
            f"over {exact['studies']} studies with every label known: "
            f"{format_value(exact['accuracy'])}.",
        )
    for warning in metrics.get("threshold_warnings", []) + metrics["test"].get("warnings", []):
        results.add("note", warning)
    sections.append(results)
    sections += [subgroup_section(run_dir, metrics), external_section(run_dir)]
    ablations = Section("Ablations")
    _shuffle_blocks(ablations, [(metrics["run"], run_dir)])
    ablations.add(
        "text",
        "The unimodal vs multimodal table and the complementarity (Venn) diagram compare "
        "several runs: run `cxrfuse report` on the experiment directory that holds them.",
    )
    sections.append(ablations)
    sections.append(explanation_section([(metrics["run"], run_dir)]))
    plots = Section("Plots")
    for rel in _plot_order(metrics.get("plots", [])):
        plots.add("image", run_dir / rel, Path(rel).stem.replace("_", " "))
    sections.append(plots)
    sections.append(environment_section([(metrics["run"], run, metrics)]))
    return title, sections


def _plot_order(paths: Sequence[str]) -> list[str]:
    order = ["training_curves", "roc", "pr", "confusion", "reliability"]
    return sorted(
        paths, key=lambda p: order.index(Path(p).stem) if Path(p).stem in order else len(order)
    )


def _banners(
    section: Section, runs: Sequence[Mapping[str, Any]], metrics: Sequence[Mapping[str, Any]]
) -> None:
    if any(r.get("images") == "phantom" for r in runs):
        section.add("warning", PHANTOM_NOTE)
    for warning in dict.fromkeys((m.get("leakage") or {}).get("warning") for m in metrics):
        if warning:
            section.add("warning", f"Text leakage: {warning}")


KIND_PHRASES = {
    "chance": "not distinguishable from chance (the AUROC interval includes 0.5)",
    "trivial": "F1 no better than calling every study positive",
    "constant": "predictions that barely vary",
    "small_val": "a threshold chosen on fewer than 10 validation studies of a class",
}


def verdict_banners(verdicts: Sequence[Mapping[str, Any]], n_labels: int, run: str = ""
                    ) -> list[str]:  # fmt: skip
    """Red-banner texts for a run's verdicts: each message, or one line per kind listing the
    labels when a kind holds for more than three of them."""
    by_kind: dict[str, list[Mapping[str, Any]]] = {}
    for v in verdicts:
        by_kind.setdefault(v["kind"], []).append(v)
    prefix = f"Run {run}: " if run else ""
    out = []
    for kind, items in by_kind.items():
        if len(items) <= 3:
            out += [prefix + v["message"] for v in items]
        else:
            labels = ", ".join(str(v["label"]) for v in items if v.get("label"))
            out.append(f"{prefix}{KIND_PHRASES.get(kind, kind)} for {len(items)} of {n_labels} "
                       f"labels ({labels}); details in the Verdicts table.")  # fmt: skip
    return out


def verdict_table(verdicts: Sequence[Mapping[str, Any]], run: str | None = None) -> pd.DataFrame:
    """One row per verdict: (run,) label, kind, message."""
    return pd.DataFrame([({"run": v.get("run", run)} if run or "run" in v else {})
                         | {"label": v.get("label") or "(all)", "kind": v["kind"],
                            "message": v["message"]} for v in verdicts])  # fmt: skip


def _baseline_means(metrics: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Always-positive / always-negative metrics as the headline shows them (one label: its
    own; several: the macro mean over labels)."""
    base = metrics["test"].get("baselines") or {}
    out: dict[str, dict[str, float | None]] = {}
    for rule in ("always_positive", "always_negative"):
        out[rule] = {}
        for m in ("accuracy", "precision", "recall", "f1"):
            values = [b[rule][m] for b in base.values() if b[rule].get(m) is not None]
            out[rule][m] = sum(values) / len(values) if values else None
    prev = [b["prevalence"] for b in base.values() if b.get("prevalence") is not None]
    out["prevalence"] = {"auprc": sum(prev) / len(prev) if prev else None}
    return out


def headline_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    base = _baseline_means(metrics) if metrics["test"].get("baselines") else None
    rows = []
    for m in (*HEADLINE, "exact_match"):
        ci = metrics["ci"].get(f"headline/{m}", {})
        row = {
            "metric": m,
            "test": format_value(
                metrics["test"]["headline"].get(m), None, ci.get("low"), ci.get("high")
            ),
            "val": format_value(metrics["val"]["headline"].get(m)),
        }
        if base is not None:
            chance = {"auroc": 0.5, "auprc": base["prevalence"]["auprc"]}
            row["always positive"] = format_value(chance.get(m, base["always_positive"].get(m)))
            row["always negative"] = format_value(chance.get(m, base["always_negative"].get(m)))
        rows.append(row)
    return pd.DataFrame(rows)


def per_label_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name, m in metrics["test"]["per_label"].items():
        row: dict[str, Any] = {
            "label": name,
            "n": m["n"],
            "positives": m["positives"],
            "threshold": f"{m['threshold']:.3f}",
        }
        for k in ("auroc", "auprc", "precision", "recall", "f1"):
            ci = metrics["ci"].get(f"label/{name}/{k}", {})
            row[k] = format_value(m.get(k), None, ci.get("low"), ci.get("high"))
        row["ece"] = format_value(m.get("ece"))
        base = (metrics["test"].get("baselines") or {}).get(name)
        if base:
            row["prevalence"] = format_value(base["prevalence"])
            row["F1 always positive"] = format_value(base["always_positive"]["f1"])
        rows.append(row)
    return pd.DataFrame(rows)


def data_section(run: Mapping[str, Any], run_dir: Path) -> Section:
    section = Section("Data")
    n = run.get("n") or {}
    if n:
        section.add(
            "text",
            "Studies per split used by the model: "
            + ", ".join(f"{k} {v}" for k, v in n.items())
            + ".",
        )
    path = run.get("manifest")
    if not path:
        return section.add("note", "run.json names no manifest.")
    try:
        manifest = read_manifest(resolve_manifest(path, run_dir))
    except CxrfuseError as exc:
        return section.add(
            "note",
            f"manifest {path} is not readable here ({exc}); only the counts above are known.",
        )
    s = manifest_summary(manifest)
    overview = [
        ("dataset", s["dataset"]),
        ("studies", s["studies"]),
        ("patients", s["patients"]),
        ("images", f"{s['images_on_disk']} on disk of {s['images_listed']} listed ({s['images']})"),
        ("studies with report text", s["studies_with_report"]),
        ("views", ", ".join(f"{k} {v}" for k, v in s["views"].items()) or "-"),
        ("views per study", ", ".join(f"{k}: {v}" for k, v in s["views_per_study"].items())),
    ]
    section.add("table", pd.DataFrame(overview, columns=["item", "value"]), f"Manifest {path}")
    labels = [name for name in run.get("labels", []) if name in manifest.labels]
    prevalence = pd.DataFrame(
        [
            {
                "label": k,
                "positive": v["positive"],
                "known": v["known"],
                "prevalence": format_value(v["prevalence"]),
            }
            for k, v in s["labels"].items()
            if k in labels
        ]
    )
    section.add("table", prevalence, "Label prevalence (whole manifest)")
    if manifest.df["split"].notna().any():
        section.add(
            "table",
            split_summary(manifest, labels or None).reset_index(),
            "Splits (patient-level): studies, patients, positives/known per label",
        )
    return section


def text_section(metrics: Sequence[Mapping[str, Any]]) -> Section:
    section = Section("Text configuration and leakage")
    probes = [m.get("leakage") for m in metrics if m.get("leakage")]
    unique = list({str(p.get("text_config", p.get("skipped"))): p for p in probes}.values())
    if not unique:
        return section.add(
            "text", "No model in this report reads report text, so there is nothing to audit."
        )
    section.add(
        "text",
        "IU X-ray labels are derived from the report text, so a text model can read the label "
        "instead of the disease. The probe fits a TF-IDF + logistic regression model on the "
        "train split and scores test AUROC, once on the chosen text and once on the indication "
        "alone (written before the image is read). The audit counts studies whose prepared text "
        "still contains a label term, stock normal phrase or context word.",
    )
    for probe in unique:
        if "skipped" in probe:
            section.add("note", f"Leakage probe skipped: {probe['skipped']}")
            continue
        cfg = probe["text_config"]
        section.add(
            "text",
            f"**Text:** sections {' + '.join(cfg['sections'])}, label masking "
            f"{'on' if cfg['mask_labels'] else 'off'}; probe trained on {probe['train']} "
            f"studies, scored on {probe['test']}.",
        )
        if probe.get("warning"):
            section.add("warning", probe["warning"])
        elif probe.get("note"):
            section.add("note", probe["note"])
        else:
            section.add(
                "text",
                "The chosen text does not predict the labels much better than the indication "
                "alone (gap below 0.10 AUROC).",
            )
        rows = [
            {
                "label": k,
                "AUROC chosen text": format_value(v["chosen"]),
                "AUROC indication only": format_value(v["indication"]),
            }
            for k, v in probe["per_label"].items()
        ]
        paired = probe.get("paired") or {}
        rows.append(
            {
                "label": "macro",
                "AUROC chosen text": format_value(probe["macro"]["chosen"]),
                "AUROC indication only": format_value(probe["macro"]["indication"]),
            }
            | ({"difference [95 % paired CI]": format_value(
                paired.get("diff"), None, paired.get("low"), paired.get("high"))}
               if paired else {})
        )
        section.add("table", pd.DataFrame(rows), "Leakage probe (test AUROC of a words-only model)")
        audit = probe["audit"]
        section.add(
            "text",
            f"Audit: {audit['total_surviving']} surviving label-term/normal-phrase hits, "
            f"{audit['total_probe']} context-word hits in {audit['n_with_text']} studies with "
            "text; "
            f"mask tokens per study: mean {audit['masks_per_study']['mean']}.",
        )
        if audit["rows"]:
            section.add(
                "table",
                pd.DataFrame(
                    [
                        {
                            "kind": r["kind"],
                            "label": r["label"],
                            "terms": r["family"],
                            "studies": r["studies"],
                            "pos": r["positive"],
                            "neg": r["negative"],
                            "top surviving terms": ", ".join(
                                f"{t} ({n})" for t, n in r["top_terms"]
                            ),
                        }
                        for r in audit["rows"]
                    ]
                ),
                "Surviving terms",
            )
    return section


def config_section(path: Path, title: str = "Configuration") -> Section:
    section = Section(title)
    if not path.exists():
        return section.add("note", f"{path.name} not found.")
    try:
        text = yaml.safe_dump(yaml.safe_load(path.read_text()), sort_keys=False)
    except yaml.YAMLError:
        text = path.read_text()
    return section.add("code", text, path.name)


def _shuffle_blocks(section: Section, runs: Sequence[tuple[str, Path]]) -> None:
    rows = []
    for name, run_dir in runs:
        for modality, res in RunDir(run_dir).ablation().get("shuffle", {}).items():
            for metric, drop in res["drop"].items():
                if metric not in ("auroc", "f1", "accuracy"):
                    continue
                rows.append(
                    {
                        "run": name,
                        "shuffled": modality,
                        "metric": metric,
                        "baseline": format_value(res["baseline"][metric]),
                        "shuffled mean": format_value(res["baseline"][metric] - drop["mean"]),
                        "drop": format_value(drop["mean"], drop.get("sd")),
                        "drop range": f"{drop['min']:.3f} to {drop['max']:.3f}",
                        "drop 95 % CI": format_value(drop["mean"], None, drop.get("low"),
                                                     drop.get("high")),
                        "reading": SHUFFLE_READING.get(drop.get("status"), "-"),
                        "repeats": res["repeats"],
                    }
                )
    if rows:
        section.add(
            "table",
            pd.DataFrame(rows),
            "Bimodal sensitivity test: one modality's embeddings permuted "
            "across test studies (drop = baseline - shuffled, mean ± sd over repeats; 95 % "
            "paired-bootstrap interval of the mean drop over test studies: the model uses the "
            "modality only when it is above 0)",
        )
    else:
        section.add("note", "No shuffle test yet: `cxrfuse evaluate RUN --shuffle both` adds one.")


SHUFFLE_READING = {
    "evidence": "uses it",
    "against": "does better without it",
    "unclear": "too few studies to tell",
    "none": "ignores it",
}


ATTRIBUTION_INTRO = (
    "Modality attribution (`cxrfuse attribute`): per label, the mean |two-player Shapley value| "
    "of the image and of the report on the predicted probability, their shares, the signed "
    "means, and the leave-one-modality-out changes"
)
POINTING_INTRO = (
    "Grad-CAM scored against the phantoms' lesion masks (`cxrfuse explain --score`): pointing-"
    "game hit rate with 95 % CI next to smooth random maps, saliency mass inside the mask, "
    "deletion AUC (lower is more faithful)"
)


EXPLAIN_HINT = (
    "No explanations yet: `cxrfuse attribute RUN` splits each fused prediction into image and "
    "report parts; `cxrfuse explain RUN --score` scores Grad-CAM maps on phantoms."
)


def explanation_section(runs: Sequence[tuple[str, Path]], hint: str = EXPLAIN_HINT) -> Section:
    """What `cxrfuse attribute` and `cxrfuse explain --score` left in the run directories
    (``hint`` when nothing yet)."""
    section = Section("Explanations")
    found = False
    for name, run_dir in runs:
        run = RunDir(run_dir)
        summary = run.attribution_dir / f"{layout.ATTRIBUTION_SUMMARY}.csv"
        if summary.exists():
            found = True
            table = _formatted(pd.read_csv(summary))
            section.add("table", table, f"{ATTRIBUTION_INTRO}; run {name}.")
            if (run.attribution_dir / layout.ATTRIBUTION_PLOT).exists():
                section.add("image", run.attribution_dir / layout.ATTRIBUTION_PLOT,
                            f"Modality attribution per label, {name}")  # fmt: skip
        for method, folder in run.pointing_game_files():
            found = True
            section.add("table", _formatted(pd.read_csv(folder / f"{layout.POINTING_GAME}.csv")),
                        f"{POINTING_INTRO}; run {name}, {method} (synthetic phantoms).")  # fmt: skip
            for plot in (f"{layout.POINTING_GAME}.png", layout.DELETION_PLOT):
                if (folder / plot).exists():
                    section.add("image", folder / plot, f"{plot[:-4]}, {name}, {method}")
    if not found:
        section.add("note", hint)
    return section


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    """Floats to 3 decimals for display."""
    return table.apply(lambda col: col.map(format_value) if col.dtype.kind == "f" else col)


def environment_section(
    items: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
) -> Section:
    section = Section("Environment")
    rows = []
    for name, run, metrics in items:
        env = run.get("environment") or {}
        evaluation = metrics.get("environment", {})
        rows.append(
            {
                "run": name,
                "device": env.get("device", "-"),
                "python": env.get("python", "-"),
                "torch": env.get("torch", "-"),
                "CPU threads": env.get("cpu_threads", "-"),
                "cxrfuse": env.get("cxrfuse", "-"),
                "platform": env.get("platform", "-"),
                "training time (s)": format_value(run.get("timing_s"), digits=1),
            }
        )
    section.add("table", pd.DataFrame(rows), "Training environment (run.json)")
    if items:
        evaluation = items[0][2].get("environment", {})
        packages = ", ".join(f"{k} {v}" for k, v in evaluation.get("packages", {}).items() if v)
        section.add(
            "text",
            f"Evaluation: python {evaluation.get('python')} on {evaluation.get('platform')}; "
            f"{packages}.",
        )
    return section


# ------------------------------------------------------------------------------ experiment report
