"""What each modality contributes, and whether the text gives the label away.

- :func:`modality_table`: unimodal vs multimodal rows of one config (design 000, Table 2 shape).
- :func:`shuffle_sensitivity`: the bimodal sensitivity test of design 004: permute one modality's
  rows across test studies, re-predict, report each metric's drop over several shuffles.
- :func:`complementarity`: (study, label) pairs right for both unimodal models, only one, or
  neither (design 000, Figure 2).
- :func:`leakage_probe`: a bag-of-words text-only model on the chosen text vs on the indication
  alone, beside the surviving-term audit; a large gap means the text still carries the label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from tqdm.auto import tqdm

from cxrfuse.data.manifest import Manifest
from cxrfuse.evaluation.bootstrap import seed_summary
from cxrfuse.evaluation.metrics import HEADLINE, check_inputs, compute_metrics, correct_matrix
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.text import TextConfig, audit_leakage, prepare_texts

ModalityInput = np.ndarray | tuple[np.ndarray, ...]
TABLE_METRICS = ("auroc", "precision", "recall", "f1")
MODALITY_NAMES = {("image",): "Image", ("text",): "Text", ("image", "text"): "Multimodal"}
INDICATION_ONLY = TextConfig(sections=["indication"], mask_labels=True)
LEAK_GAP = 0.10
"""Chosen-text AUROC this far above the indication's (macro) triggers the leakage warning."""


def modality_name(modalities: Sequence[str]) -> str:
    """``["text", "image"]`` -> ``"Multimodal"``; one modality -> its capitalised name."""
    key = tuple(sorted(modalities))
    return MODALITY_NAMES.get(key, "+".join(key))


