"""Patient-level, seeded, stratified splits (train/val/test and k-fold).

Studies are grouped by ``patient_id`` and the patients, not the studies, are split, so that no
patient appears in two splits. Stratification uses each patient's labels (the maximum over their
studies): :class:`~sklearn.model_selection.StratifiedShuffleSplit` for one label,
iterative stratification (``iterstrat``, Sechidis et al. 2011) for several. Unknown labels count
as their own stratum (binary) or as negative (multilabel).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import Manifest
from cxrfuse.problems import DataError
from cxrfuse.vocab import SPLITS


def _patient_table(manifest: Manifest, task: str | list[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Unique patients and a label matrix per patient (max over their studies, NaN -> -1)."""
    labels = manifest.label_matrix(task)
    frame = pd.DataFrame(np.nan_to_num(labels, nan=-1.0), index=manifest.df["patient_id"].to_numpy())
    per_patient = frame.groupby(level=0, sort=True).max()
    return per_patient.index.to_numpy(), per_patient.to_numpy()


def _strata(y: np.ndarray) -> tuple[np.ndarray, bool]:
    """Targets for the stratifier and whether they are multilabel."""
    if y.shape[1] == 1:
        return y[:, 0].astype(int), False
    return (y > 0).astype(int), True


def _shuffle_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    from sklearn.model_selection import StratifiedShuffleSplit

    targets, multilabel = _strata(y)
    if multilabel:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    else:
        counts = np.unique(targets, return_counts=True)[1]
        if counts.min() < 2:  # a stratum too small to split: fall back to a plain shuffle
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(y))
            n_test = round(test_size * len(y))
            return np.sort(order[n_test:]), np.sort(order[:n_test])
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(y)), targets))
    return train, test


def assign_splits(
    manifest: Manifest,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    *,
    seed: int = 0,
    task: str | list[str] | None = None,
) -> Manifest:
    """A copy of ``manifest`` with ``split`` set to train/val/test at patient level."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise DataError(f"split fractions {fractions} must be three non-negative numbers that sum to 1")
    patients, y = _patient_table(manifest, task)
    if len(patients) < 3:
        raise DataError(f"{len(patients)} patient(s) are too few for a train/val/test split")
    train_frac, val_frac, test_frac = fractions
    assignment = np.full(len(patients), "train", dtype=object)
    rest = np.arange(len(patients))
    if test_frac > 0:
        keep, test = _shuffle_split(y, test_frac, seed)
        assignment[test] = "test"
        rest = keep
    if val_frac > 0:
        keep, val = _shuffle_split(y[rest], val_frac / (train_frac + val_frac), seed + 1)
        assignment[rest[val]] = "val"
    split_of = dict(zip(patients, assignment))
    df = manifest.df.copy()
    df["split"] = df["patient_id"].map(split_of)
    info = dict(manifest.info)
    info["split"] = {"method": "patient-level stratified", "fractions": list(fractions), "seed": seed,
                     "task": task if isinstance(task, str) or task is None else list(task)}
    result = manifest.replace(df=df, info=info)
    check_patient_leakage(result)
    return result


def assign_folds(
    manifest: Manifest, k: int = 5, *, seed: int = 0, task: str | list[str] | None = None
) -> Manifest:
    """A copy with ``fold`` in 0..k-1 at patient level; studies in the test split get no fold."""
    if k < 2:
        raise DataError(f"k-fold needs k >= 2, got {k}")
    pool = manifest.df["split"].fillna("") != "test"
    sub = manifest.replace(df=manifest.df[pool].copy())
    patients, y = _patient_table(sub, task)
    if len(patients) < k:
        raise DataError(f"{len(patients)} patient(s) are too few for {k} folds")
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
    from sklearn.model_selection import StratifiedKFold

    targets, multilabel = _strata(y)
    if multilabel:
        splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    elif np.unique(targets, return_counts=True)[1].min() >= k:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        from sklearn.model_selection import KFold

        splitter, targets = KFold(n_splits=k, shuffle=True, random_state=seed), None
    fold_of: dict[str, int] = {}
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(patients)), targets)):
        fold_of.update({p: fold for p in patients[held]})
    df = manifest.df.copy()
    df["fold"] = df["patient_id"].map(fold_of).where(pool)
    info = dict(manifest.info)
    info["folds"] = {"k": k, "seed": seed, "task": task if isinstance(task, str) or task is None else list(task)}
    return manifest.replace(df=df, info=info)


def patients_in_two_splits(manifest: Manifest) -> dict[str, list[str]]:
    """Patients whose studies lie in more than one split, with those splits (sorted)."""
    df = manifest.df[manifest.df["split"].notna()]
    splits = df.groupby("patient_id")["split"].agg(lambda s: sorted(set(map(str, s))))
    return {str(p): list(s) for p, s in splits.items() if len(s) > 1}


def check_patient_leakage(manifest: Manifest, source: str | Path = "manifest") -> None:
    """Raise :class:`DataError` naming the patients that have studies in more than one split
    (the one check every reader of a manifest for training or evaluation calls)."""
    leaking = patients_in_two_splits(manifest)
    if leaking:
        examples = ", ".join(f"{p} ({'+'.join(s)})" for p, s in list(leaking.items())[:5])
        more = f" and {len(leaking) - 5} more" if len(leaking) > 5 else ""
        raise DataError(f"{source}: {len(leaking)} patient(s) appear in more than one split: "
                        f"{examples}{more}; a patient's studies must share one split (fix the "
                        "split column or rerun `cxrfuse split`)")


def split_summary(manifest: Manifest, task: str | list[str] | None = None) -> pd.DataFrame:
    """Studies, patients and positives per label for each split (rows: split)."""
    df = manifest.df
    labels = manifest.task_labels(task)
    rows = []
    for split in [*SPLITS, None]:
        part = df[df["split"].isna()] if split is None else df[df["split"] == split]
        if split is None and part.empty:
            continue
        row: dict[str, object] = {"split": split or "(none)", "studies": len(part),
                                  "patients": part["patient_id"].nunique()}
        for name in labels:
            values = part[manifest.label_columns[manifest.labels.index(name)]]
            row[name] = f"{int(np.nansum(values))}/{int(values.notna().sum())}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")
