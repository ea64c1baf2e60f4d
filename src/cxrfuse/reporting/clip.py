"""Report sections of a CLIP run (rendered by :func:`cxrfuse.reporting.write_report`).

``cxrfuse report RUNS/<clip run>`` gives the same self-contained ``report.html`` /
``report.md`` as for a fusion run: the training (val InfoNCE and retrieval before and after,
the curves), then whichever analyses the run directory holds (``retrieval.json``,
``zero_shot.json``, ``probe.json``, the pointing-game scores of ``cxrfuse explain --score``),
each next to its chance level, the configuration and the environment. An analysis not run yet is named with the command that adds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrfuse.evaluation import format_value
from cxrfuse.reporting.document import Section
from cxrfuse.reporting.generation import generation_sections
from cxrfuse.reporting.runs import PHANTOM_NOTE, config_section, explanation_section
from cxrfuse.rundir import RunDir, layout

EXPLAIN_HINT = (
    "No explanations yet: `cxrfuse explain RUN --score` maps each label's zero-shot score on the "
    "image tower (Grad-CAM) and, on phantoms, scores the maps against the lesion masks."
)


def clip_sections(run_dir: Path) -> tuple[str, list[Section]]:
    """(title, sections) of a CLIP run directory's report."""
    info = RunDir(run_dir).info()
    run = {**info.model_dump(exclude={"clip"}), **(info.clip.model_dump() if info.clip else {})}
    title = f"cxrfuse report: CLIP run {run.get('name', run_dir.name)}"
    return title, [
        overview_section(run, run_dir),
        retrieval_section(run_dir),
        zero_shot_section(run_dir),
        probe_section(run_dir),
        *generation_sections(RunDir(run_dir).generation_dirs()),
        explanation_section([(str(run.get("name", run_dir.name)), run_dir)], EXPLAIN_HINT),
        config_section(RunDir(run_dir).config_path),
        environment_section(run),
    ]


def overview_section(run: dict[str, Any], run_dir: Path) -> Section:
    section = Section("Overview")
    if run.get("images") == "phantom":
        section.add("warning", PHANTOM_NOTE)
    encoders, locked = run.get("encoders", {}), run.get("locked", {})

    def tower(name: str) -> str:
        return f"{encoders.get(name, '?')}" + (" (locked)" if locked.get(name) else "")

    n = run.get("n", {})
    section.add(
        "text",
        f"Contrastive image-report model, status **{run.get('status')}**: image tower "
        f"{tower('image')}, text tower {tower('text')}; {n.get('train', '?')} training and "
        f"{n.get('val', '?')} validation pairs; epoch {run.get('kept_epoch', '?')} kept (lowest "
        f"val loss); {format_value(run.get('timing_s'), digits=0)} s of training.",
    )
    if run.get("error"):
        section.add("warning", f"The run failed: {run['error']}")
    loss, r5 = run.get("val_loss"), run.get("val_r5_image_to_text")
    if loss and r5:
        rows = [
            {"measure": "val InfoNCE (training batch size)", "before training": loss["before"],
             "kept epoch": loss["after"], "chance": None},
            {"measure": "val R@5 image -> report", "before training": r5["before"],
             "kept epoch": r5["after"], "chance": r5["chance"]},
        ]  # fmt: skip
        table = pd.DataFrame(rows)
        for column in ("before training", "kept epoch", "chance"):
            table[column] = table[column].map(format_value)
        section.add("table", table, "Validation before training (epoch 0) and at the kept epoch")
    if RunDir(run_dir).clip_curves.exists():
        section.add("image", RunDir(run_dir).clip_curves, "loss and val recall per epoch")
    return section


def _analysis(run_dir: Path, title: str, file: str, verb: str) -> tuple[Section, Any]:
    """The section and the analysis result (``None``, with a note naming the command, when
    ``cxrfuse clip <verb>`` has not run yet)."""
    section = Section(title)
    result = RunDir(run_dir).analysis(file)
    if result is None:
        return section.add("note", f"Not run yet: `cxrfuse clip {verb} {run_dir}`."), None
    return section, result


