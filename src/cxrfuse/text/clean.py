"""Report text cleaning: de-identification tokens, whitespace, punctuation, stop words.

The OpenI reports replace anything that looked like a name, date or number with ``XXXX``
(``"There are no XXXX of a pleural effusion"``, ``"XXXX-year-old"``, ``"chest x-XXXX"``). With
``strip_deid`` those tokens are removed, together with the hyphen or slash that glued them to
a word. The one exception is ``x-XXXX``: the de-identifier took the *ray* of ``x-ray`` for a
name, so ``x-XXXX`` is restored to ``x-ray`` rather than left as a stray ``x``.

Stop words are scikit-learn's ``ENGLISH_STOP_WORDS`` minus the negations in
:data:`NEGATIONS`. Radiology reports state most findings by negating them (``"no pleural
effusion"``, ``"without focal consolidation"``, ``"not enlarged"``); dropping the negation
would turn a normal sentence into the opposite finding, so these words are always kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

NEGATIONS: frozenset[str] = frozenset(
    {"no", "not", "without", "nor", "none", "never", "neither", "cannot", "nothing"}
)
"""Negation words kept by stop-word removal: they decide whether a finding is present."""

STOP_WORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS) - NEGATIONS
"""scikit-learn's English stop words minus :data:`NEGATIONS`."""

DEFAULT_PROTECT: tuple[str, ...] = ("[MASK]",)

_XRAY = re.compile(r"\b([xX])-XXXX\b")
_DEID = re.compile(r"[-/]?X{4,}(?:'s)?[-/]?")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)\]])")
_SPACE_AFTER_OPEN = re.compile(r"([(\[])\s+")
_EMPTY_PARENS = re.compile(r"\(\s*\)")
_REPEATED_SOFT = re.compile(r"([,;:])(?:\s*[,;:])+")
_SOFT_BEFORE_STOP = re.compile(r"[,;:]+(\s*\.)")
_REPEATED_STOP = re.compile(r"\.(?:\s*\.)+")
_MISSING_SPACE_SOFT = re.compile(r"([,;])([A-Za-z])")
_MISSING_SPACE_STOP = re.compile(r"(\.)([A-Z][a-z])")
_LEADING_PUNCT = re.compile(r"^[\s,;:.]+")
_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")


def strip_deid_tokens(text: str) -> str:
    """Remove ``XXXX`` de-identification tokens (``x-XXXX`` becomes ``x-ray``)."""
    if "XXXX" not in text:
        return text
    text = _XRAY.sub(r"\1-ray", text)
    return _DEID.sub(" ", text)


def normalise_spacing(text: str) -> str:
    """Collapse whitespace and tidy punctuation left behind by removed tokens."""
    text = _WHITESPACE.sub(" ", text)
    text = _EMPTY_PARENS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    text = _REPEATED_SOFT.sub(r"\1", text)
    text = _SOFT_BEFORE_STOP.sub(r"\1", text)
    text = _REPEATED_STOP.sub(".", text)
    text = _MISSING_SPACE_SOFT.sub(r"\1 \2", text)
    text = _MISSING_SPACE_STOP.sub(r"\1 \2", text)
    text = _LEADING_PUNCT.sub("", text)
    return _WHITESPACE.sub(" ", text).strip()


def _drop_stop_words(text: str, stop_words: frozenset[str] = STOP_WORDS) -> str:
    def keep(match: re.Match[str]) -> str:
        word = match.group(0).lower()
        return "" if word in stop_words and not word.endswith("n't") else match.group(0)

    return _WORD.sub(keep, text)


def remove_stop_words(text: str, stop_words: frozenset[str] = STOP_WORDS) -> str:
    """Drop stop words (whole words, hyphenated compounds kept whole); negations survive."""
    return normalise_spacing(_drop_stop_words(text, stop_words))


def _outside(text: str, protect: Sequence[str], fn: Callable[[str], str]) -> str:
    """Apply ``fn`` to the parts of ``text`` between protected tokens (e.g. ``[MASK]``)."""
    tokens = [t for t in protect if t]
    if not tokens:
        return fn(text)
    splitter = re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")")
    parts = splitter.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def clean_text(
    text: str | None,
    *,
    strip_deid: bool = True,
    lowercase: bool = False,
    remove_stopwords: bool = False,
    protect: Sequence[str] = DEFAULT_PROTECT,
) -> str:
    """Clean one report text; ``None`` gives ``""``.

    Tokens in ``protect`` (the mask token) keep their case and are never removed.
    """
    if not text:
        return ""
    if strip_deid:
        text = strip_deid_tokens(text)
    if remove_stopwords:
        text = _outside(text, protect, _drop_stop_words)
    if lowercase:
        text = _outside(text, protect, str.lower)
    return normalise_spacing(text)
