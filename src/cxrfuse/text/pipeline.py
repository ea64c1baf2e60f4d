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

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from cxrfuse.data.manifest import Manifest
from cxrfuse.text.clean import clean_text
from cxrfuse.text.mask import mask_label_mentions, mask_many
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


BLOCK = 8192
"""Texts prepared per block: one regex pass per block, and the progress bar's step."""

_CACHE_SIZE = 3
_cache: OrderedDict[str, list[str]] = OrderedDict()


def text_cache_key(raw: Sequence[Sequence[Any]], config: TextConfig, labels: Sequence[str]) -> str:
    """Digest of what prepared texts depend on: the section texts, the configuration, the labels
    (like the store's :func:`~cxrfuse.store.keys.text_key` for embeddings)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([config.model_dump(), list(labels)], sort_keys=True).encode())
    for column in raw:
        for value in column:
            digest.update(value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b"\x01")
            digest.update(b"\x00")
    return digest.hexdigest()


def _prepare_block(rows: list[dict[str, Any]], config: TextConfig, labels: Sequence[str]) -> list[str]:
    """:func:`prepare_text` of every row, each step one pass over the block."""
    texts = [
        clean_text(select_sections(row, config.sections, headers=config.section_headers),
                   strip_deid=config.strip_deid, protect=(config.mask_token,))
        for row in rows
    ]
    masking = config.mask_labels and bool(labels)
    if masking:
        texts = mask_many(texts, labels, token=config.mask_token)
    if config.lowercase or config.remove_stopwords:
        texts = [
            clean_text(t, strip_deid=False, lowercase=config.lowercase,
                       remove_stopwords=config.remove_stopwords, protect=(config.mask_token,))
            for t in texts
        ]
    if masking and config.remove_stopwords:
        texts = mask_many(texts, labels, token=config.mask_token)
    return texts


def prepare_texts(
    manifest: Manifest, config: TextConfig, task: str | None = None, *, progress: bool = False
) -> pd.Series:
    """Prepared text of every study, indexed like ``manifest.df``.

    ``task`` is a task name, a label name or None (the whole vocabulary); its labels decide
    what is masked. The same texts as :func:`prepare_text` row by row, computed a block at a
    time with one regex pass per step, and kept in a small in-process cache keyed by
    :func:`text_cache_key` (a second audit, task or store key of the same texts is free).
    """
    labels = manifest.task_labels(task)
    columns = [c for c in REPORT_SECTIONS if c in config.sections]
    raw = [manifest.df[c].tolist() for c in columns]
    key = text_cache_key(raw, config, labels)
    texts = _cache.get(key)
    if texts is None:
        texts = []
        n = len(manifest.df)
        with tqdm(total=n, desc="prepare texts", unit="report", disable=not progress or n == 0,
                  leave=False, mininterval=2.0) as bar:
            for lo in range(0, n, BLOCK):
                size = min(BLOCK, n - lo)
                rows = ([dict(zip(columns, values)) for values in zip(*(c[lo:lo + size] for c in raw))]
                        if columns else [{} for _ in range(size)])
                texts.extend(_prepare_block(rows, config, labels))
                bar.update(len(rows))
        _cache[key] = texts
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return pd.Series(list(texts), index=manifest.df.index, name="text", dtype="object")