def retrieval_section(run_dir: Path) -> Section:
    section, result = _analysis(run_dir, "Retrieval", layout.RETRIEVAL, "retrieve")
    if result is None:
        return section
    rows = []
    for name, key in (("image -> report", "image_to_text"), ("report -> image", "text_to_image"),
                      ("chance (K/N)", "chance")):  # fmt: skip
        row: dict[str, Any] = {"direction": name}
        row.update({f"R@{k}": format_value(v) for k, v in result[key].items()})
        row["median rank"] = format_value(result["median_rank"].get(key, result["n"] / 2),
                                          digits=0)  # fmt: skip
        rows.append(row)
    if result.get("label_ceiling"):
        ceiling = result["label_ceiling"]
        rows.append({"direction": "label ceiling (oracle: same label set)",
                     **{f"R@{k}": format_value(v) for k, v in ceiling["image_to_text"].items()},
                     "median rank": format_value(ceiling["median_rank"]["image_to_text"],
                                                 digits=0)})  # fmt: skip
    return section.add(
        "table", pd.DataFrame(rows),
        f"Exact-pair recall on the {result['split']} split (N = {result['n']}): a study's own "
        "report (or image) must be retrieved; identical texts of other studies count as misses. "
        "The label ceiling is the expected recall of an oracle that knows the labels and ranks "
        "the studies with the query's label set first",
    )  # fmt: skip


def zero_shot_section(run_dir: Path) -> Section:
    section, result = _analysis(run_dir, "Zero-shot classification", layout.ZERO_SHOT, "zero-shot")
    if result is None:
        return section
    rows = [
        {"label": label, "AUROC": format_value(item["auroc"]),
         "positives / n": f"{item['positives']} / {item['n']}",
         "positive prompts": "; ".join(item["positive"]),
         "negative prompts": "; ".join(item["negative"])}
        for label, item in result["labels"].items()
    ]  # fmt: skip
    return section.add(
        "table", pd.DataFrame(rows),
        f"Prompts against images, {result['split']} split, no labels used in training; macro "
        f"AUROC {format_value(result['macro_auroc'])} (chance 0.5)",
    )  # fmt: skip


def probe_section(run_dir: Path) -> Section:
    section, result = _analysis(run_dir, "Linear probe", layout.PROBE, "probe")
    if result is None:
        return section
    rows = []
    for name, probe in result["probes"].items():
        h, ci = probe["headline"], probe["ci"].get("auroc") or {}
        auroc = format_value(h["auroc"], None, ci.get("low"), ci.get("high"))
        rows.append({"input": name, "AUROC [95% CI]": auroc, "AUPRC": format_value(h["auprc"]),
                     "F1": format_value(h["f1"]), "accuracy": format_value(h["accuracy"])})  # fmt: skip
    section.add(
        "table", pd.DataFrame(rows),
        f"Frozen CLIP embeddings -> MLP {result['head']['hidden']}, task {result['task']}, "
        f"thresholds ({result['threshold']}) chosen on val, test N = {result['n']['test']}, "
        f"{result['n_boot']} bootstrap resamples",
    )  # fmt: skip
    if result.get("leaky_text"):
        section.add(
            "warning",
            f"The report side reads {', '.join(result['text_sections'])}: IU labels are derived "
            "from this text, so the report rows measure reading the label, not diagnosis "
            "(probe.text_sections: [indication] gives the honest version).",
        )
    return section


def environment_section(run: dict[str, Any]) -> Section:
    env = run.get("environment") or {}
    row = {k: env.get(k, "-") for k in ("device", "cpu_threads", "python", "torch", "cxrfuse",
                                         "platform")}  # fmt: skip
    row["precision"] = run.get("precision", "-")
    return Section("Environment").add("table", pd.DataFrame([row]), "Training environment")
