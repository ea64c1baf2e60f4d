"""Label-mention masking: synonym families, word forms, normal phrases, tokens, patterns."""

from __future__ import annotations

import re
import warnings

import pytest

from cxrfuse.data import Manifest
from cxrfuse.data.labels import CHEXPERT_LABELS, IU_DEFAULT_FINDINGS, NIH_LABELS
from cxrfuse.text import (
    FAMILIES,
    LABEL_TERMS,
    NORMAL_PHRASES,
    PROBE_TERMS,
    TextConfig,
    clean_text,
    label_patterns,
    mask_label_mentions,
    prepare_text,
    prepare_texts,
)
from cxrfuse.text.mask import _all_terms, _specificity, _spell, compile_terms

IU = [f.name for f in IU_DEFAULT_FINDINGS]


def mask(text: str, labels: list[str]) -> str:
    return mask_label_mentions(clean_text(text), labels)


@pytest.mark.parametrize(
    ("label", "text", "masked"),
    [
        # cardiomegaly
        ("Cardiomegaly", "Enlarged heart.", "[MASK]."),
        ("Cardiomegaly", "Cardiac enlargement.", "[MASK]."),
        ("Cardiomegaly", "The heart is enlarged.", "The [MASK]."),
        ("Cardiomegaly", "Heart size is mildly enlarged.", "[MASK]."),
        ("Cardiomegaly", "The cardiac silhouette is enlarged.", "The [MASK]."),
        ("Cardiomegaly", "Enlarged cardiac silhouette.", "[MASK]."),
        ("Cardiomegaly", "Borderline cardiomegaly.", "[MASK]."),
        ("Cardiomegaly", "CARDIOMEGALY", "[MASK]"),
        ("Cardiomegaly", "Heart size is normal.", "[MASK]."),
        ("Cardiomegaly", "The heart is not enlarged.", "The [MASK]."),
        # atelectasis
        ("Pulmonary Atelectasis", "Atelectatic change at the bases.", "[MASK] at the bases."),
        ("Pulmonary Atelectasis", "Plate-like atelectasis.", "[MASK]."),
        ("Pulmonary Atelectasis", "Platelike atelectasis", "[MASK]"),
        ("Pulmonary Atelectasis", "Discoid atelectases in the lingula.", "[MASK] in the lingula."),
        ("Pulmonary Atelectasis", "Bibasilar subsegmental atelectasis.", "[MASK]."),
        # pleural effusion
        ("Pleural Effusion", "Small bilateral pleural effusions.", "[MASK]."),
        ("Pleural Effusion", "Effusions.", "[MASK]."),
        ("Pleural Effusion", "Blunting of the costophrenic angles.", "[MASK]."),
        ("Pleural Effusion", "Costophrenic XXXX blunting.", "[MASK]."),
        ("Pleural Effusion", "Both costophrenic XXXX are blunted.", "Both [MASK]."),
        ("Pleural Effusion", "No pleural effusion.", "[MASK]."),
        ("Pleural Effusion", "There are no XXXX of a pleural effusion.", "There are [MASK]."),
        # calcinosis and granuloma
        ("Calcinosis", "Calcified.", "[MASK]."),
        ("Calcinosis", "Atherosclerotic calcifications of the aorta.", "[MASK]."),
        ("Calcinosis", "Calcified hilar lymph nodes.", "[MASK]."),
        ("Calcified Granuloma", "Old granulomata.", "[MASK]."),
        ("Calcified Granuloma", "Calcified granuloma in the right upper lobe.", "[MASK] in the right upper lobe."),
        ("Calcified Granuloma", "Sequela of old granulomatous disease.", "Sequela of [MASK]."),
        # opacity, airspace disease, nodule
        ("Opacity", "Patchy airspace opacities.", "[MASK]."),
        ("Opacity", "Opacification of the left base.", "[MASK] of the left base."),
        ("Opacity", "Streaky infiltrate.", "[MASK]."),
        ("Airspace Disease", "Air-space disease.", "[MASK]."),
        ("Airspace Disease", "Right lower lobe consolidation.", "[MASK]."),
        ("Nodule", "Nodular density.", "[MASK] density."),
        ("Nodule", "Multiple pulmonary nodules and masses.", "[MASK]."),
        # CheXpert / NIH families
        ("Pneumothorax", "Right apical pneumothorax.", "[MASK]."),
        ("Edema", "Pulmonary vascular congestion.", "[MASK]."),
        ("Emphysema", "Hyperexpanded lungs.", "[MASK] lungs."),
        ("Fibrosis", "Scarring.", "[MASK]."),
        ("Hernia", "Small hiatal hernia.", "[MASK]."),
        ("Fracture", "Healed rib fractures.", "[MASK]."),
        ("Support Devices", "Pacemaker leads in place.", "[MASK] in place."),
        ("Pleural_Thickening", "Biapical pleural thickening.", "[MASK]."),
        # whole study: findings and normal phrases
        ("abnormal", "No acute cardiopulmonary abnormality.", "[MASK]."),
        ("abnormal", "Lungs are clear.", "[MASK]."),
        ("abnormal", "Normal chest x-XXXX.", "[MASK]."),
        ("abnormal", "No active disease.", "[MASK]."),
        ("abnormal", "Heart size normal.", "[MASK]."),
        ("abnormal", "Well-expanded and clear lungs.", "[MASK]."),
        ("abnormal", "There is a small left pleural effusion.", "There is a [MASK]."),
        ("abnormal", "Mild degenerative changes of the thoracic spine.", "[MASK] of the thoracic spine."),
    ],
)
def test_families_and_word_forms(label: str, text: str, masked: str) -> None:
    out = mask(text, [label])
    assert out == masked
    assert not label_patterns([label])[label].search(out)


