"""Report text for the text and fusion models: section choice, cleaning, label masking, audit.

Typical use::

    from cxrfuse.text import TextConfig, prepare_texts, audit_leakage

    config = TextConfig(sections=["findings", "impression"])
    texts = prepare_texts(manifest, config, task="multilabel")
    audit = audit_leakage(manifest, config, task="multilabel")
    print(audit.total_surviving)  # 0 when masking covers every label term
"""

from cxrfuse.text.audit import LeakageAudit, SurvivingTerms, audit_leakage
from cxrfuse.text.clean import (
    NEGATIONS,
    STOP_WORDS,
    clean_text,
    remove_stop_words,
    strip_deid_tokens,
)
from cxrfuse.text.mask import label_families, label_patterns, mask_label_mentions, probe_families
from cxrfuse.text.pipeline import prepare_text, prepare_texts
from cxrfuse.text.sections import TextConfig, select_sections
from cxrfuse.text.terms import (
    FAMILIES,
    LABEL_TERMS,
    NORMAL_PHRASES,
    PROBE_TERMS,
    WHOLE_STUDY_LABELS,
)

__all__ = [
    "FAMILIES",
    "LABEL_TERMS",
    "NEGATIONS",
    "NORMAL_PHRASES",
    "PROBE_TERMS",
    "STOP_WORDS",
    "WHOLE_STUDY_LABELS",
    "LeakageAudit",
    "SurvivingTerms",
    "TextConfig",
    "audit_leakage",
    "clean_text",
    "label_families",
    "label_patterns",
    "mask_label_mentions",
    "prepare_text",
    "prepare_texts",
    "probe_families",
    "remove_stop_words",
    "select_sections",
    "strip_deid_tokens",
]
