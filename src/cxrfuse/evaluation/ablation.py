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
from tqdm.auto import tqdm

from cxrfuse.data.manifest import Manifest
from cxrfuse.evaluation.bootstrap import (
    paired_bootstrap,
    replicate_metrics,
    resample_counts,
    seed_summary,
)
from cxrfuse.evaluation.metrics import (
    HEADLINE,
    check_inputs,
    compute_metrics,
    correct_matrix,
    label_names,
    per_label_thresholds,
)
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.text import TextConfig, audit_leakage, prepare_texts

ModalityInput = np.ndarray | tuple[np.ndarray, ...]
TABLE_METRICS = ("auroc", "precision", "recall", "f1")
MODALITY_NAMES = {("image",): "Image", ("text",): "Text", ("image", "text"): "Multimodal"}
INDICATION_ONLY = TextConfig(sections=["indication"], mask_labels=True)
LEAK_GAP = 0.10
"""A chosen-text AUROC this far above the indication's (macro) whose paired interval still
includes 0 gets the note "too few studies to tell" (the warning needs the interval above 0)."""


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
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Bimodal sensitivity test: how much worse is the model when one modality is shuffled?

    ``inputs[modality]`` (an array, or a tuple such as ``(embeddings, mask)``) and
    ``inputs[modality + "_mask"]`` if present are permuted together across studies, the rest
    is untouched; ``predict_proba`` is called on the result ``repeats`` times with seeded
    permutations. Returns the baseline metrics, the shuffled metrics per repeat, and per metric
    the drop (baseline - shuffled): mean, sd and min-max range over repeats, and the 95 %
    paired-bootstrap interval of the mean drop over ``n_boot`` resamples of the test studies
    (``low``, ``high``) with ``status``: ``evidence`` only when the interval is above 0 (the
    model uses the modality), else ``unclear`` (too few studies to tell), ``against`` (below
    0) or ``none`` (no resample changes: the model ignores the modality).
    """
    if modality not in inputs:
        raise CxrfuseError(f"cannot shuffle {modality!r}: the inputs hold {sorted(inputs)}")
    if repeats < 1:
        raise CxrfuseError("repeats must be at least 1")
    y = np.asarray(y, dtype=np.float64)
    n = len(y)

    probs: list[np.ndarray] = []

    def score(batch: Mapping[str, ModalityInput]) -> dict[str, float]:
        prob = np.asarray(predict_proba(dict(batch)), dtype=np.float64).reshape(y.shape)
        probs.append(prob)
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
    for m, interval in _drop_intervals(y, probs[0], probs[1:], thresholds, labels, metrics,
                                       n_boot, seed).items():  # fmt: skip
        drop[m].update(interval)
    return {
        "modality": modality,
        "repeats": repeats,
        "seed": seed,
        "baseline": {m: baseline[m] for m in metrics},
        "shuffled": shuffled,
        "drop": drop,
    }


def _drop_intervals(y: np.ndarray, base: np.ndarray, shuffled: Sequence[np.ndarray],
                    thresholds: np.ndarray | float, labels: Sequence[str] | None,
                    metrics: Sequence[str], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Paired bootstrap (the same resampled studies for the model and its shuffled copies) of
    the mean drop over repeats: per metric ``low``, ``high``, ``status``, ``n``."""
    y2, base = check_inputs(y, base)
    shuffled = [check_inputs(y, s)[1] for s in shuffled]
    names = label_names(labels, y2.shape[1])
    thr = per_label_thresholds(thresholds, y2.shape[1])
    if not n_boot:
        return {m: {"low": None, "high": None, "status": "unclear", "n": len(y2)} for m in metrics}
    samples: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for w in resample_counts(len(y2), n_boot, seed):
        b = replicate_metrics(w, y2, base, thr, names, micro=False)
        per_repeat = [replicate_metrics(w, y2, s, thr, names, micro=False) for s in shuffled]
        for m in metrics:
            samples[m].append(np.mean([b[f"headline/{m}"] - r[f"headline/{m}"]
                                       for r in per_repeat], axis=0))  # fmt: skip
    out = {}
    for m in metrics:
        d = np.concatenate(samples[m])
        d = d[np.isfinite(d)]
        low = high = None
        if d.size >= max(10, n_boot // 2):
            low, high = (float(v) for v in np.percentile(d, [2.5, 97.5]))
        status = ("evidence" if low is not None and low > 0 else
                  "against" if high is not None and high < 0 else
                  "none" if low == high == 0 else "unclear")  # fmt: skip
        out[m] = {"low": low, "high": high, "status": status, "n": len(y2)}
    return out


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
def _probe_scores(
    texts: pd.Series, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> np.ndarray | None:
    """The probe's scores of the test rows (fitted on the train rows), None when either split
    has one class."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    fit, score = train & ~np.isnan(y), test & ~np.isnan(y)
    if len(np.unique(y[fit])) < 2 or len(np.unique(y[score])) < 2:
        return None
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, C=4.0),
    )
    docs = texts.fillna("").to_numpy()
    flat = np.full(int(test.sum()), 0.5)
    if not any(d.strip() for d in docs[fit]):
        return flat  # no text at all: the probe can only guess
    try:
        model.fit(docs[fit], y[fit].astype(int))
    except ValueError:  # empty vocabulary after min_df
        return flat
    return model.predict_proba(docs[test])[:, 1]


def _probe_auroc(
    texts: pd.Series, y: np.ndarray, train: np.ndarray, test: np.ndarray
) -> float | None:
    from sklearn.metrics import roc_auc_score

    scores = _probe_scores(texts, y, train, test)
    if scores is None:
        return None
    known = ~np.isnan(y[test])
    return float(roc_auc_score(y[test][known].astype(int), scores[known]))


def leakage_reading(macro: Mapping[str, float | None], paired: Mapping[str, Any] | None,
                    n_test: int, text_name: str, same: bool = False
                    ) -> tuple[str | None, str | None, str | None]:  # fmt: skip
    """(warning, note, conclusion) of a leakage probe: the warning only when the paired
    interval of (chosen - indication) is above 0; a gap of :data:`LEAK_GAP` or more whose
    interval includes 0 is "too few studies to tell" with ``n_test``."""
    warning = note = conclusion = None
    gap = (None if macro.get("chosen") is None or macro.get("indication") is None
           else macro["chosen"] - macro["indication"])  # fmt: skip
    if same:
        return None, ("the chosen text is the indication alone: nothing to compare it with"), (
            "the model reads the indication only")
    if gap is None:
        return None, None, None
    ci = (f" [{paired['low']:+.3f}, {paired['high']:+.3f}]"
          if paired and paired.get("low") is not None else "")  # fmt: skip
    diff = (f"AUROC {macro['chosen']:.3f} from words alone against {macro['indication']:.3f} "
            f"for the indication (difference {gap:+.3f}{ci}, paired bootstrap on {n_test} "
            "test studies)")  # fmt: skip
    if paired and paired.get("low") is not None and paired["low"] > 0:
        warning = (
            f"The chosen text ({text_name}) predicts the labels with {diff}: "
            "the text still carries the label. Results of text and fused models on this text "
            "measure report reading, not image understanding."
        )
        conclusion = f"the chosen text carries the label beyond the indication ({gap:+.3f}{ci})"
    elif gap >= LEAK_GAP:
        why = "the interval includes 0" if paired else "no interval (n_boot 0)"
        note = (f"The chosen text ({text_name}) scores {diff}: {why}, too few studies to "
                f"tell whether the text carries the label (n = {n_test}).")  # fmt: skip
        conclusion = f"too few studies to tell whether the text carries the label (n = {n_test})"
    else:
        note = (f"The chosen text ({text_name}) scores {diff}: no evidence that it carries "
                "the label beyond the indication.")  # fmt: skip
        conclusion = "no evidence that the chosen text carries the label beyond the indication"
    return warning, note, conclusion


def leakage_probe(
    manifest: Manifest, config: TextConfig, task: str | None = None, *, n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Can words alone predict the labels? TF-IDF (1-2 grams) + logistic regression fitted on the
    manifest's ``train`` split, AUROC on ``test``, for the chosen text and for the indication only.

    Returns per-label and macro AUROCs of both texts, the paired bootstrap (``n_boot``
    resamples of the test studies) of the macro difference chosen - indication (``paired``),
    the leakage audit of the chosen text (:func:`cxrfuse.text.audit_leakage`), ``warning``
    (a plain sentence only when the interval of the difference is above 0: evidence that the
    chosen text carries the label beyond the indication; else None), ``note`` (why there is no
    warning: "too few studies to tell" with their number, or no sign of a gap) and
    ``conclusion`` (one clause for the report's opening paragraph).
    """
    from sklearn.metrics import roc_auc_score

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
    paired_y, paired_chosen, paired_indication = [], [], []
    for name in tqdm(labels, desc="leakage probe", leave=False):
        y = manifest.label_matrix([name])[:, 0].astype(np.float64)
        chosen = _probe_scores(texts["chosen"], y, train, test)
        indication = chosen if same else _probe_scores(texts["indication"], y, train, test)
        known = ~np.isnan(y[test])
        per_label[name] = {
            k: None if s is None else float(roc_auc_score(y[test][known].astype(int), s[known]))
            for k, s in (("chosen", chosen), ("indication", indication))
        }
        if chosen is not None and indication is not None and not same:
            paired_y.append(y[test])
            paired_chosen.append(np.where(known, chosen, 0.5))
            paired_indication.append(np.where(known, indication, 0.5))
    macro = {
        k: seed_summary([v[k] for v in per_label.values()])["mean"]
        for k in ("chosen", "indication")
    }
    paired: dict[str, Any] | None = None
    if paired_y and n_boot:
        paired = paired_bootstrap(np.stack(paired_y, 1), np.stack(paired_chosen, 1),
                                  np.stack(paired_indication, 1), 0.5, 0.5, metrics=("auroc",),
                                  n_boot=n_boot, seed=seed)["auroc"]  # fmt: skip
    n_test = int(test.sum())
    audit = audit_leakage(manifest, config, task=task)
    gap = None if None in macro.values() else macro["chosen"] - macro["indication"]
    text_name = (f"{'+'.join(config.sections)}, masking "
                 f"{'on' if config.mask_labels else 'off'}")  # fmt: skip
    warning, note, conclusion = leakage_reading(macro, paired, n_test, text_name, same)
    audit_dict = audit.to_dict()
    audit_dict["rows"] = [r for r in audit_dict["rows"] if r["studies"] > 0]
    return {
        "task": task,
        "text_config": config.model_dump(),
        "train": int(train.sum()),
        "test": int(test.sum()),
        "per_label": per_label,
        "macro": macro,
        "gap": gap,
        "paired": paired,
        "n_boot": n_boot,
        "audit": audit_dict,
        "warning": warning,
        "note": note,
        "conclusion": conclusion,
    }
