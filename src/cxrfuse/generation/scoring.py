"""Score generated reports against references: language metrics and clinical efficacy.

:func:`score_reports` is what ``cxrfuse generate score`` runs, and what a caller uses to
score each system (or baseline) on the same references::

    from cxrfuse.generation import read_reports, score_reports, scores_table, write_scores

    generated = read_reports("generated.json")       # {id: [text]}
    references = read_reports("references.csv")      # {id: [text, ...]}
    payload = score_reports(generated, references, n_boot=1000, seed=0)
    write_scores("scores/", payload)                 # scores.json (+ study_labels.csv)
    print(scores_table(payload))

Two payloads of the same references (same study order and seed) share their bootstrap
replicates: :func:`paired_comparison` gives the paired difference per metric::

    other = score_reports(read_reports("cmn.json"), references, n_boot=1000, seed=0)
    paired_comparison(other, payload)["bleu_4"]      # {"diff", "low", "high", "p"}

Language metrics: :mod:`cxrfuse.generation.language` (R2Gen normalisation, pycocoevalcap).
Clinical efficacy: :mod:`cxrfuse.generation.clinical` on the labels of
:mod:`cxrfuse.generation.labeler` (rule-based by default; CheXbert when given). The labeler
reads the texts as given (it needs their punctuation), not the normalised ones; with several
references per study, the first one is labelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrfuse.generation.bootstrap import estimate, paired_difference, replicate_weights
from cxrfuse.generation.chexbert import CheXbertLabeler
from cxrfuse.generation.clinical import clinical_scores
from cxrfuse.generation.labeler import CHECKPOINT_HELP, CHEXPERT_LABELS, Labeler, RuleLabeler
from cxrfuse.generation.language import (
    LANGUAGE_KEYS,
    java_available,
    language_scores,
    normalisation_style,
    normalise_report,
)
from cxrfuse.problems import CxrfuseError, DataError


def _one_text(study: str, value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    raise DataError(f"generated report of study {study!r}: expected one text, got {value!r:.80}")


def _texts(study: str, value: str | Sequence[str]) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise DataError(f"reference of study {study!r}: expected text(s), got {value!r:.80}")
    return texts


def make_labeler(name: str = "rules", path: str | Path | None = None) -> Labeler:
    """``"rules"`` (:class:`RuleLabeler`) or ``"chexbert"`` (:class:`CheXbertLabeler`, which
    needs ``path``, the CheXbert checkpoint)."""
    key = name.strip().lower()
    if key in ("rules", "rule", "rule-based"):
        return RuleLabeler()
    if key == "chexbert":
        if path is None:
            raise CxrfuseError(f"the chexbert labeler needs its checkpoint file (--chexbert PATH); {CHECKPOINT_HELP}")
        return CheXbertLabeler(path)
    raise CxrfuseError(f"unknown labeler {name!r}; choose 'rules' or 'chexbert'")


def score_reports(
    generated: Mapping[str, str | Sequence[str]],
    references: Mapping[str, str | Sequence[str]],
    labeler: Labeler | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    *,
    n_boot_language: int = 200,
    uncertain: str = "negative",
    style: str = "iu_xray",
    normalise: str | None = None,
    subset: bool = False,
    meteor: bool = True,
    extra_metrics: Any = None,
) -> dict[str, Any]:
    """The scores.json payload for ``generated`` against ``references``.

    Both map study id -> text (a one-element list is accepted for generated reports, several
    references per study for the references). The id sets must match; ``subset=True`` scores
    the generated ids only and drops references without a generated report (their number is
    stored). ``n_boot`` resamples the clinical scores, ``n_boot_language`` the language metrics
    (corpus BLEU/CIDEr are recomputed per replicate, so fewer); both use ``seed``.
    ``normalise`` (``r2gen-iu``, ``r2gen-mimic``, ``none``) overrides ``style``.
    ``extra_metrics`` (e.g. :class:`~cxrfuse.generation.radeval_metrics.RadEvalMetrics`)
    scores per study; their means get intervals from the clinical replicates, under ``extra``.

    Keys: ``bleu_1`` .. ``bleu_4``, ``meteor`` (None when it could not run, with the reason in
    ``notes``), ``rouge_l``, ``cider`` (each ``{"value", "low", "high"}``), ``clinical``
    (:func:`~cxrfuse.generation.clinical.clinical_scores`), ``n_studies``, ``labeler``,
    ``normalisation``, ``notes``, and ``study_labels`` (per-study labels of both report sets;
    :func:`~cxrfuse.generation.reports_io.write_scores` stores them beside scores.json).
    """
    gen = {str(k): _one_text(str(k), v) for k, v in generated.items()}
    refs = {str(k): _texts(str(k), v) for k, v in references.items()}
    notes: list[str] = []
    if subset:
        unused = sorted(set(refs) - set(gen))
        refs = {k: v for k, v in refs.items() if k in gen}
        if unused:
            notes.append(f"{len(unused)} reference studies without a generated report were left out")
    normalised = True
    if normalise is not None:
        chosen = normalisation_style(normalise)
        normalised, style = chosen is not None, chosen or style
    language = language_scores(gen, refs, n_boot=n_boot_language, seed=seed, style=style,
                               meteor=meteor, normalise=normalised)
    ids = list(gen)
    labeler = labeler if labeler is not None else RuleLabeler()
    gen_labels = labeler.label([gen[i] for i in ids])
    ref_labels = labeler.label([refs[i][0] for i in ids])
    if any(len(refs[i]) > 1 for i in ids):
        notes.append("clinical efficacy labels the first reference of each study")
    clinical = clinical_scores(gen_labels, ref_labels, CHEXPERT_LABELS, n_boot=n_boot, seed=seed,
                               uncertain=uncertain)
    empty = sum(1 for i in ids if not gen[i].strip())
    if empty:
        notes.append(f"{empty} generated report(s) are empty (scored as empty text)")
    samples = {**language.pop("_samples"), **clinical.pop("_samples")}
    per_study = {**language.pop("_per_study"), **clinical.pop("_per_study")}
    extra: dict[str, Any] = {}
    if extra_metrics is not None:
        weights = replicate_weights(len(ids), n_boot, seed)
        for key, values in extra_metrics.score([gen[i] for i in ids], [refs[i][0] for i in ids]).items():
            values = np.asarray(values, dtype=np.float64)
            per_study[key] = values
            samples[key] = weights @ values / np.maximum(weights.sum(axis=1), 1.0)
            extra[key] = estimate(float(np.mean(values)), samples[key])
        notes.append(f"{extra_metrics.description}: means of per-study scores, first reference")
    payload: dict[str, Any] = {key: language[key] for key in LANGUAGE_KEYS}
    if extra:
        payload["extra"] = extra
    payload.update(
        clinical=clinical,
        n_studies=len(ids),
        n_boot_language=n_boot_language,
        n_boot_clinical=n_boot,
        seed=seed,
        labeler=getattr(labeler, "name", type(labeler).__name__),
        normalisation=language["normalisation"],
        notes=language["notes"] + notes,
        versions=metric_versions(labeler, language["normalisation"], meteor and payload_meteor(language)),
        _ids=ids,
        _samples=samples,
        _per_study=per_study,
        study_labels={
            "labels": list(CHEXPERT_LABELS),
            "generated": dict(zip(ids, gen_labels.tolist())),
            "reference": dict(zip(ids, ref_labels.tolist())),
        },
    )
    return payload


def payload_meteor(language: Mapping[str, Any]) -> bool:
    """Whether METEOR was computed."""
    return language.get("meteor") is not None


def metric_versions(labeler: Labeler | None, normalisation: str, meteor_ran: bool) -> dict[str, Any]:
    """What a figure depends on besides the split: metric package versions, the text
    normalisation, the labeler, Java (METEOR)."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"pycocoevalcap": version("pycocoevalcap"), "java": java_available(),
            "meteor": "METEOR 1.5 (pycocoevalcap jar)" if meteor_ran else None,
            "normalisation": normalisation,
            "labeler": getattr(labeler, "name", type(labeler).__name__)}


