"""Leakage audit: what label information is still in the text a model will read.

:func:`audit_leakage` prepares the text exactly as training would (:func:`prepare_texts`) and
searches it with the *unmasked* patterns:

- ``label`` rows: each label's terms (for a whole-study label such as ``abnormal``: every
  finding family); with masking on these should all be zero;
- ``normal`` rows: the stock normal phrases (whole-study labels only);
- ``probe`` rows: context words (:data:`~cxrfuse.text.terms.PROBE_TERMS`) that are never
  masked but may still carry the label (``blunting``, ``silhouette``, ``streaky``).

Each row counts the studies whose prepared text still matches, split by the label's value
(positive / negative / unknown), with the most frequent surviving terms. The audit also
counts mask tokens per study, overall and by label value: a mask count that differs a lot
between positive and negative studies is itself a signal.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from cxrfuse.data.manifest import Manifest, label_column
from cxrfuse.text.mask import (
    NORMAL_FAMILY,
    SEPARATOR,
    compile_terms,
    joinable,
    label_families,
    lower_twin,
    probe_families,
    terms_source,
)
from cxrfuse.text.pipeline import prepare_texts
from cxrfuse.text.sections import TextConfig

KINDS = ("label", "normal", "probe")


@dataclass(frozen=True)
class SurvivingTerms:
    """One audit row: the studies whose prepared text still matches one term family."""

    kind: str  # "label", "normal" or "probe"
    label: str  # the manifest label that splits positive / negative
    family: str  # the term family searched
    studies: int
    positive: int
    negative: int
    unknown: int
    top_terms: tuple[tuple[str, int], ...] = ()

    def top_text(self) -> str:
        return ", ".join(f"{term} ({n})" for term, n in self.top_terms)


@dataclass
class LeakageAudit:
    """Result of :func:`audit_leakage`."""

    task: str | None
    labels: list[str]
    config: dict[str, Any]
    n_studies: int
    n_with_text: int
    rows: list[SurvivingTerms]
    masks_by_label: dict[str, dict[str, float]] = field(default_factory=dict)
    masks_per_study: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"), repr=False)

    @property
    def total_surviving(self) -> int:
        """Study x family hits of label terms and normal phrases (probes not counted)."""
        return sum(r.studies for r in self.rows if r.kind != "probe")

    @property
    def total_probe(self) -> int:
        """Study x family hits of probe (context) words."""
        return sum(r.studies for r in self.rows if r.kind == "probe")

    def mask_summary(self) -> dict[str, float]:
        counts = self.masks_per_study.to_numpy()
        if counts.size == 0:
            return {"mean": 0.0, "median": 0.0, "max": 0.0, "share_with_mask": 0.0}
        return {
            "mean": round(float(counts.mean()), 3),
            "median": float(np.median(counts)),
            "max": float(counts.max()),
            "share_with_mask": round(float((counts > 0).mean()), 4),
        }

    def to_frame(self) -> pd.DataFrame:
        """One row per (kind, label, family), top terms as ``"term (n), ..."``."""
        records = [{**asdict(r), "top_terms": r.top_text()} for r in self.rows]
        columns = ["kind", "label", "family", "studies", "positive", "negative", "unknown", "top_terms"]
        return pd.DataFrame(records, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-study data)."""
        return {
            "task": self.task,
            "labels": list(self.labels),
            "config": dict(self.config),
            "n_studies": self.n_studies,
            "n_with_text": self.n_with_text,
            "total_surviving": self.total_surviving,
            "total_probe": self.total_probe,
            "masks_per_study": {**self.mask_summary(), "by_label": self.masks_by_label},
            "rows": [{**asdict(r), "top_terms": [list(t) for t in r.top_terms]} for r in self.rows],
        }

    def render(self, *, show_zero: bool = True) -> Table:
        """A rich table for ``cxrfuse stats``."""
        summary = self.mask_summary()
        table = Table(
            title=f"Leakage audit: task {self.task or 'all labels'}, sections "
            f"{'+'.join(self.config.get('sections', []))}, masking "
            f"{'on' if self.config.get('mask_labels') else 'off'}",
            caption=f"{self.total_surviving} surviving label/normal-phrase hits, "
            f"{self.total_probe} probe-word hits; {self.n_with_text}/{self.n_studies} studies "
            f"with text; masks per study: mean {summary['mean']}, max {summary['max']:.0f}",
        )
        for name, justify in [("kind", "left"), ("label", "left"), ("terms", "left"),
                              ("studies", "right"), ("pos", "right"), ("neg", "right"),
                              ("top surviving terms", "left")]:
            table.add_column(name, justify=justify)
        for r in self.rows:
            if not show_zero and r.studies == 0:
                continue
            style = "red" if r.kind != "probe" and r.studies else None
            table.add_row(r.kind, r.label, r.family, str(r.studies), str(r.positive),
                          str(r.negative), r.top_text(), style=style)
        return table


