"""Label-mention masking: replace every phrase that states a label with a mask token.

Which phrases are masked depends on the labels of the task:

- a finding label (``Cardiomegaly``, ``Pleural Effusion``, ...) masks its own terms from
  :data:`~cxrfuse.text.terms.LABEL_TERMS`, positive and negative statements alike;
- a whole-study label (``abnormal``, CheXpert ``No Finding``) masks every finding family of
  :data:`~cxrfuse.text.terms.FAMILIES` (any finding mention says "abnormal") plus the stock
  :data:`~cxrfuse.text.terms.NORMAL_PHRASES`;
- an unknown label is masked by its own name and simple plural forms, with a warning.

A negation cue right before a term (``no``, ``without``, ``no evidence of``, ``negative for``)
is masked with it: ``"no pleural effusion"`` and ``"small pleural effusion"`` become
``"[MASK]"`` and ``"small [MASK]"``, so the polarity of the statement does not survive next
to the token. Masks separated only by spaces, hyphens, commas, slashes, ``and`` / ``or``
collapse into one token.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from re import _compiler
from re._constants import (  # the regex parse tree: first characters, case checks
    ANY,
    ASSERT,
    ASSERT_NOT,
    AT,
    BRANCH,
    CATEGORY,
    GROUPREF,
    IN,
    LITERAL,
    MAX_REPEAT,
    MIN_REPEAT,
    NEGATE,
    NOT_LITERAL,
    POSSESSIVE_REPEAT,
    RANGE,
    SUBPATTERN,
)
from re._parser import SubPattern, parse

from cxrfuse.text.terms import (
    FAMILIES,
    LABEL_TERMS,
    MODIFIERS,
    NEGATION_CUES,
    NEGATION_FILLERS,
    NORMAL_PHRASES,
    PROBE_TERMS,
    WHOLE_STUDY_LABELS,
)

__all__ = [
    "FAMILIES",
    "LABEL_TERMS",
    "NORMAL_PHRASES",
    "PROBE_TERMS",
    "compile_terms",
    "label_families",
    "label_patterns",
    "mask_label_mentions",
    "mask_many",
    "normalise_label",
    "probe_families",
]

NORMAL_FAMILY = "normal phrases"
_warned: set[str] = set()


def normalise_label(name: str) -> str:
    """Table key of a label name: lower case, ``_`` and runs of spaces read as one space."""
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _spell(term: str) -> str:
    """Expand the table's spacing shorthand (see :mod:`cxrfuse.text.terms`)."""
    return term.replace(" ?", r"[\s-]*").replace(" ", r"[\s-]+")


