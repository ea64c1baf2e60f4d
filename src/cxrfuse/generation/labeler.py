"""CheXpert observation labels from report text: a rule-based labeler and CheXbert.

Both labelers return, for n reports, an (n, 14) float array over :data:`CHEXPERT_LABELS`
with CheXpert's values: 1 positive, 0 negative, -1 uncertain, NaN not mentioned.

:class:`RuleLabeler` works like the CheXpert labeler (mention extraction, then negation and
uncertainty, then aggregation) with regular expressions instead of a dependency parse:

1. the text is lower-cased, OpenI ``XXXX`` tokens are removed and it is cut into sentences;
2. mentions of each observation are found with the phrase tables of
   :mod:`cxrfuse.generation.rules` (built on :mod:`cxrfuse.text.terms`), after removing the
   observation's exclusions (``pericardial effusion`` is no pleural effusion); statements of
   the heart and mediastinum size give a value directly (``heart size is normal`` -> 0,
   ``the heart is mildly enlarged`` -> 1, ``stable cardiomediastinal silhouette`` -> -1, as
   CheXpert);
3. each mention is classified, in CheXpert's order: uncertainty that overrides negation
   (``cannot exclude``, ``no new``) -> -1; negation (the nearest cue before it in the same
   sentence, at most :data:`~cxrfuse.generation.rules.SCOPE_WORDS` words back and not past
   ``but``/``however``/``there is``, or a cue after it: ``is not seen``, ``has resolved``)
   -> 0; uncertainty (``possible``, ``may``, ``concerning for``, ``atelectasis or
   pneumonia``, hedged mentions such as ``vascular congestion``) -> -1; otherwise 1;
4. per report and observation the mentions are aggregated as CheXpert: any 1 gives 1, else
   any -1 gives -1, else 0; an asserted ``CHF``/``heart failure`` also makes Cardiomegaly -1;
5. No Finding is 1 when no observation other than Support Devices, and none of the other
   abnormal findings of :data:`~cxrfuse.generation.rules.OTHER_FINDINGS` (emphysema,
   granulomas, degenerative change, ...), is positive or uncertain; NaN otherwise (CheXpert
   never writes 0 for No Finding). An empty report therefore has No Finding 1.

``RuleLabeler().mentions(text)`` lists every mention with its value and the reason, for
checking a label by hand.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from typing import Protocol

import numpy as np

from cxrfuse.generation import rules
from cxrfuse.problems import CxrfuseError
from cxrfuse.text.clean import strip_deid_tokens
from cxrfuse.text.mask import compile_terms
from cxrfuse.vocab import CHEXBERT_ORDER, CHEXPERT_FIVE

CHEXPERT_LABELS = CHEXBERT_ORDER
"""The 14 CheXpert observations in the CheXpert/CheXbert order (the columns of every label
array here; :data:`cxrfuse.vocab.CHEXPERT_LABELS` holds the same names alphabetically)."""
CE_FIVE = CHEXPERT_FIVE
"""The five observations of the CheXpert competition, the second clinical-efficacy average."""

CHECKPOINT_HELP = (
    "get chexbert.pth from the CheXbert authors (https://github.com/stanfordmlgroup/CheXbert, "
    "'Checkpoint download' in its README) and bert-base-uncased's vocab.txt beside it; "
    "without them use the rule-based labeler (--labeler rules)"
)
"""Where the CheXbert checkpoint comes from (said in every error about it)."""

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
OTHER = "other finding"


class Labeler(Protocol):
    """What :func:`cxrfuse.generation.scoring.score_reports` needs from a labeler."""

    name: str

    def label(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Mention:
    """One labelled phrase of a report."""

    label: str
    text: str
    start: int
    end: int
    value: float
    reason: str


def _spell(pattern: str) -> str:
    """The spacing shorthand of :mod:`cxrfuse.text.terms` for one hand-written pattern."""
    return pattern.replace(" ?", r"[\s-]*").replace(" ", r"[\s-]+")


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w)(?:{_spell(pattern)})(?!\w)", re.IGNORECASE)


_SENTENCE_END = re.compile(r"(?<!\bvs)(?<!\be\.g)(?<!\bi\.e)\.(?!\d)|[;!?]|:(?=\s)")
_WORD = re.compile(r"[a-z0-9]+")
_RUN = re.compile(r"\S+")
OR_GAP_RUNS = 5
"""At most this many non-blank runs fit in :data:`rules.OR_GAP` (a comma, the conjunction,
three words), so ``alternative`` looks only at mentions that close."""
_NOT = re.compile(rules.LINK_NEGATION)
_HEDGE = re.compile(rules.LINK_HEDGE)
_HEART_WORD = re.compile(r"\b(?:heart|cardiac)\b")
_MEDIASTINUM_WORD = re.compile(r"mediastin|pericardial silhouette")


def prepare(text: str | None) -> str:
    """Lower case, OpenI ``XXXX`` tokens removed, line breaks read as sentence ends."""
    if not isinstance(text, str) or not text.strip():
        return ""
    return re.sub(r"\s*\n\s*", ". ", strip_deid_tokens(text)).lower()


class RuleLabeler:
    """Rule-based CheXpert labeler (see the module docstring for the rules)."""

    name = "rules"

    def __init__(self, labels: Sequence[str] = CHEXPERT_LABELS) -> None:
        unknown = [x for x in labels if x not in CHEXPERT_LABELS]
        if unknown:
            raise CxrfuseError(f"unknown CheXpert observation(s) {unknown}; choose from {list(CHEXPERT_LABELS)}")
        self.labels = tuple(labels)

    # ---------------------------------------------------------------- compiled tables
    @cached_property
    def _tables(self) -> list[tuple[str, dict[str, re.Pattern[str] | None]]]:
        def terms(items: Sequence[str]) -> re.Pattern[str] | None:
            return compile_terms(tuple(items)) if items else None

        tables = [
            (o.name, {"mention": terms(o.mention), "hedged": terms(o.hedged),
                      "negative": terms(o.negative), "exclude": terms(o.exclude)})
            for o in rules.OBSERVATIONS
        ]
        tables.append((OTHER, {"mention": terms(rules.OTHER_FINDINGS), "hedged": None,
                               "negative": None, "exclude": None}))
        return tables

    @cached_property
    def _cues(self) -> re.Pattern[str]:
        negation = "|".join(_spell(c) for c in sorted(rules.CUE_NEGATION, key=len, reverse=True))
        return re.compile(
            rf"(?<!\w)(?:(?P<override>{_spell(rules.CUE_OVERRIDE)})|(?P<neutral>{_spell(rules.CUE_NEUTRAL)})|"
            rf"(?P<adjective>{_spell(rules.CUE_ADJECTIVE)})|(?P<uncertain>{_spell(rules.CUE_UNCERTAIN)})|"
            rf"(?P<negation>{negation}))(?!\w)",
        )

    @cached_property
    def _post(self) -> list[tuple[str, re.Pattern[str]]]:
        return [
            ("override", re.compile(rf"(?:{_spell(rules.CUE_OVERRIDE)})(?!\w)")),
            ("negation", re.compile(rf"(?:{_spell(rules.POST_NEGATION)})(?!\w)")),
            ("uncertain", re.compile(rf"(?:{_spell(rules.POST_UNCERTAIN)})(?!\w)")),
        ]

    @cached_property
    def _patterns(self) -> dict[str, re.Pattern[str]]:
        return {
            "gap": re.compile(rules.POST_GAP),
            "or": re.compile(rules.OR_GAP),
            "terminator": _compile(rules.TERMINATORS),
            "statement": _compile(rules.STATEMENT),
            "pre_statement": _compile(rules.PRE_STATEMENT),
            "chf": _compile(rules.CHF),
        }

    # ---------------------------------------------------------------- public API
    def label(self, texts: Sequence[str]) -> np.ndarray:
        """(n, len(labels)) float array: 1, 0, -1 or NaN per report and observation."""
        out = np.full((len(texts), len(self.labels)), np.nan)
        column = {name: j for j, name in enumerate(self.labels)}
        for i, text in enumerate(texts):
            for name, value in self._aggregate(self.mentions(text)).items():
                if name in column:
                    out[i, column[name]] = value
        return out

    def mentions(self, text: str | None) -> list[Mention]:
        """Every mention and statement in ``text`` with its value and why."""
        t = prepare(text)
        if not t:
            return []
        ctx = _Context(t, self)
        found = self._statements(ctx)
        raw: list[tuple[str, int, int, bool]] = []
        for name, table in self._tables:
            blocked = _Spans([m.span() for key in ("exclude", "negative") if table[key]
                              for m in table[key].finditer(t)])  # fmt: skip
            if table["negative"]:
                found += [Mention(name, m.group(0), *m.span(), 0.0, "negative statement")
                          for m in table["negative"].finditer(t)]
            for key in ("mention", "hedged"):
                if table[key] is None:
                    continue
                for m in table[key].finditer(t):
                    if not blocked.overlaps(m.start(), m.end()):
                        raw.append((name, m.start(), m.end(), key == "hedged"))
        ctx.set_mentions([(s, e) for _, s, e, _ in raw])
        found += [self._classify(ctx, name, s, e, hedged) for name, s, e, hedged in raw]
        return sorted(found, key=lambda m: (m.start, m.label))

    # ---------------------------------------------------------------- internals
    def _statements(self, ctx: _Context) -> list[Mention]:
        out = []
        for key in ("statement", "pre_statement"):
            for m in self._patterns[key].finditer(ctx.text):
                groups = m.groupdict()
                link = groups.get("link") or ""
                if groups.get("normal"):
                    value, why = (1.0, "'not' + normal") if _NOT.search(link) else (0.0, "stated normal")
                elif groups.get("enlarged"):
                    value, why = (1.0, "stated enlarged")
                    if _NOT.search(link):
                        value, why = 0.0, "stated not enlarged"
                    elif _HEDGE.search(link):
                        value, why = -1.0, "enlargement hedged"
                elif groups.get("borderline"):
                    value, why = (0.0, "stated not prominent") if _NOT.search(link) else (-1.0, "borderline")
                else:
                    value, why = -1.0, "stated stable (CheXpert: uncertain)"
                subject = groups["subject"]
                if _MEDIASTINUM_WORD.search(subject):
                    out.append(Mention("Enlarged Cardiomediastinum", m.group(0), *m.span(), value, why))
                if _HEART_WORD.search(subject):
                    out.append(Mention("Cardiomegaly", m.group(0), *m.span(), value, why))
        return out

    def _classify(self, ctx: _Context, name: str, s: int, e: int, hedged: bool) -> Mention:
        text = ctx.text[s:e]
        if _NOT.search(text):
            return Mention(name, text, s, e, 0.0, "'not' inside the phrase")
        pre = ctx.cue_before(s)
        post = ctx.cue_after(e)
        for kind, value in (("override", -1.0), ("negation", 0.0), ("uncertain", -1.0)):
            if pre is not None and pre[0] == kind:
                return Mention(name, text, s, e, value, f"{kind} cue before: {pre[1]!r}")
            if post is not None and post[0] == kind:
                return Mention(name, text, s, e, value, f"{kind} cue after: {post[1]!r}")
        if _HEDGE.search(text):
            return Mention(name, text, s, e, -1.0, "hedge inside the phrase")
        if hedged:
            return Mention(name, text, s, e, -1.0, "hedged mention")
        if ctx.alternative(s, e):
            return Mention(name, text, s, e, -1.0, "one of alternatives ('or', 'versus')")
        return Mention(name, text, s, e, 1.0, "asserted")

    def _aggregate(self, mentions: list[Mention]) -> dict[str, float]:
        values: dict[str, set[float]] = {}
        for m in mentions:
            values.setdefault(m.label, set()).add(m.value)
            if m.label == "Edema" and m.value != 0 and self._patterns["chf"].fullmatch(m.text):
                values.setdefault("Cardiomegaly", set()).add(-1.0)
        out = {}
        for name, seen in values.items():
            out[name] = 1.0 if 1.0 in seen else -1.0 if -1.0 in seen else 0.0
        finding = any(v != 0 for k, v in out.items() if k != SUPPORT_DEVICES)
        out.pop(OTHER, None)
        if not finding:
            out[NO_FINDING] = 1.0
        return out


class _Spans:
    """Character spans, asked in O(log n) whether any overlaps ``[start, end)``."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self.starts = [a for a, _ in ordered]
        self.reach = list(accumulate((b for _, b in ordered), max))  # max end so far

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect_left(self.starts, end)  # spans that begin before ``end``
        return i > 0 and self.reach[i - 1] > start


