"""Training on synthetic embeddings where each modality carries half of the signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from cxrfuse.config import RunConfig
from cxrfuse.rundir import RunDir
from cxrfuse.store import StudyArrays
from cxrfuse.training import StoredEmbeddings, train_run
from cxrfuse.training.estimator import FusionClassifier


def train_on_arrays(config: RunConfig, arrays: StudyArrays, run_dir: Path) -> dict:
    """One run of the run pipeline on arrays built here; run.json as a mapping."""
    train_run(config, progress=False, source=StoredEmbeddings(config, False, arrays),
              run_dir=run_dir)
    return RunDir(run_dir).info().model_dump()


def half_signal_arrays(n: int = 1600, dim: int = 12, seed: int = 0) -> StudyArrays:
    """label = [z1 + z2 + noise > 0]; the image views carry z1, the report vector z2."""
    rng = np.random.default_rng(seed)
    z1, z2 = rng.normal(size=n), rng.normal(size=n)
    y = (z1 + z2 + 0.35 * rng.normal(size=n) > 0).astype(np.float32)[:, None]
    image = rng.normal(size=(n, 2, dim)).astype(np.float32)
    image[:, :, :3] += 1.5 * z1[:, None, None]  # both views show it, with view noise
    text = rng.normal(size=(n, dim)).astype(np.float32)
    text[:, :3] += 1.5 * z2[:, None]
    split = rng.choice(np.array(["train", "val", "test"], dtype=object), size=n, p=[0.6, 0.15, 0.25])
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    return StudyArrays(ids, ids.copy(), split, y, ["abnormal"], image, np.ones((n, 2), bool),
                       text, np.ones(n, bool))


@pytest.fixture(scope="module")
def test_aurocs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    arrays = half_signal_arrays(n=1200)
    out = {}
    for name, modalities in (("image", ["image"]), ("text", ["text"]),
                             ("multimodal", ["image", "text"])):
        config = RunConfig(
            name=name, seed=0, model={"kind": "late-fusion", "modalities": modalities,
                                      "projection_dim": 32},
            image={"views": "attention"},
            training={"lr": 0.003, "batch_size": 64, "max_epochs": 20,
                      "early_stopping": {"patience": 4}},
        )
        run_dir = tmp_path_factory.mktemp(name)
        train_on_arrays(config, arrays, run_dir)
        frame = pd.read_parquet(run_dir / "predictions.parquet")
        test = frame[frame["split"] == "test"]
        out[name] = roc_auc_score(test["y__abnormal"], test["p__abnormal"])
    return out


def test_each_modality_alone_gets_part_of_the_signal(test_aurocs: dict[str, float]) -> None:
    assert 0.65 < test_aurocs["image"] < 0.88
    assert 0.65 < test_aurocs["text"] < 0.88


def test_fused_model_beats_both_unimodal_ones(test_aurocs: dict[str, float]) -> None:
    assert test_aurocs["multimodal"] > 0.93
    assert test_aurocs["multimodal"] > max(test_aurocs["image"], test_aurocs["text"]) + 0.08


def test_run_directory_tables(tmp_path: Path) -> None:
    arrays = half_signal_arrays(n=300)
    config = RunConfig(name="small", model={"modalities": ["image", "text"]},
                       training={"max_epochs": 4, "early_stopping": None,
                                 "schedule": {"kind": "step", "step_size": 2, "gamma": 0.5}},
                       data={"subsample": {"positive_fraction": 0.25}, "sampler": "weighted"})
    info = train_on_arrays(config, arrays, tmp_path)
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert list(epochs.columns) == ["epoch", "split", "loss", "accuracy", "precision", "recall",
                                    "f1", "auroc", "lr"]
    assert epochs["epoch"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert epochs["split"].tolist() == ["train", "val"] * 4
    assert epochs["lr"].tolist() == pytest.approx([0.003] * 4 + [0.0015] * 4)  # step schedule
    negatives = int((arrays.y[arrays.indices("train")] == 0).sum())  # balanced data: too few
    assert info["n"]["train"] == negatives + round(negatives / 3)  # for 75:25, positives drawn
    assert not (tmp_path / ".checkpoints").exists()  # no pickled checkpoint stays behind
    assert (tmp_path / "plots" / "training_curves.png").stat().st_size > 10_000


def test_estimator_binary_and_multilabel() -> None:
    arrays = half_signal_arrays(n=900)
    train, test = arrays.indices("train"), arrays.indices("test")
    X = {"image": arrays.image, "text": arrays.text}
    pick = lambda rows: {k: v[rows] for k, v in X.items()}
    clf = FusionClassifier(kind="concat-mlp", hidden=(32,), max_epochs=15, lr=0.003, patience=3)
    clf.fit(pick(train), arrays.y[train, 0])
    proba = clf.predict_proba(pick(test))
    assert proba.shape == (len(test), 2) and np.allclose(proba.sum(1), 1.0)
    assert roc_auc_score(arrays.y[test, 0], proba[:, 1]) > 0.9
    assert set(clf.predict(pick(test))) <= {0, 1}
    assert clone(clf).get_params() == clf.get_params()
    with pytest.raises(ValueError, match="lacks"):
        clf.predict_proba({"image": arrays.image[test]})
    y2 = np.column_stack([arrays.y[:, 0], 1 - arrays.y[:, 0]])
    multi = FusionClassifier(hidden=(16,), max_epochs=3).fit(arrays.text[train], y2[train])
    assert multi.predict_proba(arrays.text[test]).shape == (len(test), 2)
    assert multi.predict(arrays.text[test]).shape == (len(test), 2)


def test_epoch_metrics_equal_scikit_learn() -> None:
    """The per-epoch metrics from counts and mid-ranks are scikit-learn's, with unknown labels,
    tied scores, a one-class label and a label nobody is called positive on."""
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    from cxrfuse.training.module import epoch_metrics

    rng = np.random.default_rng(0)
    y = (rng.random((400, 4)) < 0.3).astype(float)
    p = np.round(rng.random((400, 4)) * 0.6 + 0.3 * y, 2)  # ties
    y[::5, 0] = np.nan
    y[:, 2] = 0.0  # one class: AUROC undefined
    p[:, 3] = 0.1  # nobody called positive: precision and F1 by zero_division=0
    got = epoch_metrics(y, p, 0.5)
    want: dict[str, list[float]] = {k: [] for k in got}
    for j in range(4):
        k = ~np.isnan(y[:, j])
        t, s = y[k, j].astype(int), p[k, j]
        hat = (s >= 0.5).astype(int)
        want["accuracy"].append(accuracy_score(t, hat))
        want["precision"].append(precision_score(t, hat, zero_division=0))
        want["recall"].append(recall_score(t, hat, zero_division=0))
        want["f1"].append(f1_score(t, hat, zero_division=0))
        if len(np.unique(t)) == 2:
            want["auroc"].append(roc_auc_score(t, s))
    for key, values in want.items():
        assert got[key] == pytest.approx(np.mean(values), abs=1e-12), key


def test_index_batches_train_exactly_like_dataloaders(tmp_path: Path, monkeypatch) -> None:
    """Batches gathered by index from the tensors made once (no copy of the training rows) give
    the same trained model, bit for bit, as DataLoaders over copied rows (the path kept for
    DDP and loader workers): same shuffles, same dropout masks."""
    from cxrfuse.training import inputs

    arrays = half_signal_arrays(n=600)
    config = RunConfig(name="same", model={"kind": "concat-mlp", "hidden": [16], "dropout": 0.3},
                       image={"views": "mean"},
                       training={"max_epochs": 3, "batch_size": 32, "early_stopping": None})
    train_on_arrays(config, arrays, tmp_path / "index")
    monkeypatch.setattr(inputs, "one_process", lambda training: False)
    train_on_arrays(config, arrays, tmp_path / "loader")
    a = pd.read_parquet(RunDir(tmp_path / "index").predictions_path)
    b = pd.read_parquet(RunDir(tmp_path / "loader").predictions_path)
    pd.testing.assert_frame_equal(a, b)
    assert a["p__abnormal"].std() > 0.05


def test_attention_views_held_without_padding_train_exactly_like_the_dense_array(
    tmp_path: Path,
) -> None:
    """``assemble`` keeps attention views as PaddedViews (one row per view); batches and
    predictions read their dense rows, so the trained model and its predictions are bit for
    bit those of the padded array (studies of one to three views here)."""
    from dataclasses import replace

    from cxrfuse.store import PaddedViews

    dense = half_signal_arrays(n=500)
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 4, size=len(dense))
    image = np.concatenate([dense.image, dense.image[:, :1] * 0.5], axis=1)
    mask = np.arange(3)[None, :] < counts[:, None]
    image[~mask] = 0
    dense = replace(dense, image=image, image_mask=mask)
    padded = PaddedViews(image[mask], np.concatenate([[0], np.cumsum(counts)]), 3)
    np.testing.assert_array_equal(np.asarray(padded), image)
    config = RunConfig(name="views", model={"kind": "concat-mlp", "hidden": [16], "dropout": 0.3},
                       image={"views": "attention"},
                       training={"max_epochs": 3, "batch_size": 32, "early_stopping": None})
    train_on_arrays(config, dense, tmp_path / "dense")
    train_on_arrays(config, replace(dense, image=padded, image_mask=padded.mask()),
                    tmp_path / "padded")
    a = pd.read_parquet(RunDir(tmp_path / "dense").predictions_path)
    b = pd.read_parquet(RunDir(tmp_path / "padded").predictions_path)
    pd.testing.assert_frame_equal(a, b)
    assert a["p__abnormal"].std() > 0.05


def test_epoch_accumulator_keeps_every_row_of_the_epoch_and_only_those() -> None:
    """The per-split accumulator (one growing buffer, kept across epochs, instead of a tensor
    per step) scores exactly the rows of the epoch: past its first capacity, and after a reset
    none of the earlier epoch's rows."""
    import torch

    from cxrfuse.training.module import _EpochAccumulator, epoch_metrics

    rng = np.random.default_rng(0)
    acc = _EpochAccumulator()
    for n_batches in (50, 3):  # 3,200 rows (the buffer grows), then 192 after the reset
        y = (rng.random((n_batches * 64, 2)) < 0.4).astype(np.float32)
        y[::9, 1] = np.nan
        p = rng.random(y.shape).astype(np.float32)
        losses = rng.random(n_batches).astype(np.float32)
        for b in range(n_batches):
            rows = slice(64 * b, 64 * (b + 1))
            acc.update(torch.tensor(losses[b]), torch.from_numpy(p[rows]), torch.from_numpy(y[rows]))
        got = acc.compute_and_reset()
        assert got == pytest.approx({"loss": float(losses.mean()), **epoch_metrics(y, p)}, rel=1e-6)


def test_positive_midrank_sum_is_scipys_exactly_with_ties() -> None:
    from scipy.stats import rankdata

    from cxrfuse.training.module import _positive_midrank_sum

    rng = np.random.default_rng(1)
    for n, decimals in ((20_000, None), (3_000, 2), (50, 1), (1, None)):
        s = rng.random(n) if decimals is None else rng.random(n).round(decimals)
        t = rng.random(n) < 0.3
        assert _positive_midrank_sum(t, s) == rankdata(s)[t].sum()