# ---------------------------------------------------------------------------- modality table
def modality_table(
    runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS
) -> pd.DataFrame:
    """One row per modality set: each metric as mean, sd across seeds and the bootstrap interval.

    Each run is ``{"modalities": [...], "seed": int, "metrics": <metrics.json dict>}``. With one
    seed, ``<metric>_low``/``<metric>_high`` hold its 95 % bootstrap interval; with several,
    ``<metric>_sd`` holds the standard deviation across seeds (the intervals of the mean are
    not pooled). Rows run Image, Text, Multimodal.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(modality_name(run["modalities"]), []).append(run)
    order = [*MODALITY_NAMES.values()]
    rows = []
    for name in sorted(groups, key=lambda g: (order.index(g) if g in order else len(order), g)):
        members = groups[name]
        row: dict[str, Any] = {"modality": name, "seeds": len(members)}
        for m in metrics:
            summary = seed_summary([r["metrics"]["test"]["headline"].get(m) for r in members])
            row[m], row[f"{m}_sd"] = summary["mean"], summary["sd"]
            ci = (
                members[0]["metrics"].get("ci", {}).get(f"headline/{m}", {})
                if len(members) == 1
                else {}
            )
            row[f"{m}_low"], row[f"{m}_high"] = ci.get("low"), ci.get("high")
        rows.append(row)
    return pd.DataFrame(rows)


def format_value(
    mean: float | None,
    sd: float | None = None,
    low: float | None = None,
    high: float | None = None,
    digits: int = 3,
) -> str:
    """``0.812 ± 0.031`` (seeds), ``0.812 [0.780, 0.840]`` (bootstrap CI), ``0.812``, or ``-``."""
    if mean is None or not np.isfinite(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if sd is not None and np.isfinite(sd):
        return f"{text} ± {sd:.{digits}f}"
    if low is not None and high is not None:
        return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def format_table(
    table: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS, key: str = "modality"
) -> pd.DataFrame:
    """The numeric table of :func:`modality_table` as display strings."""
    out = pd.DataFrame({key: table[key]})
    if "seeds" in table:
        out["seeds"] = table["seeds"]
    for m in metrics:
        out[m.upper() if m in ("auroc", "auprc") else m.capitalize()] = [
            format_value(r[m], r.get(f"{m}_sd"), r.get(f"{m}_low"), r.get(f"{m}_high"))
            for _, r in table.iterrows()
        ]
    return out


# ---------------------------------------------------------------------------- shuffle test
def _permute(value: ModalityInput, order: np.ndarray) -> ModalityInput:
    if isinstance(value, tuple):
        return tuple(np.asarray(v)[order] for v in value)
    return np.asarray(value)[order]


def shuffle_sensitivity(
    predict_proba: Callable[[dict[str, ModalityInput]], np.ndarray],
    inputs: Mapping[str, ModalityInput],
    y: np.ndarray,
    modality: str,
    repeats: int = 5,
    seed: int = 0,
    metrics: Sequence[str] = HEADLINE,
    thresholds: np.ndarray | float = 0.5,
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Bimodal sensitivity test: how much worse is the model when one modality is shuffled?

    ``inputs[modality]`` (an array, or a tuple such as ``(embeddings, mask)``) and
    ``inputs[modality + "_mask"]`` if present are permuted together across studies, the rest
    is untouched; ``predict_proba`` is called on the result ``repeats`` times with seeded
    permutations. Returns the baseline metrics, the shuffled metrics per repeat, and per metric
    the drop (baseline - shuffled): mean, sd and min-max range over repeats.
    """
    if modality not in inputs:
        raise CxrfuseError(f"cannot shuffle {modality!r}: the inputs hold {sorted(inputs)}")
    if repeats < 1:
        raise CxrfuseError("repeats must be at least 1")
    y = np.asarray(y, dtype=np.float64)
    n = len(y)

    def score(batch: Mapping[str, ModalityInput]) -> dict[str, float]:
        prob = np.asarray(predict_proba(dict(batch)), dtype=np.float64).reshape(y.shape)
        return compute_metrics(y, prob, thresholds, labels)["headline"]

    baseline = score(inputs)
    rng = np.random.default_rng(seed)
    shuffled: dict[str, list[float]] = {m: [] for m in metrics}
    keys = [k for k in (modality, f"{modality}_mask") if k in inputs]
    for _ in tqdm(range(repeats), desc=f"shuffle {modality}", leave=False):
        order = rng.permutation(n)
        batch = dict(inputs)
        batch.update({k: _permute(inputs[k], order) for k in keys})
        result = score(batch)
        for m in metrics:
            shuffled[m].append(result[m])
    drop = {}
    for m in metrics:
        d = baseline[m] - np.asarray(shuffled[m], dtype=float)
        drop[m] = {
            "mean": float(np.nanmean(d)),
            "sd": float(np.nanstd(d, ddof=1)) if repeats > 1 else None,
            "min": float(np.nanmin(d)),
            "max": float(np.nanmax(d)),
        }
    return {
        "modality": modality,
        "repeats": repeats,
        "seed": seed,
        "baseline": {m: baseline[m] for m in metrics},
        "shuffled": shuffled,
        "drop": drop,
    }


# ---------------------------------------------------------------------------- complementarity
def complementarity(
    y_true: np.ndarray,
    prob_image: np.ndarray,
    prob_text: np.ndarray,
    thresholds_image: np.ndarray | float,
    thresholds_text: np.ndarray | float,
) -> dict[str, dict[str, int]]:
    """Which (study, label) pairs, and which whole studies, each unimodal model gets right.

    Pairs: every known (study, label). Studies: those with every label known, right when all
    their labels are (exact match). Each holds ``both``, ``only_text``, ``only_image``,
    ``neither`` and ``total``.
    """
    y_true, prob_image = check_inputs(y_true, prob_image)
    _, prob_text = check_inputs(y_true, prob_text)
    right_image = correct_matrix(y_true, prob_image, thresholds_image)
    right_text = correct_matrix(y_true, prob_text, thresholds_text)
    known = ~np.isnan(y_true)
    complete = known.all(axis=1)

    def counts(a: np.ndarray, b: np.ndarray) -> dict[str, int]:
        a, b = a.astype(bool), b.astype(bool)
        return {
            "both": int((a & b).sum()),
            "only_text": int((b & ~a).sum()),
            "only_image": int((a & ~b).sum()),
            "neither": int((~a & ~b).sum()),
            "total": int(a.size),
        }

    pairs = counts(right_image[known], right_text[known])
    studies = counts(
        np.nan_to_num(right_image[complete]).all(axis=1),
        np.nan_to_num(right_text[complete]).all(axis=1),
    )
    return {"pairs": pairs, "studies": studies}


