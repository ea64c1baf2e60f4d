"""Linear probing (design 002): frozen CLIP embeddings -> the 2 x 512 MLP, against unimodal rows.

The CLIP image and report embeddings (``projection_dim`` each, 512 by default) of every study
are computed once with the towers frozen; a concat-MLP head (``cxrfuse.fusion.build_head``
through :class:`cxrfuse.training.FusionClassifier`) is trained on the train split for three
inputs: image only, report only, image + report. Decision thresholds are chosen on the val
split; metrics with bootstrap intervals are computed on the test split
(``cxrfuse.evaluation``). Writes ``probe.json``, ``probe.md`` and
``probe_predictions.parquet`` into the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.clip.embed import ClipRun, as_numpy, load_run
from cxrfuse.data.manifest import label_column
from cxrfuse.evaluation import bootstrap_ci, choose_thresholds, compute_metrics
from cxrfuse.rundir import RunDir, layout
from cxrfuse.training import FusionClassifier
from cxrfuse.vocab import LEAKY_SECTIONS

PROBES: dict[str, list[str]] = {"image": ["image"], "report": ["text"],
                                "image+report": ["image", "text"]}  # fmt: skip


def _split_arrays(run: ClipRun, split: str, labels: list[str],
                  sections: list[str] | None) -> dict[str, Any]:  # fmt: skip
    image, text, pairs = run.embed_split(split, sections)
    position = {sid: i for i, sid in enumerate(run.manifest.df["study_id"].astype(str))}
    rows = np.array([position[s] for s in pairs.study_ids], dtype=int)
    return {"image": as_numpy(image), "text": as_numpy(text), "study_ids": pairs.study_ids,
            "y": run.manifest.label_matrix(labels)[rows]}  # fmt: skip


def _positive(clf: FusionClassifier, X: dict[str, np.ndarray]) -> np.ndarray:
    p = clf.predict_proba(X)
    return p if clf.multilabel_ else p[:, 1:]


def run_probe(run_dir: str | Path, task: str | None = None, progress: bool = True,
              n_boot: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train and evaluate the three probes; returns (and writes) the results."""
    run = load_run(run_dir, progress=progress)
    cfg = run.config.probe
    task = task or cfg.task or run.config.data.task
    labels = run.manifest.task_labels(task)
    sections = list(cfg.text_sections) if cfg.text_sections else None
    data = {s: _split_arrays(run, s, labels, sections) for s in ("train", "val", "test")}
    n_boot = cfg.n_boot if n_boot is None else n_boot
    results: dict[str, Any] = {}
    predictions = []
    for name, modalities in PROBES.items():
        clf = FusionClassifier(
            kind="concat-mlp", hidden=tuple(cfg.hidden), dropout=cfg.dropout, view_fusion="frontal",
            optimizer="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size, max_epochs=cfg.max_epochs, patience=cfg.patience,
            random_state=run.config.seed, verbose=progress,
        )  # fmt: skip
        # rows with an unknown label are left out of training (FusionClassifier's per-epoch
        # metrics do not accept NaN labels); val/test keep them, excluded per label by the metrics
        train = data["train"]
        known = ~np.isnan(train["y"]).any(axis=1)
        y_train = train["y"][known]
        clf.fit({m: train[m][known] for m in modalities},
                y_train[:, 0] if len(labels) == 1 else y_train)  # fmt: skip
        p = {s: _positive(clf, {m: data[s][m] for m in modalities}) for s in ("val", "test")}
        thresholds, warnings = choose_thresholds(data["val"]["y"], p["val"], cfg.threshold, labels)
        metrics = compute_metrics(data["test"]["y"], p["test"], thresholds, labels)
        ci = bootstrap_ci(data["test"]["y"], p["test"], thresholds, labels, n_boot=n_boot,
                          seed=run.config.seed) if n_boot else {}  # fmt: skip
        results[name] = {"modalities": modalities, "thresholds": dict(zip(labels, thresholds)),
                         "warnings": warnings + metrics["warnings"],
                         "headline": metrics["headline"], "ci": _headline_ci(ci),
                         "per_label": {k: {m: v.get(m) for m in ("auroc", "auprc", "f1", "n",
                                                                 "positives")}
                                       for k, v in metrics["per_label"].items()}}  # fmt: skip
        for split in ("val", "test"):
            frame = pd.DataFrame({"study_id": data[split]["study_ids"], "split": split,
                                  "probe": name})  # fmt: skip
            for j, label in enumerate(labels):
                slug = label_column(label).removeprefix("label_")
                frame[f"y__{slug}"] = data[split]["y"][:, j]
                frame[f"p__{slug}"] = p[split][:, j]
            predictions.append(frame)
    text_sections = sections or list(run.config.text.sections)
    result = {
        "task": task, "labels": labels, "text_sections": text_sections,
        "leaky_text": bool(LEAKY_SECTIONS & set(text_sections)),
        "n": {s: len(d["study_ids"]) for s, d in data.items()},
        "train_unknown_dropped": int(np.isnan(data["train"]["y"]).any(axis=1).sum()),
        "embedding_dim": run.model.projection_dim, "head": {"kind": "concat-mlp",
                                                            "hidden": cfg.hidden},
        "threshold": cfg.threshold, "n_boot": n_boot, "probes": results,
        "synthetic": run.synthetic, "images": run.manifest.images,
    }  # fmt: skip
    out = Path(run_dir)
    RunDir(out).write_analysis(layout.PROBE, result, probe_markdown(result))
    pd.concat(predictions, ignore_index=True).to_parquet(out / layout.PROBE_PREDICTIONS)
    return result


