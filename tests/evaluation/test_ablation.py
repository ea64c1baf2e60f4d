"""Shuffle sensitivity, complementarity, modality table and the leakage probe."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from cxrfuse.data import Manifest
from cxrfuse.data.splits import assign_splits
from cxrfuse.evaluation.ablation import (
    complementarity,
    format_table,
    format_value,
    leakage_probe,
    modality_table,
    shuffle_sensitivity,
)
from cxrfuse.evaluation.metrics import correct_matrix
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.text import TextConfig


def two_modalities(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Image embeddings carry the label; text embeddings are noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    direction = np.array([1.0, -1.0, 0.5, 0.0, 2.0, -0.5])  # the same for every data seed
    image = rng.normal(size=(n, 6)) + 1.5 * y[:, None] * direction
    text = rng.normal(size=(n, 6))
    return {"image": image, "text": text}, y


def test_shuffling_the_modality_a_model_depends_on_drops_it_to_chance() -> None:
    train, y_train = two_modalities(600, seed=0)
    test, y_test = two_modalities(600, seed=1)
    model = LogisticRegression().fit(train["image"], y_train)  # reads the image only

    def predict(inputs: dict) -> np.ndarray:
        return model.predict_proba(inputs["image"])[:, 1]

    image = shuffle_sensitivity(predict, test, y_test, "image", repeats=5, seed=0)
    text = shuffle_sensitivity(predict, test, y_test, "text", repeats=5, seed=0)
    assert image["baseline"]["auroc"] > 0.9
    assert all(abs(a - 0.5) < 0.08 for a in image["shuffled"]["auroc"])
    assert image["drop"]["auroc"]["mean"] > 0.35 and image["drop"]["auroc"]["sd"] > 0
    assert text["drop"]["auroc"] == {"mean": 0.0, "sd": 0.0, "min": 0.0, "max": 0.0,
                                     "low": 0.0, "high": 0.0, "status": "none", "n": 600}
    assert image["drop"]["auroc"]["status"] == "evidence" and image["drop"]["auroc"]["low"] > 0.3
    assert len(image["shuffled"]["f1"]) == 5


def test_shuffle_permutes_tuples_and_masks_together() -> None:
    test, y = two_modalities(300, seed=2)
    mask = np.ones(300, dtype=bool)
    mask[::3] = False
    inputs = {"image": (test["image"], mask), "text": test["text"], "image_mask": mask}
    seen = []

    def predict(batch: dict) -> np.ndarray:
        emb, m = batch["image"]
        assert (m == batch["image_mask"]).all()  # moved together
        seen.append(m.copy())
        return 1 / (1 + np.exp(-emb[:, 0]))

    shuffle_sensitivity(predict, inputs, y, "image", repeats=2, seed=0)
    assert (seen[0] == mask).all() and not (seen[1] == mask).all()
    with pytest.raises(CxrfuseError, match="cannot shuffle"):
        shuffle_sensitivity(predict, inputs, y, "audio")


def test_complementarity_counts_add_up() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((200, 3)) < 0.3).astype(float)
    y[::10, 1] = np.nan
    p_image, p_text = rng.random((200, 3)), rng.random((200, 3))
    counts = complementarity(y, p_image, p_text, 0.5, [0.4, 0.5, 0.6])
    pairs = counts["pairs"]
    assert pairs["total"] == (~np.isnan(y)).sum()
    assert (
        pairs["both"] + pairs["only_text"] + pairs["only_image"] + pairs["neither"]
        == pairs["total"]
    )
    assert pairs["both"] + pairs["only_image"] == np.nansum(correct_matrix(y, p_image, 0.5))
    studies = counts["studies"]
    assert studies["total"] == (~np.isnan(y).any(axis=1)).sum()
    assert (
        sum(studies[k] for k in ("both", "only_text", "only_image", "neither")) == studies["total"]
    )


def _metrics(auroc: float, f1: float) -> dict:
    return {
        "test": {"headline": {"auroc": auroc, "precision": 0.7, "recall": 0.6, "f1": f1}},
        "ci": {"headline/auroc": {"low": auroc - 0.05, "high": auroc + 0.05}},
    }


def test_modality_table_has_the_published_shape() -> None:
    runs = [
        {"modalities": ["image", "text"], "seed": s, "metrics": _metrics(0.9 + s / 100, 0.8)}
        for s in (0, 1)
    ]
    runs += [
        {"modalities": ["text"], "seed": 0, "metrics": _metrics(0.85, 0.7)},
        {"modalities": ["image"], "seed": 0, "metrics": _metrics(0.8, 0.6)},
    ]
    table = modality_table(runs)
    assert table["modality"].tolist() == ["Image", "Text", "Multimodal"]
    assert table.loc[2, "auroc"] == pytest.approx(0.905) and table.loc[2, "seeds"] == 2
    shown = format_table(table)
    assert list(shown.columns) == ["modality", "seeds", "AUROC", "Precision", "Recall", "F1"]
    assert shown.loc[2, "AUROC"] == "0.905 ± 0.007"  # across seeds
    assert shown.loc[0, "AUROC"] == "0.800 [0.750, 0.850]"  # one seed: its bootstrap CI
    assert format_value(None) == "-" and format_value(0.5) == "0.500"


@pytest.fixture(scope="module")
def split_reports(iu_manifest: Manifest) -> Manifest:
    subset = iu_manifest.replace(df=iu_manifest.df.head(1500).copy())
    return assign_splits(subset, (0.7, 0.1, 0.2), seed=0, task="normal-abnormal")


def test_leakage_probe_flags_masked_findings_but_not_the_indication(
    split_reports: Manifest,
) -> None:
    leaky = leakage_probe(
        split_reports, TextConfig(sections=["findings", "impression"]), task="normal-abnormal"
    )
    assert leaky["per_label"]["abnormal"]["chosen"] > 0.9  # DESIGN.md measured 0.984 on all reports
    assert leaky["per_label"]["abnormal"]["indication"] < 0.75
    assert leaky["warning"] and "still carries the label" in leaky["warning"]
    assert leaky["paired"]["low"] > 0 and leaky["paired"]["diff"] == pytest.approx(leaky["gap"])
    assert leaky["audit"]["total_probe"] > 0 and leaky["train"] > leaky["test"] > 0
    honest = leakage_probe(
        split_reports, TextConfig(sections=["indication"]), task="normal-abnormal"
    )
    assert honest["warning"] is None and honest["gap"] == 0


def test_leakage_probe_needs_a_split(iu_manifest: Manifest) -> None:
    with pytest.raises(DataError, match="cxrfuse split"):
        leakage_probe(
            iu_manifest.replace(df=iu_manifest.df.head(50).copy()),
            TextConfig(),
            task="normal-abnormal",
        )
