"""Label alignment between vocabularies: which label of another manifest scores which label of
a trained run (as torchxrayvision relabels across datasets).

A run label is matched, in this order, by a user mapping (``run=target``, or ``run=!target``
for the complement), by the same name (after normalisation: ``Pleural_Thickening`` =
``Pleural Thickening``), by a synonym of the same concept in :data:`CONCEPTS`, or by a
derived rule in :data:`DERIVED` (``abnormal`` = not ``No Finding``). Labels of either side
without a counterpart are listed in :class:`LabelAlignment`, never silently dropped. The same
table is in ``docs/external.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrfuse.data.manifest import Manifest, label_slug
from cxrfuse.problems import ConfigError
from cxrfuse.vocab import ABNORMAL, NO_FINDING

CONCEPTS: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": ("Pleural Effusion", "Effusion"),
    "Atelectasis": ("Atelectasis", "Pulmonary Atelectasis"),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema", "Pulmonary Edema"),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
    "Nodule": ("Nodule", "Lung Nodule"),
    "Lung Opacity": ("Lung Opacity", "Opacity"),
    "Pleural Thickening": ("Pleural Thickening", "Pleural_Thickening"),
    "Emphysema": ("Emphysema", "Pulmonary Emphysema"),
    "Fibrosis": ("Fibrosis", "Pulmonary Fibrosis"),
    "Hernia": ("Hernia", "Hernia, Hiatal"),
    "Fracture": ("Fracture",),
}
"""Concept -> its names in IU X-ray (MeSH heads), CheXpert / MIMIC-CXR and NIH ChestX-ray14.
Not merged on purpose: NIH ``Mass`` / ``Nodule`` vs CheXpert ``Lung Lesion`` (a lesion is
either), NIH ``Infiltration`` vs ``Lung Opacity`` or ``Consolidation`` (no agreed mapping)."""

DERIVED: dict[str, str] = {ABNORMAL: NO_FINDING, NO_FINDING: ABNORMAL}
"""A label scored by the complement of another: ``abnormal`` = not ``No Finding`` and back."""


@dataclass(frozen=True)
class LabelPair:
    """One run label scored by a target label (``negate``: by its complement)."""

    run_label: str
    target_label: str
    rule: str
    negate: bool = False


@dataclass
class LabelAlignment:
    """The pairs, and the labels of each side left without a counterpart."""

    pairs: list[LabelPair] = field(default_factory=list)
    unmatched_run: list[str] = field(default_factory=list)
    unmatched_target: list[str] = field(default_factory=list)

    @property
    def run_labels(self) -> list[str]:
        return [p.run_label for p in self.pairs]

    def targets(self, manifest: Manifest) -> np.ndarray:
        """(n studies, n pairs): the target labels as the run's, NaN unknown."""
        columns = []
        for pair in self.pairs:
            y = manifest.label_matrix([pair.target_label])[:, 0].astype(np.float64)
            columns.append(1.0 - y if pair.negate else y)
        return np.stack(columns, axis=1) if columns else np.zeros((len(manifest), 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [{"run_label": p.run_label, "target_label": p.target_label,
                       "rule": p.rule, "negate": p.negate} for p in self.pairs],
            "unmatched_run": list(self.unmatched_run),
            "unmatched_target": list(self.unmatched_target),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LabelAlignment:
        """The inverse of :meth:`to_dict` (as stored in ``external.json``)."""
        return cls([LabelPair(**p) for p in raw.get("pairs", [])], list(raw.get("unmatched_run", [])),
                   list(raw.get("unmatched_target", [])))  # fmt: skip

    def table(self) -> list[dict[str, str]]:
        """One row per label of either side: run label, external label, rule."""
        rows = [{"run label": p.run_label,
                 "external label": ("not " if p.negate else "") + p.target_label,
                 "rule": p.rule} for p in self.pairs]  # fmt: skip
        rows += [{"run label": n, "external label": "-", "rule": "no counterpart (not scored)"}
                 for n in self.unmatched_run]  # fmt: skip
        rows += [{"run label": "-", "external label": n, "rule": "no counterpart (not scored)"}
                 for n in self.unmatched_target]  # fmt: skip
        return rows


def _concept_of(name: str) -> str | None:
    slug = label_slug(name)
    for concept, names in CONCEPTS.items():
        if slug in {label_slug(n) for n in names}:
            return concept
    return None


def parse_mapping(items: Sequence[str] | None) -> dict[str, str]:
    """``["abnormal=!Normal", "Opacity=Infiltration"]`` -> ``{run label: target}``."""
    out: dict[str, str] = {}
    for item in items or []:
        run, sep, target = item.partition("=")
        if not sep or not run.strip() or not target.strip().lstrip("!"):
            raise ConfigError(f"--align {item!r}: expected RUN_LABEL=EXTERNAL_LABEL "
                              "(or RUN_LABEL=!EXTERNAL_LABEL for its complement)")  # fmt: skip
        out[run.strip()] = target.strip()
    return out


def align_labels(run_labels: Sequence[str], target_labels: Sequence[str],
                 mapping: Mapping[str, str] | None = None) -> LabelAlignment:  # fmt: skip
    """Pair each run label with a label of the target vocabulary (see the module docstring)."""
    by_slug = {label_slug(t): t for t in target_labels}
    alignment = LabelAlignment()
    for name, target in (mapping or {}).items():
        if name not in run_labels:
            raise ConfigError(f"--align {name}={target}: {name!r} is not a label of the run "
                              f"(its labels: {list(run_labels)})")  # fmt: skip
        if label_slug(target.lstrip("!")) not in by_slug:
            raise ConfigError(f"--align {name}={target}: {target.lstrip('!')!r} is not a label of "
                              f"the external manifest (its labels: {list(target_labels)})")  # fmt: skip
    for name in run_labels:
        slug = label_slug(name)
        concept = _concept_of(name)
        if mapping and name in mapping:
            target = mapping[name]
            negate = target.startswith("!")
            pair = LabelPair(name, by_slug[label_slug(target.lstrip("!"))], "user mapping", negate)
        elif slug in by_slug:
            pair = LabelPair(name, by_slug[slug], "same name")
        elif concept is not None and any(_concept_of(t) == concept for t in target_labels):
            target = next(t for t in target_labels if _concept_of(t) == concept)
            pair = LabelPair(name, target, f"synonym ({concept})")
        elif name in DERIVED and label_slug(DERIVED[name]) in by_slug:
            pair = LabelPair(name, by_slug[label_slug(DERIVED[name])], f"not {DERIVED[name]}", True)
        else:
            alignment.unmatched_run.append(name)
            continue
        alignment.pairs.append(pair)
    used = {p.target_label for p in alignment.pairs}
    alignment.unmatched_target = [t for t in target_labels if t not in used]
    return alignment


def alignment_markdown() -> str:
    """The concept table as Markdown (the table of ``docs/external.md``)."""
    lines = ["| concept | names that match |", "|---|---|"]
    lines += [f"| {c} | {', '.join(f'`{n}`' for n in names)} |" for c, names in CONCEPTS.items()]
    lines += [f"| {a} | not `{b}` |" for a, b in DERIVED.items()]
    return "\n".join(lines)
