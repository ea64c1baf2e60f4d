"""Scoring of generated radiology reports: language metrics and clinical efficacy.

- :mod:`~cxrfuse.generation.labeler`: CheXpert labels from text (:class:`RuleLabeler`,
  :class:`~cxrfuse.generation.chexbert.CheXbertLabeler`, :func:`make_labeler`).
"""

from cxrfuse.generation.labeler import CE_FIVE, CHEXPERT_LABELS, RuleLabeler, make_labeler

__all__ = ["CE_FIVE", "CHEXPERT_LABELS", "RuleLabeler", "make_labeler"]
