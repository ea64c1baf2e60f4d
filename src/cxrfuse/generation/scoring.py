"""Score generated reports against references: language metrics and clinical efficacy.

:func:`score_reports` is what ``cxrfuse generate score`` runs, and what a caller uses to
score each system (or baseline) on the same references::

    from cxrfuse.generation import read_reports, score_reports, scores_table, write_scores

    generated = read_reports("generated.json")       # {id: [text]}
    references = read_reports("references.csv")      # {id: [text, ...]}
    payload = score_reports(generated, references, n_boot=1000, seed=0)
    write_scores("scores/", payload)                 # scores.json (+ study_labels.csv)
    print(scores_table(payload))

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

from cxrfuse.generation.chexbert import CheXbertLabeler
from cxrfuse.generation.clinical import clinical_scores
from cxrfuse.generation.labeler import CHECKPOINT_HELP, CHEXPERT_LABELS, Labeler, RuleLabeler
from cxrfuse.generation.language import (
    LANGUAGE_KEYS,
    java_available,
    language_scores,
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
    subset: bool = False,
    meteor: bool = True,
) -> dict[str, Any]:
    """The scores.json payload for ``generated`` against ``references``.

    Both map study id -> text (a one-element list is accepted for generated reports, several
    references per study for the references). The id sets must match; ``subset=True`` scores
    the generated ids only and drops references without a generated report (their number is
    stored). ``n_boot`` resamples the clinical scores, ``n_boot_language`` the language metrics
    (corpus BLEU/CIDEr are recomputed per replicate, so fewer); both use ``seed``.

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
    language = language_scores(gen, refs, n_boot=n_boot_language, seed=seed, style=style, meteor=meteor)
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
    payload: dict[str, Any] = {key: language[key] for key in LANGUAGE_KEYS}
    payload.update(
        clinical=clinical,
        n_studies=len(ids),
        n_boot_language=n_boot_language,
        n_boot_clinical=n_boot,
        seed=seed,
        labeler=getattr(labeler, "name", type(labeler).__name__),
        normalisation=language["normalisation"],
        notes=language["notes"] + notes,
        study_labels={
            "labels": list(CHEXPERT_LABELS),
            "generated": dict(zip(ids, gen_labels.tolist())),
            "reference": dict(zip(ids, ref_labels.tolist())),
        },
    )
    return payload


__all__ = [
    "clinical_scores",
    "java_available",
    "language_scores",
    "make_labeler",
    "normalise_report",
    "score_reports",
]
