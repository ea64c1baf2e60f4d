"""The batched preparation and the corpus-wide audit give exactly what the per-text code gave.

Reference: the per-row :func:`~cxrfuse.text.prepare_text` (unchanged) for the texts, and a copy
of the audit's former per-text search loop (``_reference_audit``) for the audit, on the 3,955
bundled IU X-ray reports.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from cxrfuse.data import Manifest
from cxrfuse.data.manifest import label_column
from cxrfuse.text import TextConfig, audit_leakage, prepare_text, prepare_texts
from cxrfuse.text.audit import _families
from cxrfuse.text.mask import compile_terms, mask_label_mentions, mask_many
from cxrfuse.text.pipeline import _base_cache, _cache
from cxrfuse.vocab import REPORT_SECTIONS

CONFIGS = {
    "default": TextConfig(),
    "stopwords": TextConfig(remove_stopwords=True, lowercase=True),
    "all sections, no headers": TextConfig(sections=["indication", "findings", "impression"],
                                           section_headers=False),
    "unmasked": TextConfig(mask_labels=False),
    "other token": TextConfig(mask_token="<LBL>", strip_deid=False),
}


def _reference_texts(manifest: Manifest, config: TextConfig, task: str | None) -> list[str]:
    labels = manifest.task_labels(task)
    columns = [c for c in REPORT_SECTIONS if c in config.sections]
    return [prepare_text(row, config, labels) for row in manifest.df[columns].to_dict("records")]


CASES = [*((name, "normal-abnormal") for name in CONFIGS),
         *((name, task) for name in ("default", "stopwords") for task in ("multilabel", "Cardiomegaly"))]


@pytest.mark.parametrize(("name", "task"), CASES)
def test_prepared_texts_identical(iu_manifest: Manifest, name: str, task: str) -> None:
    if task == "Cardiomegaly" and task not in iu_manifest.labels:
        task = iu_manifest.labels[0]
    config = CONFIGS[name]
    _cache.clear()
    _base_cache.clear()
    new = prepare_texts(iu_manifest, config, task).tolist()
    old = _reference_texts(iu_manifest, config, task)
    assert len(new) == len(old) == 3955
    differ = [i for i, (a, b) in enumerate(zip(new, old)) if a != b]
    assert not differ, (differ[:5], new[differ[0]], old[differ[0]])
    if config.mask_labels:
        assert sum(config.mask_token in t for t in new) > 1000  # masking did happen
    assert prepare_texts(iu_manifest, config, task).tolist() == new  # from the cache


def test_mask_many_edge_cases() -> None:
    texts = ["", "No pleural effusion.", "[MASK] and [MASK] already", "heart\x00size is normal",
             "Small right pleural effusion, and atelectasis."]
    labels = ["Pleural Effusion", "Atelectasis"]
    assert mask_many(texts, labels) == [mask_label_mentions(t, labels) for t in texts]
    assert mask_many(texts[:3] + texts[4:], labels) == [mask_label_mentions(t, labels)
                                                        for t in texts[:3] + texts[4:]]
    with pytest.raises(ValueError, match="itself a term"):
        mask_many(["x"], ["Pleural Effusion"], token="effusion")


def _reference_audit(manifest: Manifest, config: TextConfig, task: str) -> tuple[list, list]:
    """The audit's rows and mask counts as the former per-text loops computed them."""
    labels = manifest.task_labels(task)
    texts = _reference_texts(manifest, config, task)
    families = _families(labels)
    subsets = {}
    for probe in (False, True):
        pattern = compile_terms(tuple(t for kind, _, _, terms in families
                                      if (kind == "probe") == probe for t in terms))
        subsets[probe] = [i for i, text in enumerate(texts) if pattern.search(text)]
    rows = []
    for kind, label, family, terms in families:
        pattern = compile_terms(tuple(terms))
        hit = np.zeros(len(texts), dtype=bool)
        found: Counter[str] = Counter()
        for i in subsets[kind == "probe"]:
            matches = [m.group(0).lower() for m in pattern.finditer(texts[i])]
            if matches:
                hit[i] = True
                found.update(re.sub(r"[\s-]+", " ", f) for f in matches)
        values = manifest.df[label_column(label)].to_numpy(dtype=np.float64)
        rows.append((kind, label, family, int(hit.sum()), int((hit & (values == 1)).sum()),
                     int((hit & (values == 0)).sum()), tuple(found.most_common(5))))
    token = re.escape(config.mask_token)
    counts = [len(re.findall(token, t)) if config.mask_labels else 0 for t in texts]
    return rows, counts


@pytest.mark.parametrize("name", ["default", "unmasked"])
@pytest.mark.parametrize("task", ["normal-abnormal", "multilabel"])
def test_audit_identical(iu_manifest: Manifest, name: str, task: str) -> None:
    config = CONFIGS[name]
    audit = audit_leakage(iu_manifest, config, task)
    rows, counts = _reference_audit(iu_manifest, config, task)
    got = [(r.kind, r.label, r.family, r.studies, r.positive, r.negative, r.top_terms)
           for r in audit.rows]
    assert got == rows
    assert audit.masks_per_study.tolist() == counts
    assert sum(r[3] for r in rows) > 0  # the audit found something to compare


def test_progress_bar_names_the_step(iu_manifest: Manifest, capsys: pytest.CaptureFixture[str]) -> None:
    _cache.clear()
    _base_cache.clear()
    audit_leakage(iu_manifest, TextConfig(), "multilabel", progress=True)
    err = capsys.readouterr().err
    assert "prepare texts" in err and "report" in err
    audit_leakage(iu_manifest, TextConfig(), "multilabel", progress=True)  # cached: no bar
    assert "prepare texts" not in capsys.readouterr().err
