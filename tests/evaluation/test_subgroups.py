"""Subgroup metrics: exact counts, FNR and flags on arrays built here, and the run evaluation's
subgroup section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrfuse.evaluation import evaluate_run
from cxrfuse.evaluation.subgroups import age_band, study_view, subgroup_metrics, subgroup_table


def test_age_bands_and_study_views() -> None:
    assert [age_band(a) for a in (5, 19.9, 20, 45, 79, 80, 101)] == [
        "0-19", "0-19", "20-39", "40-59", "60-79", "80+", "80+"]  # fmt: skip
    assert age_band(None) is None and age_band(float("nan")) is None
    assert study_view([{"view": "LATERAL"}, {"view": "AP"}]) == "AP"
    assert study_view([{"view": "LL"}]) == "LATERAL only" and study_view([]) == "UNKNOWN"


def test_fnr_gap_flags_and_unknowns_are_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random((n, 2)) < 0.4).astype(float)
    sex = np.array(["F"] * 100 + ["M"] * 90 + [None] * 10, dtype=object)
    p = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, (n, 2))
    men = np.flatnonzero(sex == "M")
    p[men, 0] = rng.random(len(men)) * 0.45  # label a: uninformative and below 0.5 for men
    y[190:, 1] = np.nan
    attributes = pd.DataFrame({"sex": sex, "age band": ["20-39"] * 195 + ["80+"] * 5})
    result = subgroup_metrics(y, np.clip(p, 0, 1), np.array([0.5, 0.5]), ["a", "b"], attributes,
                              n_boot=50, plot_path=lambda a: tmp_path / f"{a}.png")  # fmt: skip
    groups = {g["group"]: g for g in result["attributes"]["sex"]["groups"]}
    assert result["attributes"]["sex"]["unknown"] == 10 and groups["M"]["n"] == 90
    assert groups["M"]["fnr"]["a"] == 1.0 and groups["F"]["fnr"]["a"] == 0.0
    positives_m = int(y[men, 0].sum())
    assert groups["M"]["positives"]["a"] == positives_m
    assert groups["M"]["auroc"] < groups["F"]["auroc"] and groups["M"]["gap"] < 0 < groups["F"]["gap"]
    assert groups["F"]["auroc_low"] <= groups["F"]["auroc"] <= groups["F"]["auroc_high"]
    assert not groups["F"]["small"]
    old = next(g for g in result["attributes"]["age band"]["groups"] if g["group"] == "80+")
    assert old["small"] and old["n"] == 5  # flagged, not hidden
    assert (tmp_path / "sex.png").is_file() and (tmp_path / "age band.png").is_file()
    table = subgroup_table(result)
    assert list(table["group"]) == ["F", "M", "(unknown)", "20-39", "80+"]
    assert table.loc[table["group"] == "80+", "flag"].item() == "small"


@pytest.mark.parametrize("n_boot", [20])
def test_evaluate_run_writes_subgroups(run_dir: Path, n_boot: int) -> None:
    result = evaluate_run(run_dir, n_boot=n_boot, leakage=False)
    sub = result["subgroups"]
    assert set(sub["attributes"]) >= {"view", "dataset"}
    dataset = sub["attributes"]["dataset"]["groups"]
    assert [g["group"] for g in dataset] == ["iu-xray"]
    assert dataset[0]["auroc"] == pytest.approx(result["test"]["headline"]["auroc"])
    assert dataset[0]["gap"] == pytest.approx(0.0)
    assert all((run_dir / p).is_file() for p in sub["plots"])


def test_small_is_decided_by_the_rarer_class_not_the_total() -> None:
    """200 studies with 4 negatives are small; 24 studies with 12 of each class are not."""
    y = np.r_[np.ones(196), np.zeros(4), np.ones(12), np.zeros(12)][:, None]
    p = np.clip(y[:, 0] * 0.6 + np.linspace(0, 0.3, len(y)), 0, 1)[:, None]
    attributes = pd.DataFrame({"sex": ["F"] * 200 + ["M"] * 24})
    result = subgroup_metrics(y, p, np.array([0.5]), ["a"], attributes, n_boot=0)
    groups = {g["group"]: g for g in result["attributes"]["sex"]["groups"]}
    assert groups["F"]["rarer_class"] == 4 and groups["F"]["small"]
    assert groups["M"]["rarer_class"] == 12 and not groups["M"]["small"]
    table = subgroup_table(result)
    assert table.loc[table["group"] == "F", "flag"].item() == "small"
    assert table.loc[table["group"] == "M", "flag"].item() == ""
