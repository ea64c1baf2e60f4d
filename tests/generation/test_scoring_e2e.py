"""End to end on real text: the bundled IU X-ray reports against a constant "normal" report."""

from __future__ import annotations

import json

import pytest

from cxrfuse.data import Manifest
from cxrfuse.generation import CHEXPERT_LABELS, score_reports, scores_table, write_scores

NORMAL = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."
ABNORMAL = [x for x in CHEXPERT_LABELS if x != "No Finding"]


@pytest.fixture(scope="module")
def references(iu_manifest: Manifest) -> dict[str, list[str]]:
    """The findings of the first 500 bundled reports that have findings."""
    df = iu_manifest.df
    df = df[df["findings"].notna()].head(500)
    return {row.study_id: [row.findings] for row in df.itertuples()}


def test_constant_normal_report(references: dict[str, list[str]], tmp_path) -> None:
    generated = {study: NORMAL for study in references}
    payload = score_reports(generated, references, n_boot=200, n_boot_language=20, meteor=False)
    clinical = payload["clinical"]
    per = clinical["per_label"]
    # the constant report asserts no abnormal observation, so each abnormal observation has no
    # generated positive, F1 exactly 0 where the references have positives, and the CE scores
    # over the five abnormal observations are 0
    with_positives = [x for x in ABNORMAL if per[x]["reference_positives"] > 0]
    assert len(with_positives) >= 8
    for name in ABNORMAL:
        assert per[name]["generated_positives"] == 0, name
    for name in with_positives:
        assert per[name]["f1"]["value"] == 0.0, name
    assert clinical["micro_f1_5"]["value"] == 0.0 and clinical["macro_f1_5"]["value"] == 0.0
    # ... while the 14-label micro-F1 is carried by No Finding alone: every generated report
    # says No Finding, so its true positives are the normal references, its false positives
    # the others, and every abnormal reference positive is a false negative
    no_finding = per["No Finding"]
    assert no_finding["generated_positives"] == len(references)
    assert no_finding["recall"]["value"] == 1.0
    tp = no_finding["reference_positives"]
    fp = len(references) - tp
    fn = sum(per[x]["reference_positives"] for x in ABNORMAL)
    assert clinical["micro_f1_14"]["value"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert clinical["micro_f1_14"]["value"] > 0.3
    # and the n-gram metrics are well above 0: the constant-report trap
    assert payload["bleu_4"]["value"] > 0.03
    assert payload["bleu_1"]["value"] > 0.12
    assert payload["rouge_l"]["value"] > 0.2
    assert payload["bleu_4"]["low"] < payload["bleu_4"]["value"] < payload["bleu_4"]["high"]
    table = scores_table(payload)
    assert "| BLEU-4 |" in table and "| CE micro-F1 (5) | 0.000 |" in table
    path = write_scores(tmp_path, payload)
    data = json.loads(path.read_text())
    assert set(data) >= {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider", "clinical"}
    assert len(list(data["clinical"]["per_label"])) == 14


def test_copied_references_score_perfectly(references: dict[str, list[str]]) -> None:
    subset = dict(list(references.items())[:100])
    generated = {study: texts[0] for study, texts in subset.items()}
    payload = score_reports(generated, subset, n_boot=50, n_boot_language=5, meteor=False)
    assert payload["bleu_4"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert payload["rouge_l"]["value"] == pytest.approx(1.0)
    assert payload["clinical"]["micro_f1_14"]["value"] == 1.0
    assert payload["clinical"]["macro_f1_5"]["value"] == 1.0


def test_subset_and_notes(references: dict[str, list[str]]) -> None:
    few = dict(list(references.items())[:30])
    generated = {study: "" for study in list(few)[:20]}
    payload = score_reports(generated, few, n_boot=20, n_boot_language=5, subset=True, meteor=False)
    assert payload["n_studies"] == 20
    assert any("10 reference studies" in n for n in payload["notes"])
    assert any("20 generated report(s) are empty" in n for n in payload["notes"])
    assert payload["bleu_4"]["value"] == pytest.approx(0.0, abs=1e-6)


def test_missing_java_is_said_in_the_table(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on this PATH
    generated = {"a": "No effusion.", "b": "Small left effusion."}
    references = {"a": ["No pleural effusion."], "b": ["Small left pleural effusion."]}
    payload = score_reports(generated, references, n_boot=5, n_boot_language=5)
    assert payload["meteor"] is None
    table = scores_table(payload)
    assert "| METEOR | n/a |" in table and "Note: METEOR not computed: no `java`" in table