def _trie(words: Sequence[str]) -> str:
    """A regex matching any of ``words`` that fails after one character on most text."""
    tree: dict = {}
    for word in words:
        node = tree
        for char in word.lower():
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        ends = "" in node
        branches = [
            ("[\\s-]+" if c == " " else re.escape(c)) + build(child)
            for c, child in sorted(node.items())
            if c
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return build(tree)


_PREFIX = (
    rf"(?:(?:{_trie(NEGATION_CUES)})[\s-]+(?:(?:{_trie(NEGATION_FILLERS)})[\s-]+){{0,6}})?"
    rf"(?:(?:{_trie(MODIFIERS)})[\s-]+)*"
)
"""Negation cue and modifiers masked together with the term that follows them."""


def _first_chars(items: Iterable) -> tuple[set[str] | None, bool]:
    """Characters a parsed regex can start with (None: any) and whether it can match empty."""
    chars: set[str] = set()
    for op, av in items:
        if op in (AT, ASSERT, ASSERT_NOT):
            continue
        if op is LITERAL:
            return chars | {chr(av).lower()}, False
        if op is IN and all(o in (LITERAL, RANGE) for o, _ in av):
            for o, a in av:
                span = range(a[0], a[1] + 1) if o is RANGE else [a]
                chars |= {chr(c).lower() for c in span}
            return chars, False
        if op is SUBPATTERN or op in (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT):
            inner, nullable = _first_chars(av[-1])
            nullable = nullable or (op is not SUBPATTERN and av[0] == 0)
        elif op is BRANCH:
            parts = [_first_chars(b) for b in av[1]]
            if any(f is None for f, _ in parts):
                return None, False
            inner = set().union(*(f for f, _ in parts))
            nullable = any(n for _, n in parts)
        else:
            return None, False
        if inner is None:
            return None, False
        chars |= inner
        if not nullable:
            return chars, False
    return chars, True


@lru_cache(maxsize=4096)
def _term_first_chars(spelled: str) -> tuple[frozenset[str] | None, bool]:
    """:func:`_first_chars` of one spelled term, parsed once per process (terms recur in
    many families and unions)."""
    first, nullable = _first_chars(parse(spelled, re.IGNORECASE))
    return (None if first is None else frozenset(first)), nullable


@lru_cache(maxsize=4096)
def _specificity(term: str) -> tuple[int, int, str]:
    """Sort key: alternatives with more required text are tried first (regex alternation
    takes the first that matches, not the longest)."""
    low, high = parse(_spell(term), re.IGNORECASE).getwidth()
    return low, min(high, 10_000), term


@lru_cache(maxsize=4096)
def _literal_start(spelled: str) -> str | None:
    """The character a spelled term starts with when its first element is that one literal
    (then a group of such terms needs no look-ahead on it, and the regex engine skips the
    group after one comparison wherever the text has another character)."""
    items = parse(spelled)
    if not len(items) or items[0][0] is not LITERAL:
        return None
    return chr(items[0][1])


def _dispatch(terms: Sequence[str]) -> str:
    """Alternation of ``terms`` grouped by first character, most specific first in a group."""
    buckets: dict[str, list[str]] = {}
    anywhere: list[str] = []
    for term in sorted(set(terms), key=_specificity, reverse=True):
        spelled = _spell(term)
        first, nullable = _term_first_chars(spelled)
        if first is None or nullable:
            anywhere.append(spelled)
            continue
        for char in first:
            buckets.setdefault(char, []).append(spelled)
    keyed = [(c, f"(?:{'|'.join(ts)})" if all(_literal_start(t) == c for t in ts)
              else f"(?={re.escape(c)})(?:{'|'.join(ts)})") for c, ts in sorted(buckets.items())]
    plain = [(c, part) for c, part in keyed if c in _GROUPABLE]
    parts = [part for c, part in keyed if c not in _GROUPABLE]
    size = max(4, math.isqrt(len(plain)))
    if len(plain) > size:  # a failing position tries ~2 sqrt(n) look-aheads instead of n
        chunks = [plain[i:i + size] for i in range(0, len(plain), size)]
        parts = [f"(?=[{''.join(c for c, _ in chunk)}])(?:{'|'.join(p for _, p in chunk)})"
                 for chunk in chunks] + parts
    else:
        parts = [part for _, part in plain] + parts
    parts += anywhere
    return "|".join(parts) or r"(?!x)x"


_GROUPABLE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
"""First characters whose buckets :func:`_dispatch` groups under one look-ahead class."""


@lru_cache(maxsize=256)
def terms_source(terms: tuple[str, ...], prefix: bool = False) -> str:
    """Source of :func:`compile_terms` (to be compiled with ``re.IGNORECASE``)."""
    lead = _PREFIX if prefix else ""
    return rf"(?<!\w){lead}(?:{_dispatch(terms)})(?!\w)"


@lru_cache(maxsize=256)
def compile_terms(terms: tuple[str, ...], prefix: bool = False) -> re.Pattern[str]:
    """One case-insensitive whole-word pattern for ``terms``.

    With ``prefix`` the match also takes a preceding negation cue and modifiers
    (``no definite``, ``small right``). Alternatives are dispatched on their first character,
    which makes one pattern of several hundred terms fast enough for large corpora.
    """
    return re.compile(terms_source(terms, prefix), re.IGNORECASE)


def _plain(code: int) -> bool:
    """An ASCII character that is not an upper-case letter."""
    return code < 128 and not 65 <= code <= 90


def _caseless(items: Iterable) -> bool:
    """Whether a parsed pattern, compiled without ``re.IGNORECASE``, matches lower-cased ASCII
    text exactly where the ``re.IGNORECASE`` pattern matches the original: every literal and
    class member is ASCII and not upper case (False for anything else, to be safe)."""
    for op, av in items:
        if op in (LITERAL, NOT_LITERAL):
            if not _plain(av):
                return False
        elif op is RANGE:
            if av[1] >= 128 or not (av[1] < 65 or av[0] > 90):
                return False
        elif op is IN:
            if not _caseless(av):
                return False
        elif op is BRANCH:
            if not all(_caseless(b) for b in av[1]):
                return False
        elif op in (SUBPATTERN, MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT, ASSERT, ASSERT_NOT):
            if op is SUBPATTERN and (av[1] or av[2]):  # inline flags such as (?-i:...)
                return False
            if not isinstance(av[-1], SubPattern) or not _caseless(av[-1]):
                return False
        elif op not in (AT, ANY, CATEGORY, NEGATE, GROUPREF):
            return False
    return True


@lru_cache(maxsize=512)
def lower_twin(source: str) -> re.Pattern[str] | None:
    """``source`` compiled case-sensitively for lower-cased ASCII text, or None where that
    could differ from ``re.compile(source, re.IGNORECASE)`` on the original text.

    On ASCII text ``str.lower`` keeps every offset and is exactly what ``re.IGNORECASE``
    folds, and the regex engine skips failing alternatives much faster on case-sensitive
    literals: about twice the speed on the whole-study pattern.
    """
    tree = parse(source)
    return _compiler.compile(tree) if _caseless(tree) else None  # parsed once: the same code


def sub_lowered(twin: re.Pattern[str], text: str, token: str) -> str:
    """``re.compile(twin.pattern, re.IGNORECASE).sub(token, text)`` for an ASCII ``text`` and a
    ``token`` without backslashes: the matches of ``twin`` in ``text.lower()`` replaced in
    ``text`` (same offsets)."""
    pieces: list[str] = []
    last = 0
    for match in twin.finditer(text.lower()):
        start, end = match.span()
        pieces.append(text[last:start])
        pieces.append(token)
        last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _own_name_terms(key: str) -> list[str]:
    """The label's own name with simple word forms (``lung lesion`` -> ``lung lesions?``)."""
    words = [re.escape(w) for w in re.split(r"[\s-]+", key) if w]
    return [" ".join(words) + r"(?:s|es)?"] if words else []


def label_families(label: str) -> dict[str, list[str]]:
    """Term families a label masks: ``{family name: terms}``.

    A finding label gives one family named after itself; a whole-study label gives every
    family plus ``"normal phrases"``; an unknown label its own name (and warns once).
    """
    key = normalise_label(label)
    if key in WHOLE_STUDY_LABELS:
        families = {name: list(terms) for name, terms in FAMILIES.items()}
        families[NORMAL_FAMILY] = list(NORMAL_PHRASES) + _own_name_terms(key)
        return families
    if key not in LABEL_TERMS and key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"label {label!r} has no entry in cxrfuse.text.LABEL_TERMS; masking only its own "
            "name and plural, so synonyms will leak",
            stacklevel=3,
        )
    return {key: list(LABEL_TERMS.get(key, [])) + _own_name_terms(key)}


