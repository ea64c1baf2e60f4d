"""Clinical-efficacy scores on hand-built label matrices."""

from __future__ import annotations

import numpy as np
import pytest

from cxrfuse.generation.clinical import clinical_scores, positives
from cxrfuse.generation.labeler import CHEXPERT_LABELS
from cxrfuse.problems import CxrfuseError

NAN = np.nan
COL = {name: j for j, name in enumerate(CHEXPERT_LABELS)}


def hand_matrices() -> tuple[np.ndarray, np.ndarray]:
    """4 studies. Cardiomegaly: TP 1, FP 1, FN 1 (and an uncertain generated label);
    Pleural Effusion: TP 1; Lung Opacity (not one of the five): FN 2."""
    ref = np.full((4, 14), NAN)
    gen = np.full((4, 14), NAN)
    ref[:, COL["Cardiomegaly"]] = [1, 1, 0, NAN]
    gen[:, COL["Cardiomegaly"]] = [1, 0, 1, -1]
    ref[:, COL["Pleural Effusion"]] = [1, 0, 0, 0]
    gen[:, COL["Pleural Effusion"]] = [1, 0, NAN, 0]
    ref[:, COL["Lung Opacity"]] = [1, 1, NAN, NAN]
    return gen, ref


def test_f1_by_hand() -> None:
    gen, ref = hand_matrices()
    out = clinical_scores(gen, ref, n_boot=0)
    per = out["per_label"]
    assert per["Cardiomegaly"]["f1"]["value"] == pytest.approx(0.5)  # 2*1 / (2*1 + 1 + 1)
    assert per["Cardiomegaly"]["precision"]["value"] == pytest.approx(0.5)
    assert per["Pleural Effusion"]["f1"]["value"] == pytest.approx(1.0)
    assert per["Lung Opacity"]["f1"]["value"] == 0.0
    assert per["Lung Opacity"]["precision"]["value"] is None  # no generated positive
    assert per["Edema"]["f1"]["value"] is None  # no positive on either side
    assert per["Cardiomegaly"]["reference_positives"] == 2
    assert per["Cardiomegaly"]["generated_positives"] == 2
    # pooled over the 14: TP 2, FP 1, FN 3
    assert out["micro_f1_14"]["value"] == pytest.approx(4 / 8)
    assert out["micro_precision_14"]["value"] == pytest.approx(2 / 3)
    assert out["micro_recall_14"]["value"] == pytest.approx(2 / 5)
    assert out["macro_f1_14"]["value"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # the five: Lung Opacity is not among them
    assert out["micro_f1_5"]["value"] == pytest.approx(4 / 6)
    assert out["macro_f1_5"]["value"] == pytest.approx(0.75)


def test_uncertain_as_positive() -> None:
    gen, ref = hand_matrices()
    out = clinical_scores(gen, ref, n_boot=0, uncertain="positive")
    # the generated -1 of study 4 becomes a false positive: TP 1, FP 2, FN 1
    assert out["per_label"]["Cardiomegaly"]["f1"]["value"] == pytest.approx(2 / 5)
    assert out["uncertain"] == "positive"
    assert positives(np.array([[1, 0, -1, NAN]]), "positive").tolist() == [[True, False, True, False]]


def random_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.choice([1.0, 0.0, -1.0, NAN], size=(n, 14), p=[0.3, 0.3, 0.1, 0.3])
    flip = rng.random((n, 14)) < 0.3
    gen = np.where(flip, rng.choice([1.0, 0.0, NAN], size=(n, 14)), ref)
    return gen, ref


def test_intervals_contain_point_and_are_seeded() -> None:
    gen, ref = random_labels(300, 1)
    a = clinical_scores(gen, ref, n_boot=300, seed=3)
    b = clinical_scores(gen, ref, n_boot=300, seed=3)
    c = clinical_scores(gen, ref, n_boot=300, seed=4)
    for key in ("micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5"):
        est = a[key]
        assert est["low"] < est["value"] < est["high"], key
        assert a[key] == b[key]
    assert a["micro_f1_14"] != c["micro_f1_14"]
    cardio = a["per_label"]["Cardiomegaly"]["f1"]
    assert cardio["low"] <= cardio["value"] <= cardio["high"]


def test_bad_inputs() -> None:
    gen, ref = hand_matrices()
    with pytest.raises(CxrfuseError, match="shape"):
        clinical_scores(gen[:, :5], ref)
    bad = gen.copy()
    bad[0, 0] = 2
    with pytest.raises(CxrfuseError, match="1, 0, -1 or NaN"):
        clinical_scores(bad, ref)
    with pytest.raises(CxrfuseError, match="uncertain"):
        clinical_scores(gen, ref, uncertain="ignore")