def _families(labels: list[str]) -> list[tuple[str, str, str, list[str]]]:
    """(kind, label, family, terms) for every family the audit searches, grouped by kind."""
    out = []
    for label in labels:
        for family, terms in label_families(label).items():
            out.append(("normal" if family == NORMAL_FAMILY else "label", label, family, terms))
    for label in labels:
        for family, terms in probe_families(label).items():
            out.append(("probe", label, family, terms))
    return out


class _Corpus:
    """Texts joined by :data:`~cxrfuse.text.mask.SEPARATOR`: one regex pass searches them all,
    and each match is traced back to its text by its offset.

    ASCII texts are searched lower-cased with the case-sensitive twin of a pattern
    (:func:`~cxrfuse.text.mask.lower_twin`, the same matches, faster); the others, if any, with
    the pattern itself."""

    def __init__(self, texts: list[str], subset: list[int] | None = None) -> None:
        self.ids = np.arange(len(texts)) if subset is None else np.asarray(subset, dtype=np.int64)
        ascii_ = np.fromiter((texts[i].isascii() for i in self.ids), dtype=bool, count=len(self.ids))
        self.parts = [_Joined(texts, self.ids[ascii_], lower=True),
                      _Joined(texts, self.ids[~ascii_], lower=False)]

    def matches(self, terms: tuple[str, ...]) -> tuple[np.ndarray, list[str]]:
        """(owner of each match, matched text, lower-cased where the text is ASCII) of every
        match of :func:`~cxrfuse.text.mask.compile_terms` in the corpus, in corpus order."""
        twin = lower_twin(terms_source(terms))
        fast, slow = self.parts
        if twin is None:  # every text with the case-insensitive pattern
            slow = _Joined.merge(fast, slow)
            return slow.matches(compile_terms(terms))
        owners, found = fast.matches(twin)
        if slow.ids.size:
            owners_slow, found_slow = slow.matches(compile_terms(terms))
            order = np.argsort(np.concatenate([owners, owners_slow]), kind="stable")
            owners = np.concatenate([owners, owners_slow])[order]
            found = [(found + found_slow)[i] for i in order.tolist()]
        return owners, found


class _Joined:
    """Some texts joined by the separator (lower-cased or not), with their start offsets."""

    def __init__(self, texts: list[str], ids: np.ndarray, *, lower: bool) -> None:
        self.ids = ids
        parts = [texts[i] for i in ids.tolist()]
        self.joined = SEPARATOR.join(parts)
        if lower:
            self.joined = self.joined.lower()
        lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
        self.starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if parts else np.zeros(0, np.int64)
        self.texts = texts

    @staticmethod
    def merge(a: _Joined, b: _Joined) -> _Joined:
        """Both parts' texts, in text order, not lower-cased."""
        return _Joined(a.texts, np.sort(np.concatenate([a.ids, b.ids])), lower=False)

    def owners(self, offsets: list[int]) -> np.ndarray:
        """Index (into the full text list) of the text holding each offset."""
        if not offsets:
            return np.zeros(0, dtype=np.int64)
        return self.ids[np.searchsorted(self.starts, np.asarray(offsets), side="right") - 1]

    def matches(self, pattern: re.Pattern[str]) -> tuple[np.ndarray, list[str]]:
        if not self.ids.size:
            return np.zeros(0, dtype=np.int64), []
        found = [(m.start(), m.group(0)) for m in pattern.finditer(self.joined)]
        return self.owners([o for o, _ in found]), [f for _, f in found]