# ---------------------------------------------------------------------------- leakage probe
def _probe_auroc(
    texts: pd.Series, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> float | None:
    fit, score = train & ~np.isnan(y), test & ~np.isnan(y)
    if len(np.unique(y[fit])) < 2 or len(np.unique(y[score])) < 2:
        return None
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0),
    )
    docs = texts.fillna("").to_numpy()
    if not any(d.strip() for d in docs[fit]):
        return 0.5  # no text at all: the probe can only guess
    try:
        model.fit(docs[fit], y[fit].astype(int))
    except ValueError:  # empty vocabulary after min_df
        return 0.5
    return float(roc_auc_score(y[score].astype(int), model.predict_proba(docs[score])[:, 1]))


def leakage_probe(
    manifest: Manifest, config: TextConfig, task: str | None = None
) -> dict[str, Any]:
    """Can words alone predict the labels? TF-IDF (1-2 grams) + logistic regression fitted on the
    manifest's ``train`` split, AUROC on ``test``, for the chosen text and for the indication only.

    Returns per-label and macro AUROCs of both texts, the leakage audit of the chosen text
    (:func:`cxrfuse.text.audit_leakage`) and ``warning`` (None, or a plain sentence when the
    chosen text's macro AUROC is :data:`LEAK_GAP` or more above the indication's).
    """
    split = manifest.df["split"].to_numpy()
    train, test = split == "train", split == "test"
    if not train.any() or not test.any():
        raise DataError(
            "leakage probe: the manifest needs 'train' and 'test' rows in its split column "
            "(run `cxrfuse split` first)"
        )
    labels = manifest.task_labels(task)
    texts = {
        "chosen": prepare_texts(manifest, config, task),
        "indication": prepare_texts(manifest, INDICATION_ONLY, task),
    }
    same = config.model_dump() == INDICATION_ONLY.model_dump()
    per_label = {}
    for name in tqdm(labels, desc="leakage probe", leave=False):
        y = manifest.label_matrix([name])[:, 0].astype(np.float64)
        chosen = _probe_auroc(texts["chosen"], y, train, test)
        per_label[name] = {
            "chosen": chosen,
            "indication": chosen if same else _probe_auroc(texts["indication"], y, train, test),
        }
    macro = {
        k: seed_summary([v[k] for v in per_label.values()])["mean"]
        for k in ("chosen", "indication")
    }
    audit = audit_leakage(manifest, config, task=task)
    warning = None
    if (
        not same
        and macro["chosen"] is not None
        and macro["indication"] is not None
        and macro["chosen"] - macro["indication"] >= LEAK_GAP
    ):
        warning = (
            f"The chosen text ({'+'.join(config.sections)}, masking "
            f"{'on' if config.mask_labels else 'off'}) predicts the labels from words alone with "
            f"AUROC {macro['chosen']:.3f}, against {macro['indication']:.3f} for the indication: "
            "the text still carries the label. Results of text and fused models on this text "
            "measure report reading, not image understanding."
        )
    audit_dict = audit.to_dict()
    audit_dict["rows"] = [r for r in audit_dict["rows"] if r["studies"] > 0]
    return {
        "task": task,
        "text_config": config.model_dump(),
        "train": int(train.sum()),
        "test": int(test.sum()),
        "per_label": per_label,
        "macro": macro,
        "gap": (None if None in macro.values() else macro["chosen"] - macro["indication"]),
        "audit": audit_dict,
        "warning": warning,
    }
