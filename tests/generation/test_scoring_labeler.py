"""The rule-based CheXpert labeler: mentions, negation, uncertainty, No Finding."""

from __future__ import annotations

import numpy as np
import pytest

from cxrfuse.generation.labeler import CE_FIVE, CHEXPERT_LABELS, RuleLabeler
from cxrfuse.generation.scoring import make_labeler
from cxrfuse.problems import CxrfuseError

NAN = float("nan")


@pytest.fixture(scope="module")
def labeler() -> RuleLabeler:
    return RuleLabeler()


def value(labeler: RuleLabeler, text: str, label: str) -> float:
    return float(labeler.label([text])[0, CHEXPERT_LABELS.index(label)])


@pytest.mark.parametrize(
    ("text", "label", "expected"),
    [
        # negation, uncertainty, assertion of pleural effusion
        ("No effusion.", "Pleural Effusion", 0),
        ("Cannot exclude effusion.", "Pleural Effusion", -1),
        ("Small left pleural effusion.", "Pleural Effusion", 1),
        ("There are no XXXX of a pleural effusion.", "Pleural Effusion", 0),
        ("Possible small right effusion.", "Pleural Effusion", -1),
        ("The effusion has resolved.", "Pleural Effusion", 0),
        ("Costophrenic angles are sharp.", "Pleural Effusion", 0),
        ("Small pericardial effusion.", "Pleural Effusion", NAN),
        ("Cardiomegaly with no focal consolidation, but small bilateral effusions.", "Pleural Effusion", 1),
        # heart size statements
        ("Heart size is normal.", "Cardiomegaly", 0),
        ("The heart is mildly enlarged.", "Cardiomegaly", 1),
        ("The heart is not enlarged.", "Cardiomegaly", 0),
        ("Heart size is at the upper limits of normal.", "Cardiomegaly", 0),
        ("Borderline cardiomegaly.", "Cardiomegaly", -1),
        ("No cardiomegaly.", "Cardiomegaly", 0),
        ("Findings consistent with CHF.", "Cardiomegaly", -1),
        ("Stable cardiomediastinal silhouette.", "Enlarged Cardiomediastinum", -1),
        ("Widened mediastinum.", "Enlarged Cardiomediastinum", 1),
        # whole study
        ("No acute cardiopulmonary abnormality.", "No Finding", 1),
        ("Stable calcified granuloma in the right upper lobe.", "No Finding", NAN),
        ("ET tube in place. No acute abnormality.", "No Finding", 1),
        ("Mild cardiomegaly.", "No Finding", NAN),
        # devices
        ("ET tube in place.", "Support Devices", 1),
        ("Interval removal of the chest tube.", "Support Devices", 0),
        ("Right IJ central venous catheter tip in the SVC.", "Support Devices", 1),
        # lists under one negation, alternatives, hedges
        ("No pneumothorax or pleural effusion.", "Pneumothorax", 0),
        ("No focal consolidation, suspicious pulmonary opacity, pleural effusion, or pneumothorax.",
         "Lung Opacity", 0),
        ("Left basilar opacity may represent atelectasis or pneumonia.", "Atelectasis", -1),
        ("Left basilar opacity may represent atelectasis or pneumonia.", "Lung Opacity", 1),
        ("Atelectasis versus pneumonia.", "Pneumonia", -1),
        ("Findings concerning for pneumonia.", "Pneumonia", -1),
        ("No findings to suggest pneumonia.", "Pneumonia", 0),
        ("No new consolidation.", "Consolidation", -1),
        ("Mild pulmonary vascular congestion.", "Edema", -1),
        ("No pulmonary edema.", "Edema", 0),
        ("Pneumothorax is not seen.", "Pneumothorax", 0),
        ("Healed left rib fractures.", "Fracture", 1),
        ("No acute fracture.", "Fracture", 0),
        ("Right upper lobe nodule.", "Lung Lesion", 1),
        ("Biapical pleural thickening.", "Pleural Other", 1),
        ("Bibasilar atelectasis.", "Atelectasis", 1),
        ("Pulmonary vascularity is normal.", "Edema", NAN),
    ],
)
def test_rule_labels(labeler: RuleLabeler, text: str, label: str, expected: float) -> None:
    got = value(labeler, text, label)
    if np.isnan(expected):
        assert np.isnan(got), (text, label, got, labeler.mentions(text))
    else:
        assert got == expected, (text, label, got, labeler.mentions(text))


def test_normal_report_negates_and_sets_no_finding(labeler: RuleLabeler) -> None:
    text = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."
    row = dict(zip(CHEXPERT_LABELS, labeler.label([text])[0]))
    assert row["Cardiomegaly"] == 0
    assert row["Enlarged Cardiomediastinum"] == 0
    assert row["Lung Opacity"] == 0
    assert row["No Finding"] == 1
    assert all(np.isnan(row[k]) for k in ("Pleural Effusion", "Fracture", "Support Devices"))


def test_label_array_shape_and_values(labeler: RuleLabeler) -> None:
    texts = ["No effusion.", "", None, "Large right pneumothorax. Possible rib fracture."]
    out = labeler.label(texts)  # type: ignore[arg-type]
    assert out.shape == (4, 14) and out.dtype == np.float64
    known = out[~np.isnan(out)]
    assert set(np.unique(known)) <= {-1.0, 0.0, 1.0}
    # an empty report mentions nothing: every observation blank, No Finding 1 (as CheXpert)
    assert np.isnan(out[1, :-1]).all() and out[1, -1] == 1 and out[2, -1] == 1
    assert out[3, CHEXPERT_LABELS.index("Pneumothorax")] == 1
    assert out[3, CHEXPERT_LABELS.index("Fracture")] == -1


def test_aggregation_positive_wins_then_uncertain(labeler: RuleLabeler) -> None:
    assert value(labeler, "No effusion on the left. Small right effusion.", "Pleural Effusion") == 1
    assert value(labeler, "No effusion on the left. Possible right effusion.", "Pleural Effusion") == -1


def test_mentions_explain_each_value(labeler: RuleLabeler) -> None:
    mentions = labeler.mentions("No pneumothorax. Cannot exclude small effusion.")
    reasons = {m.label: (m.value, m.reason) for m in mentions}
    assert reasons["Pneumothorax"][0] == 0 and "negation" in reasons["Pneumothorax"][1]
    assert reasons["Pleural Effusion"][0] == -1 and "cannot exclude" in reasons["Pleural Effusion"][1]


def test_label_subset_and_errors() -> None:
    sub = RuleLabeler(labels=CE_FIVE)
    assert sub.label(["Small left effusion."]).shape == (1, 5)
    with pytest.raises(CxrfuseError, match="unknown CheXpert observation"):
        RuleLabeler(labels=["Effusion"])
    with pytest.raises(CxrfuseError, match="chexbert.pth"):
        make_labeler("chexbert")
    with pytest.raises(CxrfuseError, match="unknown labeler"):
        make_labeler("negbio")
    assert make_labeler("rules").name == "rules"
