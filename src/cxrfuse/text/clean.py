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

NEGATIONS: frozenset[str] = frozenset(
    {"no", "not", "without", "nor", "none", "never", "neither", "cannot", "nothing"}
)
"""Negation words kept by stop-word removal: they decide whether a finding is present."""

# scikit-learn's ENGLISH_STOP_WORDS (318 words), copied so that importing the text package does
# not import scikit-learn (0.6 s of CPU); tests/text/test_clean.py checks the copy is exact.
_SKLEARN_STOP_WORDS = """
a about above across after afterwards again against all almost alone along already also
although always am among amongst amoungst amount an and another any anyhow anyone anything
anyway anywhere are around as at back be became because become becomes becoming been before
beforehand behind being below beside besides between beyond bill both bottom but by call can
cannot cant co con could couldnt cry de describe detail do done down due during each eg
eight either eleven else elsewhere empty enough etc even ever every everyone everything
everywhere except few fifteen fifty fill find fire first five for former formerly forty
found four from front full further get give go had has hasnt have he hence her here
hereafter hereby herein hereupon hers herself him himself his how however hundred i ie if in
inc indeed interest into is it its itself keep last latter latterly least less ltd made many
may me meanwhile might mill mine more moreover most mostly move much must my myself name
namely neither never nevertheless next nine no nobody none noone nor not nothing now nowhere
of off often on once one only onto or other others otherwise our ours ourselves out over own
part per perhaps please put rather re same see seem seemed seeming seems serious several she
should show side since sincere six sixty so some somehow someone something sometime
sometimes somewhere still such system take ten than that the their them themselves then
thence there thereafter thereby therefore therein thereupon these they thick thin third this
those though three through throughout thru thus to together too top toward towards twelve
twenty two un under until up upon us very via was we well were what whatever when whence
whenever where whereafter whereas whereby wherein whereupon wherever whether which while
whither who whoever whole whom whose why will with within without would yet you your yours
yourself yourselves
"""

STOP_WORDS: frozenset[str] = frozenset(_SKLEARN_STOP_WORDS.split()) - NEGATIONS
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
