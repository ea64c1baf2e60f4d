"""Run directories per the run-directory contract, from real scikit-learn models trained on small
synthetic embeddings of bundled IU X-ray studies (used by the evaluation tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import f1_score, log_loss, precision_score, recall_score, roc_auc_score

from cxrfuse.config import RunConfig
from cxrfuse.data.manifest import label_slug
from cxrfuse.rundir import RunDir
from cxrfuse.training.runner import plot_training_curves  # the curves are training's

LABELS = ["Cardiomegaly", "Opacity", "Calcified Granuloma"]
TEXT_CONFIG = {"sections": ["findings", "impression"], "mask_labels": True}


def synthetic_embeddings(y: np.ndarray, seed: int = 0, signal: float = 1.0) -> dict[str, np.ndarray]:
    """Image and text embeddings that each carry part of the labels, plus noise (``signal`` 0:
    noise only, nothing to learn)."""
    rng = np.random.default_rng(seed)
    filled = np.nan_to_num(y) * signal
    image = filled @ rng.normal(size=(y.shape[1], 8)) * 1.0 + rng.normal(size=(len(y), 8)) * 1.2
    text = filled @ rng.normal(size=(y.shape[1], 8)) * 1.0 + rng.normal(size=(len(y), 8)) * 1.0
    return {"image": image, "text": text}


def build_run(
    root: Path,
    manifest_path: Path,
    modalities: list[str],
    seed: int,
    *,
    name: str | None = None,
    epochs: int = 4,
    images: str = "phantom",
    signal: float = 1.0,
) -> Path:
    """Train one SGD logistic model per label on the chosen modalities and write the run files."""
    from cxrfuse.data import read_manifest

    manifest = read_manifest(manifest_path)
    y = manifest.label_matrix(LABELS).astype(np.float64)
    emb = synthetic_embeddings(y, signal=signal)
    x = np.concatenate([emb[m] for m in modalities], axis=1)
    split = manifest.df["split"].to_numpy()
    rng = np.random.default_rng(seed)
    train = (split == "train") & (rng.random(len(split)) < 0.9)
    name = name or f"{'multimodal' if len(modalities) > 1 else modalities[0]}-seed{seed}"
    run_dir = root / name
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    models = [SGDClassifier(loss="log_loss", alpha=1e-3, random_state=seed) for _ in LABELS]
    rows = []
    for epoch in range(epochs):
        for j, model in enumerate(models):
            known = train & ~np.isnan(y[:, j])
            model.partial_fit(x[known], y[known, j].astype(int), classes=[0, 1])
        for part in ("train", "val"):
            mask = train if part == "train" else split == "val"
            probs = np.stack([m.predict_proba(x[mask])[:, 1] for m in models], axis=1)
            ys = y[mask]
            stats: dict[str, list[float]] = {"loss": [], "f1": [], "auroc": [], "accuracy": [],
                                             "precision": [], "recall": []}
            for j in range(len(LABELS)):
                k = ~np.isnan(ys[:, j])
                stats["loss"].append(log_loss(ys[k, j], probs[k, j], labels=[0, 1]))
                stats["f1"].append(f1_score(ys[k, j], probs[k, j] >= 0.5, zero_division=0))
                stats["auroc"].append(roc_auc_score(ys[k, j], probs[k, j]))
                stats["accuracy"].append(float(((probs[k, j] >= 0.5) == ys[k, j]).mean()))
                stats["precision"].append(precision_score(ys[k, j], probs[k, j] >= 0.5,
                                                          zero_division=0))
                stats["recall"].append(recall_score(ys[k, j], probs[k, j] >= 0.5, zero_division=0))
            rows.append(
                {
                    "epoch": epoch,
                    "split": part,
                    **{k: float(np.mean(v)) for k, v in stats.items()},
                    "lr": 0.01,
                }
            )
    pd.DataFrame(rows).to_csv(run_dir / "epochs.csv", index=False)
    plot_training_curves(pd.DataFrame(rows), RunDir(run_dir).training_curves, name)
    keep = np.isin(split, ["val", "test"])
    preds = manifest.df.loc[keep, ["study_id", "patient_id", "split"]].reset_index(drop=True)
    probs = np.stack([m.predict_proba(x[keep])[:, 1] for m in models], axis=1)
    for j, label in enumerate(LABELS):
        preds[f"y__{label_slug(label)}"] = y[keep, j]
        preds[f"p__{label_slug(label)}"] = probs[:, j]
    preds.to_parquet(run_dir / "predictions.parquet")
    text = (
        {"encoder": "tfidf", "weights": "default", "text_config": TEXT_CONFIG, "dim": 8} if "text" in modalities else None
    )
    (run_dir / "model.json").write_text(
        json.dumps(
            {
                "format": "cxrfuse-head/1",
                "head": {"kind": "concat-mlp", "kwargs": {}},
                "labels": LABELS,
                "task": "three",
                "output": "sigmoid",
                "image": None,
                "text": text,
            }
        )
    )
    config = RunConfig(
        name=name,
        seed=seed,
        runs_dir=str(root),
        data={"manifest": str(manifest_path), "task": "three"},
        text={**TEXT_CONFIG, "encoder": "tfidf"},
        model={"modalities": modalities},
        training={"max_epochs": epochs},
        evaluation={"threshold": "f1", "n_boot": 200},
    )
    (run_dir / "config.yaml").write_text(config.to_yaml())
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "name": name,
                "status": "finished",
                "started": "2024-01-01T00:00:00",
                "finished": "2024-01-01T00:01:00",
                "seed": seed,
                "task": "three",
                "labels": LABELS,
                "output": "sigmoid",
                "modalities": modalities,
                "images": images,
                "manifest": str(manifest_path),
                "stores": {"image": None, "text": None},
                "n": {s: int((split == s).sum()) for s in ("train", "val", "test")},
                "environment": {
                    "python": "3.11",
                    "torch": torch.__version__,
                    "cxrfuse": "0.1.0",
                    "platform": "test",
                    "device": "cpu",
                },
                "timing_s": 1.5,
            }
        )
    )
    return run_dir
