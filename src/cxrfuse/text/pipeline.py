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
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from cxrfuse.data.manifest import Manifest
from cxrfuse.files import sha256_json
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

_CACHE_SIZE = 2
_cache: OrderedDict[str, list[str]] = OrderedDict()
"""The last two sets of prepared texts, by :func:`text_cache_key`."""
_base_cache: OrderedDict[str, list[str]] = OrderedDict()
"""The last two sets of sectioned, cleaned texts (every task of a manifest starts from them)."""


def text_cache_key(raw: Sequence[Sequence[Any]] | str, config: TextConfig, labels: Sequence[str]) -> str:
    """Digest of what prepared texts depend on: the section texts (or their
    :func:`sections_digest`), the configuration and the labels, like the store's
    :func:`~cxrfuse.store.keys.text_key` for embeddings."""
    sections = raw if isinstance(raw, str) else sections_digest(raw)
    return sha256_json([sections, config.model_dump(), list(labels)])


def sections_digest(raw: Sequence[Sequence[Any]]) -> str:
    """sha256 of section columns (a missing value differs from every string)."""
    digest = hashlib.sha256()
    for column in raw:
        for value in column:
            digest.update(value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b"\x01")
            digest.update(b"\x00")
        digest.update(b"\x02")
    return digest.hexdigest()


def _base_block(rows: list[dict[str, Any]], config: TextConfig) -> list[str]:
    """Steps 1-2 (sections, cleaning) of every row: they do not depend on the labels."""
    return [
        clean_text(select_sections(row, config.sections, headers=config.section_headers),
                   strip_deid=config.strip_deid, protect=(config.mask_token,))
        for row in rows
    ]


def _finish_block(texts: list[str], config: TextConfig, labels: Sequence[str]) -> list[str]:
    """Steps 3-5 (masking, stop words, lower case) of a block, each one pass over the block."""
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


def _remember(cache: OrderedDict[str, list[str]], key: str, texts: list[str]) -> list[str]:
    cache[key] = texts
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return texts


def prepare_texts(
    manifest: Manifest, config: TextConfig, task: str | None = None, *, progress: bool = False
) -> pd.Series:
    """Prepared text of every study, indexed like ``manifest.df``.

    ``task`` is a task name, a label name or None (the whole vocabulary); its labels decide
    what is masked. The same texts as :func:`prepare_text` row by row, computed a block at a
    time with one regex pass per step. Kept in a small in-process cache keyed by
    :func:`text_cache_key`: the sectioned, cleaned texts (shared by every task) and the
    prepared texts (a second audit, run or store key of the same texts is free).
    """
    labels = manifest.task_labels(task)
    columns = [c for c in REPORT_SECTIONS if c in config.sections]
    raw = [manifest.df[c].tolist() for c in columns]
    base_config = config.model_copy(update={"mask_labels": False, "lowercase": False,
                                            "remove_stopwords": False})
    sections = sections_digest(raw)
    base_key = text_cache_key(sections, base_config, [])
    key = text_cache_key(sections, config, labels) if config != base_config else base_key
    texts = _cache.get(key) if key != base_key else _base_cache.get(key)
    if texts is None:
        base = _base_cache.get(base_key)
        n = len(manifest.df)
        texts = []
        fresh_base: list[str] = []
        with tqdm(total=n, desc="prepare texts", unit="report", disable=not progress or n == 0,
                  leave=False, mininterval=2.0) as bar:
            for lo in range(0, n, BLOCK):
                size = min(BLOCK, n - lo)
                if base is None:
                    rows = ([dict(zip(columns, v)) for v in zip(*(c[lo:lo + size] for c in raw))]
                            if columns else [{} for _ in range(size)])
                    block = _base_block(rows, config)
                    fresh_base.extend(block)
                else:
                    block = base[lo:lo + size]
                texts.extend(_finish_block(block, config, labels) if key != base_key else block)
                bar.update(size)
        if base is None:
            _remember(_base_cache, base_key, fresh_base if key != base_key else texts)
        if key != base_key:
            _remember(_cache, key, texts)
    else:
        (_cache if key != base_key else _base_cache).move_to_end(key)
    return pd.Series(list(texts), index=manifest.df.index, name="text", dtype="object")
