"""From manifest rows to model-ready report text.

Order of steps (it matters):

1. select the configured sections (:func:`~cxrfuse.text.sections.select_sections`);
2. strip de-identification tokens and tidy spacing (:func:`~cxrfuse.text.clean.clean_text`);
3. mask label mentions on the original wording, so the patterns see ``"The heart is
   enlarged"`` rather than ``"heart enlarged"``;
4. stop-word removal, then lower case; both leave the mask token untouched;
5. when stop words were removed, mask once more: removal can bring words together into a
   phrase the patterns know (``lungs which are clear`` -> ``lungs clear``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cxrfuse.data.manifest import Manifest
from cxrfuse.text.clean import clean_text
from cxrfuse.text.mask import mask_label_mentions
from cxrfuse.text.sections import TextConfig, select_sections
from cxrfuse.vocab import REPORT_SECTIONS


def prepare_text(row: Mapping[str, Any], config: TextConfig, labels: Sequence[str]) -> str:
    """Model-ready text of one study for a task with ``labels``."""
    text = select_sections(row, config.sections, headers=config.section_headers)
    text = clean_text(text, strip_deid=config.strip_deid, protect=(config.mask_token,))
    masking = config.mask_labels and bool(labels)
    if masking:
        text = mask_label_mentions(text, labels, token=config.mask_token)
    if config.lowercase or config.remove_stopwords:
        text = clean_text(
            text,
            strip_deid=False,
            lowercase=config.lowercase,
            remove_stopwords=config.remove_stopwords,
            protect=(config.mask_token,),
        )
    if masking and config.remove_stopwords:
        text = mask_label_mentions(text, labels, token=config.mask_token)
    return text


def prepare_texts(manifest: Manifest, config: TextConfig, task: str | None = None) -> pd.Series:
    """Prepared text of every study, indexed like ``manifest.df``.

    ``task`` is a task name, a label name or None (the whole vocabulary); its labels decide
    what is masked.
    """
    labels = manifest.task_labels(task)
    columns = [c for c in REPORT_SECTIONS if c in config.sections]
    rows = manifest.df[columns].to_dict("records")
    texts = [prepare_text(row, config, labels) for row in rows]
    return pd.Series(texts, index=manifest.df.index, name="text", dtype="object")
