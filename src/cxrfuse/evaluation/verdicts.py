"""Trivial baselines and plain-word verdicts: is a model any better than a coin or a constant?

- :func:`baselines`: per label, the prevalence and the metrics of the trivial rules
  (always positive, always negative) and the chance line of AUROC (0.5).
- :func:`run_verdicts`: the conditions that hold for a run, each ``{label, kind, message}``:

  ``chance``
      the AUROC's 95 % interval includes 0.5 (bootstrap interval; DeLong's when there is none);
  ``trivial``
      the F1 is not above always-positive's beyond its interval: the lower end of the paired
      bootstrap interval of (model F1 - always-positive F1) on the test studies is not above 0
      (with no bootstrap: the F1 itself is not above it);
  ``constant``
      the predictions barely vary (standard deviation of the test probabilities below
      :data:`FLAT_SD`: not the interquartile range, which is near 0 for a confident model of a
      rare label), or the lowest validation loss came at the first epoch;
  ``small_val``
      the threshold was chosen on fewer than :data:`SMALL_VAL` validation studies of a class.

- :func:`paired_verdict`: one sentence for a paired difference with its interval (fused vs
  unimodal, chosen text vs indication, shuffled vs not): evidence only when the interval
  excludes 0, otherwise "too few studies to tell" with their number.
- :func:`run_conclusion` / :func:`experiment_conclusion`: the paragraph that opens a report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrfuse.evaluation.bootstrap import delong_covariance, paired_bootstrap
from cxrfuse.evaluation.metrics import check_inputs, label_names

CHANCE = 0.5
"""AUROC of a model that cannot rank (the chance line)."""
FLAT_SD = 0.02
"""Test probabilities whose standard deviation is below this barely vary (``constant``)."""
SMALL_VAL = 10
"""Fewer validation studies than this of a class make a chosen threshold unreliable."""
VERDICT_KINDS = ("chance", "trivial", "constant", "small_val")
NO_SKILL = ("chance", "trivial")
"""Kinds that mean a label's decisions are no better than a trivial rule."""


