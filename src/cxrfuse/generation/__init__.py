"""Radiology report generation, and its scoring, kept apart (as scikit-learn keeps its
estimators apart from ``sklearn.metrics``): the scoring side imports no generator (no
transformers, peft or Lightning), so ``generate score`` starts fast; the producing side is
imported on first use.

**Producing reports** (transformers, peft, the tracker loggers; loaded lazily):

- :func:`generate_retrieval`, :func:`generate_with_vlm`, :func:`finetune_vlm`
  (:mod:`~cxrfuse.generation.pipeline`: a generator's reports for a split, scored beside the
  baselines into a generation directory); :class:`LoraSettings`;
- the generators themselves: :mod:`~cxrfuse.generation.retrieval`,
  :mod:`~cxrfuse.generation.vlm` (:func:`load_vlm`, :func:`generate_reports`),
  :mod:`~cxrfuse.generation.lora` (its files: :mod:`~cxrfuse.generation.lora_io`), with
  :mod:`~cxrfuse.generation.studies` and :mod:`~cxrfuse.generation.prompts`.

**Scoring them**:

- :func:`score_files` (:mod:`~cxrfuse.generation.external`): any systems' report files
  against references, paired, beside the baselines; :func:`score_reports`
  (:mod:`~cxrfuse.generation.scoring`: the scores.json payload of two ``{id: text}``
  mappings); :func:`language_scores`, :func:`normalise_report` (R2Gen),
  :func:`clinical_scores`, :func:`java_available`;
- CheXpert labels from text: :class:`RuleLabeler`, :class:`CheXbertLabeler`,
  :func:`make_labeler` (:mod:`~cxrfuse.generation.labeler`);
- the shortcut baselines (:mod:`~cxrfuse.generation.baselines`), report files in and out
  (:func:`read_reports`, :func:`write_scores`, :func:`export_rexrank`), tables and verdict
  sentences (:func:`scores_table`, :func:`comparison_table`, :func:`paired_table`,
  :func:`provenance_lines`, :func:`differing_findings`), RadEval's metrics
  (:func:`parse_metrics`, ``--metrics radeval:...``).
"""

from importlib import import_module

from cxrfuse.generation.clinical import clinical_scores
from cxrfuse.generation.external import score_files
from cxrfuse.generation.labeler import CE_FIVE, CHEXPERT_LABELS, RuleLabeler
from cxrfuse.generation.language import (
    java_available,
    language_scores,
    normalisation_style,
    normalise_report,
)
from cxrfuse.generation.outputs import comparison_table, differing_findings, export_rexrank
from cxrfuse.generation.radeval_metrics import parse_metrics
from cxrfuse.generation.reports_io import read_reports, write_scores
from cxrfuse.generation.scoring import make_labeler, score_reports
from cxrfuse.generation.table import paired_table, provenance_lines, scores_table

_LAZY = {
    "CheXbertLabeler": "cxrfuse.generation.chexbert",  # torch and transformers
    "LoraSettings": "cxrfuse.generation.lora",
    "finetune_vlm": "cxrfuse.generation.pipeline",
    "generate_reports": "cxrfuse.generation.vlm",
    "generate_retrieval": "cxrfuse.generation.pipeline",
    "generate_with_vlm": "cxrfuse.generation.pipeline",
    "load_vlm": "cxrfuse.generation.vlm",
}
"""The producing side's names, imported on first use."""


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CE_FIVE",
    "CHEXPERT_LABELS",
    "CheXbertLabeler",
    "LoraSettings",
    "RuleLabeler",
    "clinical_scores",
    "comparison_table",
    "differing_findings",
    "export_rexrank",
    "finetune_vlm",
    "generate_reports",
    "generate_retrieval",
    "generate_with_vlm",
    "java_available",
    "language_scores",
    "load_vlm",
    "make_labeler",
    "normalisation_style",
    "normalise_report",
    "paired_table",
    "parse_metrics",
    "provenance_lines",
    "read_reports",
    "score_files",
    "score_reports",
    "scores_table",
    "write_scores",
]
