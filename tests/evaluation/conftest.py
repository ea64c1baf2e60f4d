"""Run and experiment directories built per the run-directory contract, from real scikit-learn
models trained on small synthetic embeddings of bundled IU X-ray studies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import f1_score, log_loss, roc_auc_score

from cxrfuse.data import Manifest
from cxrfuse.data.splits import assign_splits
from cxrfuse.evaluation.run import label_slug

LABELS = ["Cardiomegaly", "Opacity", "Calcified Granuloma"]
TEXT_CONFIG = {"sections": ["findings", "impression"], "mask_labels": True}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def small_manifest(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """900 bundled IU studies, a three-label task, patient-level 60/20/20 split, saved."""
    manifest = iu_manifest.replace(df=iu_manifest.df.head(900).copy(),
                                   tasks={**iu_manifest.tasks, "three": LABELS})
    manifest = assign_splits(manifest, (0.6, 0.2, 0.2), seed=0, task="three")
    return manifest.save(tmp_path_factory.mktemp("manifest") / "iu.parquet")


def synthetic_embeddings(y: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Image and text embeddings that each carry part of the labels, plus noise."""
    rng = np.random.default_rng(seed)
    filled = np.nan_to_num(y)
    image = filled @ rng.normal(size=(y.shape[1], 8)) * 1.0 + rng.normal(size=(len(y), 8)) * 1.2
    text = filled @ rng.normal(size=(y.shape[1], 8)) * 1.0 + rng.normal(size=(len(y), 8)) * 1.0
    return {"image": image, "text": text}


def build_run(root: Path, manifest_path: Path, modalities: list[str], seed: int, *,
              name: str | None = None, epochs: int = 4, images: str = "phantom") -> Path:
    """Train one SGD logistic model per label on the chosen modalities and write the run files."""
    from cxrfuse.data import read_manifest

    manifest = read_manifest(manifest_path)
    y = manifest.label_matrix(LABELS).astype(np.float64)
    emb = synthetic_embeddings(y)
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
            stats: dict[str, list[float]] = {"loss": [], "f1": [], "auroc": [], "accuracy": []}
            for j in range(len(LABELS)):
                k = ~np.isnan(ys[:, j])
                stats["loss"].append(log_loss(ys[k, j], probs[k, j], labels=[0, 1]))
                stats["f1"].append(f1_score(ys[k, j], probs[k, j] >= 0.5, zero_division=0))
                stats["auroc"].append(roc_auc_score(ys[k, j], probs[k, j]))
                stats["accuracy"].append(float(((probs[k, j] >= 0.5) == ys[k, j]).mean()))
            rows.append({"epoch": epoch, "split": part, **{k: float(np.mean(v)) for k, v in stats.items()},
                         "lr": 0.01})
    pd.DataFrame(rows).to_csv(run_dir / "epochs.csv", index=False)
    keep = np.isin(split, ["val", "test"])
    preds = manifest.df.loc[keep, ["study_id", "patient_id", "split"]].reset_index(drop=True)
    probs = np.stack([m.predict_proba(x[keep])[:, 1] for m in models], axis=1)
    for j, label in enumerate(LABELS):
        preds[f"y__{label_slug(label)}"] = y[keep, j]
        preds[f"p__{label_slug(label)}"] = probs[:, j]
    preds.to_parquet(run_dir / "predictions.parquet")
    text = {"encoder": "tfidf", "text_config": TEXT_CONFIG, "dim": 8} if "text" in modalities else None
    (run_dir / "model.json").write_text(json.dumps({
        "format": "cxrfuse-head/1", "head": {"kind": "concat-mlp", "kwargs": {}}, "labels": LABELS,
        "task": "three", "output": "sigmoid", "image": None, "text": text}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "name": name, "seed": seed, "modalities": modalities, "task": "three",
        "head": {"kind": "concat-mlp", "hidden": [256], "dropout": 0.3},
        "text": TEXT_CONFIG, "training": {"epochs": epochs, "lr": 0.01}}))
    (run_dir / "run.json").write_text(json.dumps({
        "name": name, "status": "finished", "started": "2024-01-01T00:00:00", "finished": "2024-01-01T00:01:00",
        "seed": seed, "task": "three", "labels": LABELS, "output": "sigmoid", "modalities": modalities,
        "images": images, "manifest": str(manifest_path), "stores": {"image": None, "text": None},
        "n": {s: int((split == s).sum()) for s in ("train", "val", "test")},
        "environment": {"python": "3.11", "torch": torch.__version__, "cxrfuse": "0.1.0",
                        "platform": "test", "device": "cpu"},
        "timing_s": 1.5}))
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path, small_manifest: Path) -> Path:
    return build_run(tmp_path, small_manifest, ["image", "text"], seed=0)


@pytest.fixture(scope="session")
def experiment_dir(tmp_path_factory: pytest.TempPathFactory, small_manifest: Path) -> Path:
    """An experiment: image, text and multimodal runs for seeds 0 and 1, and one failed run."""
    exp = tmp_path_factory.mktemp("exp") / "demo-exp"
    for seed in (0, 1):
        for modalities in (["image"], ["text"], ["image", "text"]):
            build_run(exp / "runs", small_manifest, modalities, seed)
    failed = exp / "runs" / "multimodal-seed2"
    failed.mkdir(parents=True)
    (failed / "run.json").write_text(json.dumps({"name": "multimodal-seed2", "status": "failed",
                                                 "error": "CUDA out of memory", "seed": 2,
                                                 "labels": LABELS, "modalities": ["image", "text"]}))
    (exp / "experiment.yaml").write_text(yaml.safe_dump({"name": "demo-exp", "grid": {
        "modalities": [["image"], ["text"], ["image", "text"]], "seed": [0, 1, 2]}}))
    return exp