# ------------------------------------------------------------------------------ baselines
def baselines(y_true: np.ndarray, labels: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per label: ``n``, ``positives``, ``prevalence``, ``always_positive`` and
    ``always_negative`` (accuracy, precision, recall, F1) and ``chance_auroc`` (0.5).

    Always-positive: F1 = 2 prevalence / (1 + prevalence), accuracy = prevalence;
    always-negative: F1 = 0 (it finds no positive), accuracy = 1 - prevalence.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_true = y_true[:, None] if y_true.ndim == 1 else y_true
    names = label_names(labels, y_true.shape[1])
    out = {}
    for j, name in enumerate(names):
        y = y_true[~np.isnan(y_true[:, j]), j]
        n, pos = int(y.size), int(y.sum())
        prev = pos / n if n else None
        out[name] = {
            "n": n,
            "positives": pos,
            "prevalence": prev,
            "always_positive": {
                "accuracy": prev,
                "precision": prev,
                "recall": 1.0 if pos else None,
                "f1": None if prev is None else 2 * prev / (1 + prev),
            },
            "always_negative": {
                "accuracy": None if prev is None else 1 - prev,
                "precision": None,
                "recall": 0.0 if pos else None,
                "f1": 0.0 if pos else None,
            },
            "chance_auroc": CHANCE,
        }
    return out


# ------------------------------------------------------------------------------ verdicts
def verdict(label: str | None, kind: str, message: str) -> dict[str, Any]:
    """One verdict (``label`` None: the whole model)."""
    return {"label": label, "kind": kind, "message": message}


def auroc_interval(y: np.ndarray, p: np.ndarray) -> tuple[float, float] | None:
    """DeLong 95 % interval of one label's AUROC (None with one class or no variance)."""
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    if np.unique(y).size < 2:
        return None
    aucs, cov = delong_covariance(y, p[None, :])
    se = float(np.sqrt(max(float(cov[0, 0]), 0.0)))
    return float(aucs[0] - 1.959964 * se), float(aucs[0] + 1.959964 * se)


def _f(x: Any, digits: int = 2) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _ci(low: Any, high: Any, digits: int = 2) -> str:
    return "" if low is None or high is None else f" [{_f(low, digits)}, {_f(high, digits)}]"


def run_verdicts(
    y_test: np.ndarray,
    p_test: np.ndarray,
    thresholds: np.ndarray,
    labels: Sequence[str],
    *,
    y_val: np.ndarray | None = None,
    ci: Mapping[str, Any] | None = None,
    threshold_method: str | float = "f1",
    fit: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The verdicts that hold for a run's test predictions (see the module docstring).

    ``ci``: the run's bootstrap intervals (``label/<name>/auroc``), ``fit``: run.json's fit
    facts (``best_epoch``, ``epochs_run``), ``y_val``: the val labels the thresholds were
    chosen on (``threshold_method`` a number: chosen on nothing, no ``small_val``).
    """
    y_test, p_test = check_inputs(y_test, p_test)
    names = label_names(labels, y_test.shape[1])
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(names),))
    ci = ci or {}
    base = baselines(y_test, names)
    out: list[dict[str, Any]] = []
    for j, name in enumerate(names):
        known = ~np.isnan(y_test[:, j])
        y, p = y_test[known, j], p_test[known, j]
        if y.size == 0:
            continue
        two_classes = np.unique(y).size == 2
        # chance: the AUROC interval includes 0.5
        if two_classes:
            from sklearn.metrics import roc_auc_score

            auroc = float(roc_auc_score(y, p))
            interval = ci.get(f"label/{name}/auroc") or {}
            low, high = interval.get("low"), interval.get("high")
            how = "bootstrap"
            if low is None or high is None:
                found = auroc_interval(y, p)
                low, high = found if found else (None, None)
                how = "DeLong"
            if low is not None and high is not None and low <= CHANCE <= high:
                out.append(verdict(name, "chance",
                                   f"{name}: AUROC {_f(auroc)}{_ci(low, high)} ({how} 95 % "
                                   f"interval, {y.size} test studies) includes 0.5: the model "
                                   "is not distinguishable from chance"))  # fmt: skip
        # trivial: F1 not above always-positive beyond the interval of the difference
        always = base[name]["always_positive"]["f1"]
        if two_classes and always is not None:
            pred = p >= thresholds[j]
            tp, fp, fn = (pred & (y == 1)).sum(), (pred & (y == 0)).sum(), (~pred & (y == 1)).sum()
            f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
            diff_low = None
            if n_boot:
                paired = paired_bootstrap(y[:, None], p[:, None], np.ones((y.size, 1)),
                                          thresholds[j], 0.5, [name], metrics=("f1",),
                                          n_boot=n_boot, seed=seed)["f1"]  # fmt: skip
                diff_low, diff_high = paired["low"], paired["high"]
            if diff_low is not None:
                fires = diff_low <= 0
                detail = (f"difference {f1 - always:+.3f} [{diff_low:+.3f}, {diff_high:+.3f}], "
                          "paired bootstrap")  # fmt: skip
            else:
                fires = not f1 > always
                detail = f"difference {f1 - always:+.3f}, no interval"
            if fires:
                prev = base[name]["prevalence"]
                out.append(verdict(name, "trivial",
                                   f"{name}: F1 {_f(f1)} is not above the {_f(always)} of "
                                   f"calling every study positive beyond its interval ({detail}; "
                                   f"prevalence {prev:.0%}): the decisions cannot be told from a "
                                   "constant answer"))  # fmt: skip
        # constant: the predictions barely vary
        sd = float(p.std())
        if sd < FLAT_SD:
            q1, q3 = np.percentile(p, [25, 75])
            out.append(verdict(name, "constant",
                               f"{name}: the test probabilities barely vary (standard deviation "
                               f"{sd:.3f}, half of them between {q1:.3f} and {q3:.3f}, all between "
                               f"{p.min():.3f} and {p.max():.3f}): the model gives nearly the "
                               "same answer for every study"))  # fmt: skip
        # small_val: thresholds chosen on few studies of a class
        if y_val is not None and isinstance(threshold_method, str) and threshold_method in (
            "f1", "youden"
        ):
            yv = np.asarray(y_val, dtype=np.float64)
            yv = yv[:, None] if yv.ndim == 1 else yv
            col = yv[~np.isnan(yv[:, j]), j]
            pos, neg = int(col.sum()), int(col.size - col.sum())
            if min(pos, neg) < SMALL_VAL:
                out.append(verdict(name, "small_val",
                                   f"{name}: the decision threshold was chosen ({threshold_method}) "
                                   f"on a validation split with {pos} positive and {neg} negative "
                                   f"studies (fewer than {SMALL_VAL} of a class): the threshold, and "
                                   "every figure that depends on it, is unreliable"))  # fmt: skip
    if fit and fit.get("best_epoch") == 0 and (fit.get("epochs_run") or 0) > 1:
        out.append(verdict(None, "constant",
                           f"the lowest validation loss came at the first epoch (of "
                           f"{fit['epochs_run']} run): training never improved on the first "
                           "pass, so the model learned little or nothing from its inputs"))  # fmt: skip
    return out


def verdict_labels(verdicts: Sequence[Mapping[str, Any]], kinds: Sequence[str] = NO_SKILL
                   ) -> set[str]:  # fmt: skip
    """The labels with a verdict of one of ``kinds``."""
    return {v["label"] for v in verdicts if v.get("kind") in kinds and v.get("label")}


# ------------------------------------------------------------------------------ paired claims
def paired_verdict(diff: Mapping[str, Any], n: int, what: str, metric: str = "AUROC",
                   claim: str = "helps", versus: str = "") -> dict[str, Any]:  # fmt: skip
    """A difference with its paired interval in words: ``evidence`` (interval above 0),
    ``against`` (below 0) or ``unclear`` (includes 0: "too few studies to tell")."""
    d, low, high, p = diff.get("diff"), diff.get("low"), diff.get("high"), diff.get("p")
    if d is None:
        return {"status": "unclear", "text": f"{what}: no difference could be computed"}
    ci = f" [{low:+.3f}, {high:+.3f}]" if low is not None and high is not None else ""
    pv = f", p = {p:.2g}" if p is not None else ""
    head = f"{what} {d:+.3f} {metric}{ci}{versus}{pv} on {n} test studies"
    if low is not None and low > 0:
        return {"status": "evidence", "text": f"{head}: evidence that it {claim}"}
    if high is not None and high < 0:
        return {"status": "against", "text": f"{head}: evidence that it does worse"}
    why = "no interval" if low is None else "the interval includes 0"
    return {"status": "unclear",
            "text": f"{head}: no evidence that it {claim} ({why}; too few studies to tell)"}


# ------------------------------------------------------------------------------ conclusions
def _label_sentence(metrics: Mapping[str, Any], name: str) -> str:
    m = metrics["test"]["per_label"][name]
    ci = metrics.get("ci", {})
    a = ci.get(f"label/{name}/auroc") or {}
    f = ci.get(f"label/{name}/f1") or {}
    base = (metrics["test"].get("baselines") or {}).get(name, {})
    always = (base.get("always_positive") or {}).get("f1")
    kinds = {v["kind"] for v in metrics["test"].get("verdicts", []) if v.get("label") == name}
    parts = [f"AUROC {_f(m.get('auroc'))}{_ci(a.get('low'), a.get('high'))}"]
    if "chance" in kinds:
        parts[-1] += ": not distinguishable from chance"
    f1_text = f"F1 {_f(m.get('f1'))}{_ci(f.get('low'), f.get('high'))}"
    if always is not None:
        rel = "no better than" if "trivial" in kinds else "against"
        f1_text += f" {rel} always-positive's {_f(always)}"
    parts.append(f1_text)
    label = "" if len(metrics["labels"]) == 1 else f"{name}: "
    return label + "; ".join(parts)


def run_conclusion(metrics: Mapping[str, Any]) -> str:
    """One paragraph: per label AUROC and F1 against chance and always-positive, then what the
    verdicts say."""
    test = metrics["test"]
    verdicts = test.get("verdicts", [])
    sentences = [_label_sentence(metrics, name) for name in metrics["labels"]][:6]
    if len(metrics["labels"]) > 6:
        sentences.append(f"... ({len(metrics['labels']) - 6} more labels in the tables)")
    text = "On the test split, " + "; ".join(sentences) + "."
    bad = verdict_labels(verdicts)
    if bad:
        text += (f" For {len(bad)} of {len(metrics['labels'])} label(s) the model ranks no better "
                 "than chance or decides no better than calling every study positive: do not "
                 "read its decisions as findings.")  # fmt: skip
    elif verdicts:
        text += " See the warnings below before trusting the figures."
    else:
        text += (" Every label's AUROC interval excludes chance and its F1 is above "
                 "always-positive's beyond the interval.")  # fmt: skip
    leak = metrics.get("leakage") or {}
    if leak.get("conclusion"):
        text += f" Leakage probe: {leak['conclusion']}."
    return text


def experiment_conclusion(evaluation: Mapping[str, Any],
                          metrics: Mapping[str, Mapping[str, Any]]) -> str:  # fmt: skip
    """One paragraph: per setting, fused vs the best unimodal model (paired bootstrap on AUROC)
    and how many runs are not distinguishable from chance."""
    parts = []
    for comp in evaluation.get("settings", []):
        prefix = "" if len(evaluation.get("settings", [])) == 1 else f"setting {comp['setting']}: "
        tests = [t for t in comp.get("paired", []) if t.get("bootstrap", {}).get("auroc")]
        if tests:
            t = tests[0]
            words = paired_verdict(t["bootstrap"]["auroc"], t["studies"], "fusion adds",
                                   versus=f" over {comp.get('best_unimodal', 'unimodal').lower()}"
                                   " alone", claim="helps")  # fmt: skip
            more = f" (seed {t['seed']}; {len(tests)} seeds in the tables)" if len(tests) > 1 else ""
            parts.append(prefix + words["text"] + more)
        elif comp.get("paired"):
            parts.append(prefix + "fused vs unimodal has no bootstrap (n_boot 0): no claim")
        else:
            parts.append(prefix + "no fused and unimodal pair of runs to compare")
    chance = [name for name, m in metrics.items()
              if any(v.get("kind") == "chance" for v in m.get("test", {}).get("verdicts", []))]
    trivial = [name for name, m in metrics.items()
               if any(v.get("kind") == "trivial" for v in m.get("test", {}).get("verdicts", []))]
    text = "; ".join(parts) + "." if parts else ""
    if chance:
        text += (f" {len(chance)} of {len(metrics)} run(s) are not distinguishable from chance "
                 f"on some label ({', '.join(chance)}).")  # fmt: skip
    if trivial:
        text += (f" {len(trivial)} of {len(metrics)} run(s) have an F1 no better than calling "
                 f"every study positive on some label ({', '.join(trivial)}).")  # fmt: skip
    if not chance and not trivial and metrics:
        text += " Every run's AUROC intervals exclude chance."
    text = text.strip()
    return text[:1].upper() + text[1:]


__all__ = [
    "CHANCE",
    "FLAT_SD",
    "NO_SKILL",
    "SMALL_VAL",
    "VERDICT_KINDS",
    "baselines",
    "experiment_conclusion",
    "paired_verdict",
    "run_conclusion",
    "run_verdicts",
    "verdict_labels",
]
