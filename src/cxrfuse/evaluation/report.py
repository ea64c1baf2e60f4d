"""The human report of a run or an experiment: ``report.html`` (one self-contained file, images
embedded as base64 PNG, no JavaScript) and ``report.md`` (images linked) from the same content.

The content is built once as a list of :class:`Section` objects holding blocks (text, warning,
table, image, code); two small renderers turn it into Markdown and HTML (Jinja2).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from jinja2 import Environment

from cxrfuse.data.manifest import read_manifest
from cxrfuse.data.splits import split_summary
from cxrfuse.evaluation.ablation import format_table, format_value, modality_name
from cxrfuse.evaluation.metrics import HEADLINE
from cxrfuse.evaluation.run import (
    COMPLEMENTARITY_INTRO,
    PAIRED_INTRO,
    _resolve,
    complementarity_table,
    evaluate_experiment,
    evaluate_run,
    find_runs,
    paired_table,
    read_json,
)
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.stats import manifest_summary

PHANTOM_NOTE = (
    "The images are synthetic phantoms, rendered from each study's labels; no number in this "
    "report says anything about real radiographs."
)


@dataclass
class Block:
    kind: str  # "text", "warning", "note", "table", "image", "code"
    content: Any
    caption: str = ""


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, kind: str, content: Any, caption: str = "") -> Section:
        self.blocks.append(Block(kind, content, caption))
        return self


# ------------------------------------------------------------------------------ entry point
def write_report(path: str | Path, *, evaluate_if_missing: bool = True) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into a run, experiment or CLIP run directory.

    Evaluates first (default settings) when the run has no ``metrics.json`` (or the experiment
    no ``evaluation.json``); a CLIP run reports the analyses it holds. Returns the two paths.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    from cxrfuse.clip.checkpoint import is_clip_run

    if is_clip_run(root):
        from cxrfuse.clip.report import clip_sections  # CLIP runs have their own analyses

        title, sections = clip_sections(root)
    elif (root / "run.json").exists():
        if not (root / "metrics.json").exists():
            if not evaluate_if_missing:
                raise DataError(f"{root}: no metrics.json; run `cxrfuse evaluate {root}` first")
            evaluate_run(root)
        title, sections = run_sections(root)
    else:
        find_runs(root)  # clear error when this is neither a run nor an experiment
        if not (root / "evaluation.json").exists():
            if not evaluate_if_missing:
                raise DataError(f"{root}: no evaluation.json; run `cxrfuse evaluate {root}` first")
            evaluate_experiment(root)
        title, sections = experiment_sections(root)
    html_path, md_path = root / "report.html", root / "report.md"
    html_path.write_text(render_html(title, sections, root))
    md_path.write_text(render_markdown(title, sections, root))
    return html_path, md_path


# ------------------------------------------------------------------------------ run report
def run_sections(run_dir: Path) -> tuple[str, list[Section]]:
    run = read_json(run_dir / "run.json")
    metrics = read_json(run_dir / "metrics.json")
    title = f"cxrfuse report: run {metrics['run']}"
    top = Section("Overview")
    top.add(
        "text",
        f"Task **{run.get('task')}** ({len(metrics['labels'])} label(s)), modalities "
        f"**{' + '.join(metrics['modalities'])}** ({modality_name(metrics['modalities'])}), seed "
        f"{run.get('seed')}, status {run.get('status')}; evaluated {metrics.get('evaluated')}.",
    )
    _banners(top, [run], [metrics])
    top.add(
        "table",
        headline_table(metrics),
        "Test metrics at val-chosen thresholds "
        f"({metrics['threshold_method']}), 95 % bootstrap intervals over {metrics['n_boot']} "
        "resamples of test studies.",
    )
    sections = [
        top,
        data_section(run, run_dir),
        text_section([metrics]),
        config_section(run_dir / "config.yaml"),
    ]
    results = Section("Results")
    results.add(
        "table",
        per_label_table(metrics),
        "Per label (test): n known, positives, threshold chosen on val.",
    )
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


def headline_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for m in (*HEADLINE, "exact_match"):
        ci = metrics["ci"].get(f"headline/{m}", {})
        rows.append(
            {
                "metric": m,
                "test": format_value(
                    metrics["test"]["headline"].get(m), None, ci.get("low"), ci.get("high")
                ),
                "val": format_value(metrics["val"]["headline"].get(m)),
            }
        )
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
        manifest = read_manifest(_resolve(path, run_dir))
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
        rows.append(
            {
                "label": "macro",
                "AUROC chosen text": format_value(probe["macro"]["chosen"]),
                "AUROC indication only": format_value(probe["macro"]["indication"]),
            }
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
        path = run_dir / "ablation.json"
        if not path.exists():
            continue
        for modality, res in read_json(path).get("shuffle", {}).items():
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
                        "repeats": res["repeats"],
                    }
                )
    if rows:
        section.add(
            "table",
            pd.DataFrame(rows),
            "Bimodal sensitivity test: one modality's embeddings permuted "
            "across test studies (drop = baseline - shuffled, mean ± sd over repeats)",
        )
    else:
        section.add("note", "No shuffle test yet: `cxrfuse evaluate RUN --shuffle both` adds one.")


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
        summary = run_dir / "attribution" / "attribution_summary.csv"
        if summary.exists():
            found = True
            table = _formatted(pd.read_csv(summary))
            section.add("table", table, f"{ATTRIBUTION_INTRO}; run {name}.")
            if (run_dir / "attribution" / "attribution.png").exists():
                section.add("image", run_dir / "attribution" / "attribution.png",
                            f"Modality attribution per label, {name}")  # fmt: skip
        for scores in sorted((run_dir / "explain").glob("*/scores/pointing_game.csv")):
            found = True
            method = scores.parent.parent.name
            section.add("table", _formatted(pd.read_csv(scores)),
                        f"{POINTING_INTRO}; run {name}, {method} (synthetic phantoms).")  # fmt: skip
            for plot in ("pointing_game.png", "deletion.png"):
                if (scores.parent / plot).exists():
                    section.add("image", scores.parent / plot, f"{plot[:-4]}, {name}, {method}")
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
def experiment_sections(exp_dir: Path) -> tuple[str, list[Section]]:
    evaluation = read_json(exp_dir / "evaluation.json")
    runs = {r["run"]: r for r in evaluation["runs"]}
    finished = [(name, exp_dir / r["dir"]) for name, r in runs.items() if r.get("headline")]
    run_json = {name: read_json(d / "run.json") for name, d in finished}
    metrics = {name: read_json(d / "metrics.json") for name, d in finished}
    title = f"cxrfuse report: experiment {evaluation['experiment']}"
    top = Section("Overview")
    failed = [r for r in runs.values() if r["status"] != "finished"]
    top.add(
        "text",
        f"{len(runs)} run(s): {len(finished)} evaluated, {len(failed)} failed or unfinished. "
        f"Thresholds chosen on val ({evaluation['threshold_method']}), intervals from "
        f"{evaluation['n_boot']} bootstrap resamples of test studies.",
    )
    _banners(top, list(run_json.values()), list(metrics.values()))
    for comp in evaluation["settings"]:
        top.add(
            "table",
            format_table(pd.DataFrame(comp["modality_table"])),
            f"Unimodal vs multimodal, setting {comp['setting']} "
            "(test; mean ± sd across seeds, or 95 % CI)",
        )
    sections = [top]
    if finished:
        first = finished[0]
        sections.append(data_section(run_json[first[0]], first[1]))
    sections.append(text_section(list(metrics.values())))
    sections.append(config_section(exp_dir / "experiment.yaml", "Configuration (experiment grid)"))
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
        else:
            row["auroc"] = (r.get("error") or "")[:120]
        rows.append(row)
    results.add("table", pd.DataFrame(rows), "Every run (test, 95 % bootstrap intervals)")
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
    plots = Section("Plots")
    for comp in evaluation["settings"]:
        for rel in comp.get("plots", []):
            if rel.endswith("_roc.png"):
                plots.add("image", exp_dir / rel, f"ROC by modality, setting {comp['setting']}")
    for name, run_dir in finished:
        if (
            len(run_json[name].get("modalities", [])) > 1
            and (run_dir / "plots" / "training_curves.png").exists()
        ):
            plots.add(
                "image", run_dir / "plots" / "training_curves.png", f"Training curves, {name}"
            )
            break
    sections.append(plots)
    sections.append(environment_section([(n, run_json[n], metrics[n]) for n, _ in finished]))
    return title, sections


# ------------------------------------------------------------------------------ renderers
def render_markdown(title: str, sections: Sequence[Section], root: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if block.kind == "warning":
                lines += [f"> **Warning:** {block.content}", ""]
            elif block.kind == "note":
                lines += [f"> {block.content}", ""]
            elif block.kind == "table":
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                lines += [block.content.to_markdown(index=False), ""]
            elif block.kind == "image":
                lines += [f"![{block.caption}]({_relative(block.content, root)})", ""]
            elif block.kind == "code":
                lines += [f"*{block.caption}*", "", "```yaml", block.content.rstrip(), "```", ""]
            else:
                lines += [block.content, ""]
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _inline(text: str) -> str:
    """Escape, then turn **bold** and `code` into tags (the report's only inline Markdown)."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _image_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       max-width: 1100px;
       margin: 24px auto; padding: 0 24px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; border-bottom: 2px solid #d0d7de; padding-bottom: 8px; }
h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
nav { font-size: 13px; color: #57606a; }
nav a { margin-right: 12px; color: #0969da; text-decoration: none; }
.warning { background: #fff1e5; border-left: 6px solid #d1242f; padding: 10px 14px;
           margin: 12px 0; font-weight: 600; }
.note { background: #f6f8fa; border-left: 4px solid #8c959f; padding: 6px 12px; margin: 8px 0;
        color: #57606a; }
table { border-collapse: collapse; margin: 6px 0 16px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } tr:nth-child(even) td { background: #fbfcfd; }
.caption { font-size: 13px; color: #57606a; margin: 10px 0 2px; font-style: italic; }
figure { margin: 12px 0 24px; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #57606a; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px;
      border: 1px solid #d0d7de; }
pre.config { column-count: 3; column-gap: 28px; column-rule: 1px solid #d0d7de; }
footer { margin-top: 40px; font-size: 12px; color: #8c959f; }
</style></head><body>
<h1>{{ title }}</h1>
<nav>{% for s in sections %}<a href="#s{{ loop.index }}">{{ s.title|e }}</a>{% endfor %}</nav>
{% for s in sections %}<section id="s{{ loop.index }}"><h2>{{ s.title|e }}</h2>
{% for b in s.blocks %}{{ b }}
{% endfor %}</section>
{% endfor %}<footer>Written by cxrfuse. Thresholds are chosen on the validation split; metrics
are on the
test split with percentile bootstrap intervals over test studies.</footer>
</body></html>
"""


def _block_html(block: Block) -> str:
    caption = f'<div class="caption">{_inline(block.caption)}</div>' if block.caption else ""
    if block.kind == "warning":
        return f'<div class="warning">&#9888; {_inline(block.content)}</div>'
    if block.kind == "note":
        return f'<div class="note">{_inline(block.content)}</div>'
    if block.kind == "table":
        return caption + block.content.to_html(index=False, border=0, escape=True, na_rep="-")
    if block.kind == "image":
        return (
            f'<figure><img alt="{html.escape(block.caption)}" src="{_image_data(block.content)}">'
            f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
        )
    if block.kind == "code":
        return f'{caption}<pre class="config">{html.escape(block.content)}</pre>'
    return f"<p>{_inline(block.content)}</p>"


def render_html(title: str, sections: Sequence[Section], root: Path) -> str:
    rendered = [{"title": s.title, "blocks": [_block_html(b) for b in s.blocks]} for s in sections]
    template = Environment(autoescape=False).from_string(HTML_TEMPLATE)
    return template.render(title=html.escape(title), sections=rendered)