def probe_families(label: str) -> dict[str, list[str]]:
    """Probe (context) words to audit for a label: ``{family name: probe terms}``."""
    key = normalise_label(label)
    if key in WHOLE_STUDY_LABELS:
        return {f: PROBE_TERMS[f] for f in FAMILIES if f in PROBE_TERMS}
    return {key: PROBE_TERMS[key]} if key in PROBE_TERMS else {}


@lru_cache(maxsize=256)
def _all_terms(labels: tuple[str, ...]) -> tuple[str, ...]:
    terms: list[str] = []
    for label in labels:
        for family in label_families(label).values():
            terms.extend(family)
    return tuple(terms)


def label_patterns(labels: Sequence[str]) -> dict[str, re.Pattern[str]]:
    """Per label, the compiled pattern of every term it masks (compiled once, cached)."""
    return {label: compile_terms(_all_terms((label,))) for label in labels}


def _token_sources(token: str) -> tuple[str, str]:
    """Sources of (prefix absorber, collapser) for one mask token."""
    tok = re.escape(token)
    sep = r"(?:[\s,/-]|\b(?:and|or)\b)*"
    return rf"(?<!\w){_PREFIX}{tok}", rf"{tok}(?:{sep}{tok})+"


@lru_cache(maxsize=64)
def _token_patterns(token: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(prefix absorber, collapser) for one mask token."""
    absorb, collapse = _token_sources(token)
    return re.compile(absorb, re.IGNORECASE), re.compile(collapse, re.IGNORECASE)


@lru_cache(maxsize=64)
def _token_twins(token: str) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    """:func:`lower_twin` of both :func:`_token_patterns` (None when either has none)."""
    if "\\" in token or not token.isascii():
        return None
    absorb, collapse = (lower_twin(s) for s in _token_sources(token.lower()))
    return None if absorb is None or collapse is None else (absorb, collapse)


def mask_label_mentions(text: str, labels: Sequence[str], *, token: str = "[MASK]") -> str:
    """Replace every mention of ``labels`` in ``text`` with ``token``.

    Three regex passes: the terms; the negation cue and modifiers right before a token
    (``no definite [MASK]`` -> ``[MASK]``); runs of tokens (``[MASK], [MASK] or [MASK]`` ->
    ``[MASK]``). One pass over the terms is enough: no term contains a wildcard, so none can
    match across or inside a token, and a match can only start where the original scan
    already looked. Searching the result with :func:`label_patterns` therefore finds nothing.
    """
    if not text or not labels:
        return text
    pattern = compile_terms(_all_terms(tuple(labels)))
    if pattern.search(token):
        raise ValueError(f"mask token {token!r} is itself a term of {list(labels)}; choose another")
    absorb, collapse = _token_patterns(token)
    masked = pattern.sub(token, text)
    if masked == text:
        return text
    return collapse.sub(token, absorb.sub(token, masked))


SEPARATOR = "\x00"
"""Joins texts into one corpus for a single regex pass. No term, prefix or separator pattern
can match it (the tables use no wildcard or negated class) and it is not a word character, so
a match never crosses it and whole-word checks at it behave as at the ends of a text."""


def joinable(texts: Sequence[str]) -> bool:
    """Whether ``texts`` can be searched as one corpus (none holds :data:`SEPARATOR`)."""
    return not any(SEPARATOR in t for t in texts)


def mask_many(texts: Sequence[str], labels: Sequence[str], *, token: str = "[MASK]") -> list[str]:
    """:func:`mask_label_mentions` of every text, in one compiled pass over the joined texts.

    Gives exactly the per-text result: matches cannot cross :data:`SEPARATOR`, and the
    absorb / collapse passes run only on the texts the term pass changed, as per text.
    """
    texts = list(texts)
    if not labels or not texts:
        return texts
    if not joinable(texts):
        return [mask_label_mentions(t, labels, token=token) for t in texts]
    twin = lower_twin(terms_source(_all_terms(tuple(labels))))
    twins = _token_twins(token)
    if twin is not None and twins is not None:
        if twin.search(token.lower()):
            raise ValueError(f"mask token {token!r} is itself a term of {list(labels)}; choose another")
        fast = [i for i, t in enumerate(texts) if t.isascii()]
        slow = [i for i, t in enumerate(texts) if not t.isascii()]
        masked = list(texts)
        if fast:
            for i, text in zip(fast, _mask_lowered([texts[i] for i in fast], twin, twins, token)):
                masked[i] = text
        if slow:
            for i, text in zip(slow, _mask_joined([texts[i] for i in slow], labels, token)):
                masked[i] = text
        return masked
    return _mask_joined(texts, labels, token)


def _mask_lowered(texts: list[str], twin: re.Pattern[str],
                  twins: tuple[re.Pattern[str], re.Pattern[str]], token: str) -> list[str]:
    """:func:`_mask_joined` of ASCII texts with the case-sensitive twins on lower-cased text."""
    masked = sub_lowered(twin, SEPARATOR.join(texts), token).split(SEPARATOR)
    changed = [i for i, (a, b) in enumerate(zip(texts, masked)) if a != b]
    if changed:
        absorb, collapse = twins
        joined = sub_lowered(absorb, SEPARATOR.join(masked[i] for i in changed), token)
        for i, text in zip(changed, sub_lowered(collapse, joined, token).split(SEPARATOR)):
            masked[i] = text
    return masked


def _mask_joined(texts: list[str], labels: Sequence[str], token: str) -> list[str]:
    """:func:`mask_many` with the case-insensitive patterns on the original texts."""
    pattern = compile_terms(_all_terms(tuple(labels)))
    if pattern.search(token):
        raise ValueError(f"mask token {token!r} is itself a term of {list(labels)}; choose another")
    absorb, collapse = _token_patterns(token)
    masked = pattern.sub(token, SEPARATOR.join(texts)).split(SEPARATOR)
    changed = [i for i, (a, b) in enumerate(zip(texts, masked)) if a != b]
    if changed:
        joined = SEPARATOR.join(masked[i] for i in changed)
        for i, text in zip(changed, collapse.sub(token, absorb.sub(token, joined)).split(SEPARATOR)):
            masked[i] = text
    return masked