def _candidates(texts: list[str], terms: list[str]) -> list[int]:
    """Indices of texts matching any of ``terms`` (one pass instead of one per family); each
    text is searched up to its first match only."""
    if not terms:
        return []
    twin = lower_twin(terms_source(tuple(terms)))
    if twin is not None and all(t.isascii() for t in texts):
        return [i for i, text in enumerate(texts) if twin.search(text.lower())]
    pattern = compile_terms(tuple(terms))
    return [i for i, text in enumerate(texts)
            if (twin.search(text.lower()) if twin is not None and text.isascii() else pattern.search(text))]


def _count(n: int, corpus: _Corpus, terms: tuple[str, ...]) -> tuple[np.ndarray, Counter[str]]:
    """Per study: does any term match; overall: how often each matched string occurs."""
    hit = np.zeros(n, dtype=bool)
    owners, found = corpus.matches(terms)
    hit[owners] = True
    counts: Counter[str] = Counter()  # each distinct string normalised once, first-seen order kept
    for text, k in Counter(found).items():
        counts[_SPACES.sub(" ", text.lower())] += k
    return hit, counts


_SPACES = re.compile(r"[\s-]+")


def _row(kind: str, label: str, family: str, hit: np.ndarray, terms: Counter[str],
         values: np.ndarray, top: int) -> SurvivingTerms:
    return SurvivingTerms(
        kind=kind, label=label, family=family, studies=int(hit.sum()),
        positive=int((hit & (values == 1)).sum()), negative=int((hit & (values == 0)).sum()),
        unknown=int((hit & np.isnan(values)).sum()), top_terms=tuple(terms.most_common(top)),
    )


def _masks_by_label(counts: np.ndarray, manifest: Manifest, labels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for label in labels:
        values = manifest.df[label_column(label)].to_numpy(dtype=np.float64)
        out[label] = {
            name: round(float(counts[values == v].mean()), 3) if (values == v).any() else 0.0
            for name, v in (("positive", 1.0), ("negative", 0.0))
        }
    return out


def audit_leakage(
    manifest: Manifest, config: TextConfig, task: str | None = None, *, top: int = 5,
    progress: bool = False,
) -> LeakageAudit:
    """Search the prepared text of every study for label terms, normal phrases and probes."""
    labels = manifest.task_labels(task)
    texts = prepare_texts(manifest, config, task, progress=progress).tolist()
    if not joinable(texts):
        raise ValueError("a prepared text holds a NUL character; the audit cannot search it")
    everything = _Corpus(texts)
    families = _families(labels)
    corpora = {}
    for probe in (False, True):  # one family: no pre-pass
        kind_families = {tuple(terms) for kind, _, _, terms in families if (kind == "probe") == probe}
        corpora[probe] = (everything if len(kind_families) == 1 else
                          _Corpus(texts, _candidates(texts, [t for terms in kind_families for t in terms])))
    rows = []
    scans: dict[tuple[bool, tuple[str, ...]], tuple[np.ndarray, Counter[str]]] = {}
    for kind, label, family, terms in families:
        values = manifest.df[label_column(label)].to_numpy(dtype=np.float64)
        scan = (kind == "probe", tuple(terms))  # a family several labels share is searched once
        if scan not in scans:
            scans[scan] = _count(len(texts), corpora[scan[0]], scan[1])
        hit, found = scans[scan]
        rows.append(_row(kind, label, family, hit, found, values, top))
    counts = np.zeros(len(texts), dtype=np.int64)
    if config.mask_labels and texts:
        token = re.compile(re.escape(config.mask_token))
        whole = _Joined(texts, np.arange(len(texts)), lower=False)
        np.add.at(counts, whole.owners([m.start() for m in token.finditer(whole.joined)]), 1)
    return LeakageAudit(
        task=task,
        labels=labels,
        config=config.model_dump(),
        n_studies=len(texts),
        n_with_text=sum(bool(t.strip()) for t in texts),
        rows=rows,
        masks_by_label=_masks_by_label(counts, manifest, labels),
        masks_per_study=pd.Series(counts, index=manifest.df.index, name="masks"),
    )