def test_only_task_labels_are_masked() -> None:
    assert mask("Cardiomegaly and pleural effusion.", ["Cardiomegaly"]) == "[MASK] and pleural effusion."
    assert mask("Cardiomegaly and pleural effusion.", ["Nodule"]) == "Cardiomegaly and pleural effusion."


def test_word_boundaries() -> None:
    assert mask("Massive fluid collection.", ["Nodule"]) == "Massive fluid collection."
    assert mask("The trachea is midline. See report.", ["Support Devices"]) == (
        "The trachea is midline. See report."
    )
    assert mask("Nonenlarged heart", ["Cardiomegaly"]) == "Nonenlarged heart"


def test_consecutive_masks_collapse() -> None:
    out = mask("No pneumothorax, pleural effusion, or focal consolidation.", ["abnormal"])
    assert out == "[MASK]."
    assert "[MASK] [MASK]" not in mask("Cardiomegaly cardiomegaly", ["Cardiomegaly"])


def test_custom_token_and_token_guard() -> None:
    assert mask_label_mentions("Small effusion.", ["Pleural Effusion"], token="<m>") == "<m>."
    with pytest.raises(ValueError, match="effusion"):
        mask_label_mentions("Small effusion.", ["Pleural Effusion"], token="effusion")


def test_unknown_label_masks_own_name_and_warns_once() -> None:
    with pytest.warns(UserWarning, match="Zebra Stripe"):
        out = mask_label_mentions("Two zebra stripes and a zebra-stripe.", ["Zebra Stripe"])
    assert out == "Two [MASK] and a [MASK]."
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_label_mentions("zebra stripe", ["Zebra Stripe"])


@pytest.mark.parametrize("label", [*IU, *CHEXPERT_LABELS, *NIH_LABELS, "abnormal"])
def test_every_vocabulary_label_has_terms(label: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pattern = label_patterns([label])[label]
    assert pattern.search(label.replace("_", " ")) or label == "No Finding"


def test_tables_compile_and_never_match_empty() -> None:
    for terms in [*LABEL_TERMS.values(), *FAMILIES.values(), NORMAL_PHRASES, *PROBE_TERMS.values()]:
        for term in terms:
            assert not re.fullmatch(_spell(term), "", re.IGNORECASE), term
            assert not re.search(_spell(term), "[MASK]", re.IGNORECASE), term


def test_label_patterns_are_cached() -> None:
    first = label_patterns(["Cardiomegaly", "Nodule"])
    again = label_patterns(["Cardiomegaly"])
    assert first["Cardiomegaly"] is again["Cardiomegaly"]


def test_first_character_dispatch_matches_plain_alternation(iu: Manifest) -> None:
    """The fast pattern finds exactly what the plain alternation, in the same order, finds."""
    terms = _all_terms(("abnormal",))
    ordered = sorted(set(terms), key=_specificity, reverse=True)
    plain = re.compile(r"(?<!\w)(?:" + "|".join(_spell(t) for t in ordered) + r")(?!\w)", re.IGNORECASE)
    fast = compile_terms(terms)
    config = TextConfig(mask_labels=False)
    for row in iu.df.head(400).to_dict("records"):
        text = prepare_text(row, config, ["abnormal"])
        assert plain.sub("#", text) == fast.sub("#", text)


def test_masking_happens_before_lowercase_and_stop_words() -> None:
    row = {"findings": "The Heart Is Enlarged. There is no pleural effusion.", "impression": None}
    config = TextConfig(lowercase=True, remove_stopwords=True)
    assert prepare_text(row, config, ["Cardiomegaly"]) == "findings: [MASK]. no pleural effusion."
    assert prepare_text(row, config, ["Pleural Effusion"]) == "findings: heart enlarged. [MASK]."


def test_prepare_texts_is_indexed_like_manifest(iu: Manifest) -> None:
    sub = iu.replace(df=iu.df.head(50))
    texts = prepare_texts(sub, TextConfig(sections=["impression"]), "multilabel")
    assert texts.index.equals(sub.df.index)
    assert all("FINDINGS" not in t for t in texts)