class _Context:
    """One prepared report: sentence ends, cue positions, terminators, mention spans.

    Every question a mention asks is answered from sorted positions by bisection, so
    labelling a report is linear in its length (up to a log factor), also for a long one."""

    def __init__(self, text: str, labeler: RuleLabeler) -> None:
        self.text = text
        self.labeler = labeler
        self.ends = [m.start() for m in _SENTENCE_END.finditer(text)]
        cues = [(m.lastgroup or "", m.start(), m.end(), m.group(0))
                for m in labeler._cues.finditer(text)]  # fmt: skip
        self.cues = [c for c in cues if c[0] != "neutral"]  # neutral cues are never read
        self.cue_ends = [e for _, _, e, _ in self.cues]
        self.terminators = [m.start() for m in labeler._patterns["terminator"].finditer(text)]
        words = [m.span() for m in _WORD.finditer(text)]
        self.word_starts = [a for a, _ in words]
        self.word_ends = [b for _, b in words]
        runs = [m.span() for m in _RUN.finditer(text)]
        self.run_starts = [a for a, _ in runs]
        self.run_ends = [b for _, b in runs]
        self.masked = text
        self.spans: list[tuple[int, int]] = []
        self.by_start: list[tuple[int, int]] = []
        self.by_end: list[tuple[int, int]] = []
        self.span_ends: list[int] = []

    def set_mentions(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans
        self.by_start = sorted(spans)
        self.by_end = sorted(spans, key=lambda span: span[1])
        self.span_ends = [e for _, e in self.by_end]
        chars = list(self.text)
        for s, e in spans:
            chars[s:e] = " " * (e - s)
        self.masked = "".join(chars)

    def sentence(self, pos: int) -> int:
        return bisect_right(self.ends, pos)

    @staticmethod
    def _count(starts: list[int], ends: list[int], a: int, b: int) -> int:
        """How many of the sorted, disjoint runs meet ``text[a:b]`` (= the regex's matches
        in that slice: a run cut by the slice still gives one match)."""
        if a >= b:
            return 0
        return bisect_left(starts, b) - bisect_right(ends, a)

    def cue_before(self, start: int) -> tuple[str, str] | None:
        """The nearest non-neutral cue before ``start`` that reaches it; an uncertainty
        adjective (``suspicious opacity``) passes a negation before it through."""
        found = None
        reach = rules.SCOPE_WORDS
        for i in range(bisect_right(self.cue_ends, start) - 1, -1, -1):  # cues ending by start
            kind, s, e, words = self.cues[i]
            if not self._reaches(s, e, start, reach):
                break
            if kind != "adjective":
                return (kind, words) if found is None or kind == "negation" else found
            if found is None:
                found = ("uncertain", words)
                reach += rules.SCOPE_WORDS // 2
        return found

    def _reaches(self, s: int, e: int, start: int, words: int) -> bool:
        if self.sentence(s) != self.sentence(start):
            return False
        i = bisect_left(self.terminators, e)  # a terminator t with e <= t < start ends the scope
        if i < len(self.terminators) and self.terminators[i] < start:
            return False
        return self._count(self.word_starts, self.word_ends, e, start) <= words

    def cue_after(self, end: int) -> tuple[str, str] | None:
        """A cue right after ``end`` (only copulas, adverbs and other mentions between)."""
        gap = self.labeler._patterns["gap"].match(self.masked, end)
        pos = gap.end() if gap else end
        if self.sentence(pos) != self.sentence(end):
            return None
        for kind, pattern in self.labeler._post:
            m = pattern.match(self.masked, pos)
            if m:
                return kind, m.group(0)
        return None

    def alternative(self, start: int, end: int) -> bool:
        """Whether the mention is joined to another by ``or`` / ``versus`` (only mentions
        within :data:`OR_GAP_RUNS` non-blank runs can be, so only those are tried)."""
        between = self.labeler._patterns["or"]
        runs = self.run_starts, self.run_ends
        for i in range(bisect_left(self.by_start, (end, -1)), len(self.by_start)):
            s = self.by_start[i][0]
            if self._count(*runs, end, s) > OR_GAP_RUNS:
                break
            if between.fullmatch(self.text, end, s):
                return True
        for i in range(bisect_right(self.span_ends, start) - 1, -1, -1):
            e = self.by_end[i][1]
            if self._count(*runs, e, start) > OR_GAP_RUNS:
                break
            if between.fullmatch(self.text, e, start):
                return True
        return False


__all__ = [
    "CE_FIVE",
    "CHECKPOINT_HELP",
    "CHEXPERT_LABELS",
    "Labeler",
    "Mention",
    "RuleLabeler",
    "prepare",
]
