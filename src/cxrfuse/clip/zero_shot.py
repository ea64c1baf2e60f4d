"""Zero-shot classification with a trained CLIP model: no labels, only prompts.

For each label, the positive prompts ("findings suggest cardiomegaly.") and the negative
prompts ("no cardiomegaly.") are embedded by the text tower and averaged per side (then
re-normalised). An image's score is the softmax probability of the positive side over the two
at the model's temperature, ``sigmoid((cos(img, pos) - cos(img, neg)) / T)``; AUROC per label
is computed on a split (test by default) against the manifest labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cxrfuse.clip.embed import ClipRun, as_numpy, load_run
from cxrfuse.config import ZeroShotConfig
from cxrfuse.rundir import RunDir, layout
from cxrfuse.rundir.modelcard import write_model_card


def prompt_embeddings(run: ClipRun, labels: list[str], config: ZeroShotConfig) -> dict[str, Any]:
    """Per label: the prompts used and the mean positive / negative text embeddings."""
    out = {}
    for label in labels:
        prompts = config.label_prompts(label)
        pos = F.normalize(run.embed_texts(prompts.positive).mean(0), dim=-1)
        neg = F.normalize(run.embed_texts(prompts.negative).mean(0), dim=-1)
        out[label] = {"positive": prompts.positive, "negative": prompts.negative,
                      "pos": pos, "neg": neg}  # fmt: skip
    return out


def zero_shot_scores(image: torch.Tensor, prompts: dict[str, Any], temperature: float) -> np.ndarray:
    """(N, L) probability of each label's positive prompt side, per image."""
    columns = []
    for item in prompts.values():
        margin = (image @ item["pos"] - image @ item["neg"]) / temperature
        columns.append(torch.sigmoid(margin))
    return as_numpy(torch.stack(columns, dim=1)) if columns else np.zeros((len(image), 0))


def label_aurocs(y: np.ndarray, p: np.ndarray, labels: list[str]) -> dict[str, dict[str, Any]]:
    """AUROC per label on the known rows (None when a label has one class there)."""
    out = {}
    for j, label in enumerate(labels):
        known = ~np.isnan(y[:, j])
        yj = y[known, j]
        n_pos = int(yj.sum())
        auroc = float(roc_auc_score(yj, p[known, j])) if 0 < n_pos < len(yj) else None
        out[label] = {"auroc": auroc, "n": int(known.sum()), "positives": n_pos}
    return out


def zero_shot_markdown(result: dict[str, Any]) -> str:
    rows = [("## Zero-shot classification "
            f"({result['split']} split, N = {result['n']}; no labels used for training)"), "",
            "| label | AUROC | positives / n | positive prompts | negative prompts |",
            "|---|---:|---:|---|---|"]  # fmt: skip
    for label, item in result["labels"].items():
        auroc = "n/a" if item["auroc"] is None else f"{item['auroc']:.3f}"
        rows.append(f"| {label} | {auroc} | {item['positives']} / {item['n']} | "
                    f"{'; '.join(item['positive'])} | {'; '.join(item['negative'])} |")
    macro = result["macro_auroc"]
    rows += ["", f"Macro AUROC: {'n/a' if macro is None else f'{macro:.3f}'} (chance 0.5)."]
    if result.get("synthetic"):
        rows.append("Images are synthetic phantoms drawn from the labels (reports are real).")
    return "\n".join(rows) + "\n"


def run_zero_shot(run_dir: str | Path, split: str = "test", task: str | None = None,
                  progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Zero-shot AUROC per label on ``split``; writes zero_shot.json/.md into the run."""
    run = load_run(run_dir, progress=progress)
    config = run.config.zero_shot
    task = task or config.task or run.config.data.task
    labels = run.manifest.task_labels(task)
    image, _, pairs = run.embed_split(split)
    prompts = prompt_embeddings(run, labels, config)
    scores = zero_shot_scores(image, prompts, float(run.model.temperature()))
    y = run.manifest.label_matrix(labels)[_rows(run, pairs.study_ids)]
    per_label = label_aurocs(y, scores, labels)
    for label in labels:
        per_label[label].update(positive=prompts[label]["positive"],
                                negative=prompts[label]["negative"])  # fmt: skip
    values = [v["auroc"] for v in per_label.values() if v["auroc"] is not None]
    result = {"split": split, "task": task, "n": len(pairs), "labels": per_label,
              "macro_auroc": float(np.mean(values)) if values else None,
              "synthetic": run.synthetic, "images": run.manifest.images}  # fmt: skip
    out = Path(run_dir)
    RunDir(out).write_analysis(layout.ZERO_SHOT, result, zero_shot_markdown(result))
    write_model_card(out)  # the card shows the new figures
    return result


def _rows(run: ClipRun, study_ids: list[str]) -> np.ndarray:
    """Manifest row positions of the given studies."""
    position = {sid: i for i, sid in enumerate(run.manifest.df["study_id"].astype(str))}
    return np.array([position[s] for s in study_ids], dtype=int)
