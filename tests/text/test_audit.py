"""Leakage audit, on a hand-made manifest and on the 3,955 real IU X-ray reports."""

from __future__ import annotations

import json

import pytest
from rich.table import Table

from cxrfuse.data import Manifest
from cxrfuse.text import LeakageAudit, TextConfig, audit_leakage


@pytest.fixture
def small() -> Manifest:
    records = [
        {"study_id": "s1", "patient_id": "p1", "findings": "Cardiomegaly. Streaky opacity.",
         "labels": {"Cardiomegaly": 1, "Opacity": 1}},
        {"study_id": "s2", "patient_id": "p2", "findings": "Heart size normal. Silhouette is fine.",
         "labels": {"Cardiomegaly": 0, "Opacity": 0}},
        {"study_id": "s3", "patient_id": "p3", "findings": "No cardiomegaly.", "impression": None,
         "labels": {}},
        {"study_id": "s4", "patient_id": "p4", "findings": None, "labels": {"Cardiomegaly": 0}},
    ]
    return Manifest.from_records(records, dataset="toy", labels=["Cardiomegaly", "Opacity"],
                                 tasks={"both": ["Cardiomegaly", "Opacity"]})


def rows(audit: LeakageAudit, kind: str) -> dict[str, object]:
    return {r.label: r for r in audit.rows if r.kind == kind}


def test_counts_split_by_label_value(small: Manifest) -> None:
    audit = audit_leakage(small, TextConfig(mask_labels=False), "Cardiomegaly")
    row = rows(audit, "label")["Cardiomegaly"]
    assert (row.studies, row.positive, row.negative, row.unknown) == (3, 1, 1, 1)
    assert dict(row.top_terms) == {"cardiomegaly": 2, "heart size normal": 1}
    probe = rows(audit, "probe")["Cardiomegaly"]
    assert (probe.studies, probe.negative) == (1, 1)
    assert audit.n_studies == 4 and audit.n_with_text == 3


def test_masking_removes_what_the_audit_looks_for(small: Manifest) -> None:
    audit = audit_leakage(small, TextConfig(), "both")
    assert audit.total_surviving == 0
    assert audit.masks_per_study.tolist() == [2, 1, 1, 0]  # "[MASK]. [MASK]." in s1
    assert audit.masks_by_label["Cardiomegaly"] == {"positive": 2.0, "negative": 0.5}
    assert rows(audit, "probe")["Opacity"].top_terms == ()  # "streaky" went with the mask


def test_reports(small: Manifest) -> None:
    audit = audit_leakage(small, TextConfig(mask_labels=False), "both")
    frame = audit.to_frame()
    assert list(frame.columns) == ["kind", "label", "family", "studies", "positive", "negative",
                                   "unknown", "top_terms"]
    assert len(frame) == len(audit.rows)
    data = json.loads(json.dumps(audit.to_dict()))
    assert data["total_surviving"] == audit.total_surviving > 0
    assert data["masks_per_study"]["mean"] == 0.0
    table = audit.render()
    assert isinstance(table, Table) and table.row_count == len(audit.rows)
    assert audit.render(show_zero=False).row_count == sum(r.studies > 0 for r in audit.rows)


# ------------------------------------------------------------------------------ real reports
def test_iu_multilabel_no_label_term_survives_masking(audit_multilabel_masked: LeakageAudit) -> None:
    audit = audit_multilabel_masked
    assert audit.n_studies == 3955
    assert {r.label for r in audit.rows if r.kind == "label"} == set(audit.labels)
    assert audit.total_surviving == 0, audit.to_frame().query("kind != 'probe' and studies > 0")
    assert audit.mask_summary()["share_with_mask"] > 0.95


def test_iu_abnormal_no_finding_or_normal_phrase_survives(audit_abnormal_masked: LeakageAudit) -> None:
    audit = audit_abnormal_masked
    kinds = {r.kind for r in audit.rows}
    assert kinds == {"label", "normal", "probe"}
    assert audit.total_surviving == 0, audit.to_frame().query("kind != 'probe' and studies > 0")


def test_iu_without_masking_the_audit_finds_label_terms(
    audit_multilabel_unmasked: LeakageAudit,
) -> None:
    audit = audit_multilabel_unmasked
    assert audit.total_surviving > 10_000
    for row in audit.rows:
        if row.kind == "label":
            assert row.positive > 50, row


def test_iu_probe_words_are_reported_not_hidden(
    audit_multilabel_masked: LeakageAudit, audit_multilabel_unmasked: LeakageAudit
) -> None:
    assert 0 < audit_multilabel_masked.total_probe < audit_multilabel_unmasked.total_probe
    effusion = next(r for r in audit_multilabel_masked.rows
                    if r.kind == "probe" and r.label == "Pleural Effusion")
    assert effusion.studies > 0 and effusion.top_terms


def test_iu_lowercase_and_stop_words_keep_zero_survivors(iu: Manifest) -> None:
    sub = iu.replace(df=iu.df.head(1500))
    config = TextConfig(lowercase=True, remove_stopwords=True, sections=["impression", "findings"])
    assert audit_leakage(sub, config, "multilabel").total_surviving == 0