def private_keys(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` without its in-memory keys (``_samples``, ``_per_study``, ``_ids``, ...),
    recursively: what goes into scores.json."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if str(key).startswith("_"):
            continue
        out[key] = private_keys(value) if isinstance(value, Mapping) else value
    return out


def paired_comparison(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Per metric, the paired bootstrap difference ``a - b`` (``diff``, ``low``, ``high``,
    ``p``) of two payloads of :func:`score_reports` on the same studies, same order and seed."""
    if a.get("_ids") != b.get("_ids"):
        raise CxrfuseError("a paired comparison needs both systems scored on the same studies")
    out: dict[str, Any] = {}
    for key in (*LANGUAGE_KEYS, *CLINICAL_KEYS, *sorted(a.get("extra") or {})):
        ea, eb = _entry(a, key), _entry(b, key)
        if ea is None or eb is None:
            continue
        out[key] = paired_difference(ea.get("value"), eb.get("value"), a["_samples"].get(key, np.array([])),
                                     b["_samples"].get(key, np.array([])))
    return out


CLINICAL_KEYS = ("micro_f1_14", "macro_f1_14", "micro_precision_14", "micro_recall_14",
                 "micro_f1_5", "macro_f1_5")


def _entry(payload: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    if key in LANGUAGE_KEYS:
        return payload.get(key)
    if key in CLINICAL_KEYS:
        return (payload.get("clinical") or {}).get(key)
    return (payload.get("extra") or {}).get(key)


__all__ = [
    "CLINICAL_KEYS",
    "clinical_scores",
    "java_available",
    "language_scores",
    "make_labeler",
    "metric_versions",
    "normalise_report",
    "paired_comparison",
    "private_keys",
    "score_reports",
]
