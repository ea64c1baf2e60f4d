"""Scoring of generated radiology reports: language metrics and clinical efficacy.

- :mod:`~cxrfuse.generation.labeler`: CheXpert labels from text (:class:`RuleLabeler`,
  :class:`~cxrfuse.generation.chexbert.CheXbertLabeler`, :func:`make_labeler`);
- :mod:`~cxrfuse.generation.scoring`: :func:`normalise_report` (R2Gen), :func:`language_scores`
  (pycocoevalcap BLEU/METEOR/ROUGE-L/CIDEr), :func:`clinical_scores` (CE F1),
  :func:`score_reports` (the scores.json payload), :func:`java_available`;
- :mod:`~cxrfuse.generation.reports_io`: :func:`read_reports`, :func:`write_scores`;
- :mod:`~cxrfuse.generation.table`: :func:`scores_table`, verdict sentences, provenance lines;
- :func:`~cxrfuse.generation.scoring.paired_comparison`: paired bootstrap differences of two
  systems scored on the same studies; :mod:`~cxrfuse.generation.radeval_metrics`: RadEval's
  metrics (``--metrics radeval:...``) when the package and its weights are at hand.
"""

from cxrfuse.generation.clinical import clinical_scores
from cxrfuse.generation.labeler import CE_FIVE, CHEXPERT_LABELS, RuleLabeler
from cxrfuse.generation.language import java_available, language_scores, normalise_report
from cxrfuse.generation.reports_io import read_reports, write_scores
from cxrfuse.generation.scoring import make_labeler, score_reports
from cxrfuse.generation.table import scores_table


def __getattr__(name: str) -> object:
    if name == "CheXbertLabeler":  # imported on first use: it pulls in torch and transformers
        from cxrfuse.generation.chexbert import CheXbertLabeler

        return CheXbertLabeler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CE_FIVE",
    "CHEXPERT_LABELS",
    "CheXbertLabeler",
    "RuleLabeler",
    "clinical_scores",
    "java_available",
    "language_scores",
    "make_labeler",
    "normalise_report",
    "read_reports",
    "score_reports",
    "scores_table",
    "write_scores",
]