def _headline_ci(ci: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {k.split("/", 1)[1]: v for k, v in ci.items() if k.startswith("headline/")}


def _fmt(value: Any, ci: dict[str, Any] | None = None) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    text = f"{value:.3f}"
    if ci and ci.get("low") is not None:
        text += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
    return text


def probe_markdown(result: dict[str, Any]) -> str:
    """Headline table (test split, 95 % bootstrap CI) and per-label AUROC table."""
    lines = [(f"## Linear probe on frozen CLIP embeddings (task {result['task']}, test N = "
             f"{result['n']['test']})"), "",
             (f"Concat-MLP {result['head']['hidden']} on {result['embedding_dim']}-d image and "
             f"report embeddings; thresholds ({result['threshold']}) chosen on val."), "",
             "| input | AUROC [95% CI] | AUPRC | F1 | accuracy |", "|---|---|---:|---:|---:|"]
    for name, r in result["probes"].items():
        h, ci = r["headline"], r["ci"]
        lines.append(f"| {name} | {_fmt(h['auroc'], ci.get('auroc'))} | {_fmt(h['auprc'])} | "
                     f"{_fmt(h['f1'])} | {_fmt(h['accuracy'])} |")
    if len(result["labels"]) > 1:
        names = list(result["probes"])
        lines += ["", "| label | " + " | ".join(f"AUROC {n}" for n in names) + " |",
                  "|---|" + "---:|" * len(names)]  # fmt: skip
        for label in result["labels"]:
            cells = " | ".join(_fmt(result["probes"][n]["per_label"][label]["auroc"])
                               for n in names)  # fmt: skip
            lines.append(f"| {label} | {cells} |")
    notes = []
    if result["leaky_text"]:
        notes.append(f"The report side reads {', '.join(result['text_sections'])}: IU labels are "
                     "derived from this text, so the report rows measure reading the label, not "
                     "diagnosis (set probe.text_sections: [indication] for the honest version).")
    if result.get("synthetic"):
        notes.append("Images are synthetic phantoms drawn from the labels (reports are real).")
    return "\n".join(lines + [""] + notes) + "\n"
