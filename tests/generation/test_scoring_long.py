"""The labeler answers each mention's questions by bisection (issue 23: `generate score` was
quadratic in report length). Its mentions must equal those of the straightforward scans it
replaced, here kept as the oracle, on every bundled IU report and on long and hostile texts."""

from __future__ import annotations

import random

import pytest

from cxrfuse.data import Manifest
from cxrfuse.generation import labeler, rules


class NaiveSpans:
    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans

    def overlaps(self, start: int, end: int) -> bool:
        return any(a < end and start < b for a, b in self.spans)


class NaiveContext(labeler._Context):
    """The quadratic scans of the labeler before issue 23, verbatim."""

    def cue_before(self, start: int) -> tuple[str, str] | None:
        found = None
        reach = rules.SCOPE_WORDS
        for kind, s, e, words in reversed(self.cues):
            if e > start or kind == "neutral":
                continue
            if not self._reaches(s, e, start, reach):
                break
            if kind != "adjective":
                return (kind, words) if found is None or kind == "negation" else found
            if found is None:
                found = ("uncertain", words)
                reach += rules.SCOPE_WORDS // 2
        return found

    def _reaches(self, s: int, e: int, start: int, words: int) -> bool:
        return (self.sentence(s) == self.sentence(start)
                and not any(e <= t < start for t in self.terminators)
                and len(labeler._WORD.findall(self.text[e:start])) <= words)  # fmt: skip

    def alternative(self, start: int, end: int) -> bool:
        between = self.labeler._patterns["or"]
        for s, e in self.spans:
            if s >= end and between.fullmatch(self.text, end, s):
                return True
            if e <= start and between.fullmatch(self.text, e, start):
                return True
        return False


def _texts(manifest: Manifest) -> list[str]:
    df = manifest.df
    texts = [f"{a or ''}\n{b or ''}" for a, b in zip(df["findings"], df["impression"], strict=True)]
    rng = random.Random(0)
    joined = [" ".join(rng.sample(texts, 60)) for _ in range(10)]  # long reports, one line
    hostile = [
        "effusion or atelectasis or pneumonia " * 200,
        "no " * 2000 + "effusion",
        "pneumonia ,or  edema; effusion   versus\tconsolidation vs. atelectasis and/or edema",
        "there is no pneumothorax, effusion, or consolidation versus atelectasis or edema " * 50,
        "the heart is not enlarged but there is effusion, which is small or edema " * 50,
        "x" * 20000 + " effusion vs. edema",
        "possible " + "left lower lobe " * 300 + "opacity",
    ]
    return texts + joined + hostile


def test_mentions_equal_the_straightforward_scans(iu_manifest: Manifest,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    texts = _texts(iu_manifest)
    fast = [labeler.RuleLabeler().mentions(t) for t in texts]
    monkeypatch.setattr(labeler, "_Context", NaiveContext)
    monkeypatch.setattr(labeler, "_Spans", NaiveSpans)
    slow = [labeler.RuleLabeler().mentions(t) for t in texts]
    assert sum(len(m) for m in slow) > 30_000  # the texts exercise the rules
    assert sum(m.reason.startswith("one of alternatives") for ms in slow for m in ms) > 100
    assert sum(m.reason.startswith("negation cue before") for ms in slow for m in ms) > 1000
    differing = [i for i, (a, b) in enumerate(zip(fast, slow, strict=True)) if a != b]
    assert differing == []
