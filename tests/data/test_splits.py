"""Patient-level, stratified splits: no patient crosses splits, prevalence is kept."""

from __future__ import annotations

import numpy as np
import pytest

from cxrfuse.data import Manifest
from cxrfuse.data.splits import assign_folds, assign_splits, check_patient_leakage
from cxrfuse.problems import DataError


def _multi_study_manifest(n_patients: int = 120, seed: int = 0) -> Manifest:
    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_patients):
        for s in range(int(rng.integers(1, 4))):  # 1-3 studies per patient
            records.append({"study_id": f"p{p}s{s}", "patient_id": f"p{p}",
                            "labels": {"a": float(rng.random() < 0.3), "b": float(rng.random() < 0.1)}})
    return Manifest.from_records(records, dataset="t", labels=["a", "b"], tasks={"ab": ["a", "b"]})


def test_no_patient_in_two_splits_and_fractions_hold():
    manifest = assign_splits(_multi_study_manifest(), (0.6, 0.2, 0.2), seed=3, task="ab")
    per_patient = manifest.df.groupby("patient_id")["split"].nunique()
    assert per_patient.max() == 1
    patient_split = manifest.df.groupby("patient_id")["split"].first().value_counts(normalize=True)
    assert abs(patient_split["test"] - 0.2) < 0.03 and abs(patient_split["val"] - 0.2) < 0.03


def test_iu_split_is_stratified_and_seeded(iu_manifest):
    a = assign_splits(iu_manifest, seed=0, task="multilabel")
    b = assign_splits(iu_manifest, seed=0, task="multilabel")
    c = assign_splits(iu_manifest, seed=1, task="multilabel")
    assert a.df["split"].tolist() == b.df["split"].tolist()
    assert a.df["split"].tolist() != c.df["split"].tolist()
    for col in a.label_columns:
        prevalence = a.df.groupby("split")[col].mean()
        assert prevalence.max() - prevalence.min() < 0.03, col


def test_leakage_check_catches_a_crossing_patient():
    manifest = assign_splits(_multi_study_manifest(), seed=0)
    df = manifest.df.copy()
    crossing = df.groupby("patient_id").filter(lambda g: len(g) > 1)["patient_id"].iloc[0]
    first = df.index[df["patient_id"] == crossing][0]
    df.loc[first, "split"] = "test" if df.loc[first, "split"] != "test" else "train"
    with pytest.raises(DataError, match="more than one split"):
        check_patient_leakage(manifest.replace(df=df))


def test_folds_are_patient_level_and_skip_test():
    manifest = assign_folds(assign_splits(_multi_study_manifest(), seed=0), 4, seed=0, task="a")
    df = manifest.df
    assert df.loc[df["split"] == "test", "fold"].isna().all()
    assert set(df.loc[df["split"] != "test", "fold"].dropna().astype(int)) == {0, 1, 2, 3}
    assert df.groupby("patient_id")["fold"].nunique(dropna=True).max() <= 1


def test_bad_fractions():
    with pytest.raises(DataError, match="sum to 1"):
        assign_splits(_multi_study_manifest(), (0.5, 0.2, 0.2))
