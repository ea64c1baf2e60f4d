"""How source labels map onto the label vocabularies of :mod:`cxrfuse.vocab`.

IU X-ray labels come from the MeSH ``major`` terms of each OpenI report
(``Cardiomegaly/mild``, ``Pulmonary Atelectasis/base/left``): the head term before the first
``/`` names the finding. ``normal`` marks a normal study; a report indexed only as
``No Indexing`` has no usable label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cxrfuse.vocab import ABNORMAL, CHEXPERT_LABELS, IU_FINDINGS, NIH_LABELS

NORMAL_MESH = "normal"
UNINDEXED_MESH = "No Indexing"


@dataclass(frozen=True)
class Finding:
    """One label of a vocabulary and the MeSH head terms that assign it."""

    name: str
    mesh_terms: tuple[str, ...]

    def matches(self, mesh_heads: Iterable[str]) -> bool:
        wanted = {t.lower() for t in self.mesh_terms}
        return any(h.lower() in wanted for h in mesh_heads)


IU_DEFAULT_FINDINGS: tuple[Finding, ...] = tuple(Finding(name, (name,)) for name in IU_FINDINGS)
"""The eight most frequent finding heads in the 3,955 OpenI reports (organ heads such as
``Lung`` or ``Aorta`` and device terms left out)."""


def mesh_heads(terms: Iterable[str]) -> list[str]:
    """Head terms of MeSH major entries: ``'Cardiomegaly/mild'`` -> ``'Cardiomegaly'``."""
    heads: list[str] = []
    for term in terms:
        for part in term.split(";"):
            head = part.split("/")[0].strip()
            if head and head not in heads:
                heads.append(head)
    return heads


def parse_findings(spec: Iterable[str] | None) -> tuple[Finding, ...]:
    """A finding vocabulary from names; ``'Name=Mesh A|Mesh B'`` gives extra MeSH synonyms."""
    if spec is None:
        return IU_DEFAULT_FINDINGS
    findings = []
    for item in spec:
        name, _, synonyms = item.partition("=")
        name = name.strip()
        terms = tuple(s.strip() for s in synonyms.split("|") if s.strip()) or (name,)
        findings.append(Finding(name, terms))
    if not findings:
        raise ValueError("the finding vocabulary is empty")
    return tuple(findings)


def iu_labels(
    mesh_major: Iterable[str], findings: tuple[Finding, ...] = IU_DEFAULT_FINDINGS
) -> dict[str, float | None]:
    """IU labels from MeSH major terms: ``abnormal`` plus one entry per finding.

    ``abnormal`` is 0 for ``normal``, 1 for any other indexed term, None for unindexed
    reports; findings are 1/0, None for unindexed reports.
    """
    heads = mesh_heads(mesh_major)
    indexed = [h for h in heads if h.lower() != UNINDEXED_MESH.lower()]
    labels: dict[str, float | None] = {}
    if not indexed:
        labels[ABNORMAL] = None
        labels.update({f.name: None for f in findings})
        return labels
    is_normal = any(h.lower() == NORMAL_MESH for h in indexed)
    labels[ABNORMAL] = 0.0 if is_normal and len(indexed) == 1 else 1.0
    labels.update({f.name: float(f.matches(indexed)) for f in findings})
    return labels


__all__ = [
    "ABNORMAL", "CHEXPERT_LABELS", "IU_DEFAULT_FINDINGS", "NIH_LABELS", "Finding",
    "iu_labels", "mesh_heads", "parse_findings",
]  # fmt: skip
