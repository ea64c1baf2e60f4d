"""Cleaning: de-identification tokens, spacing, stop words, the text configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cxrfuse.text import NEGATIONS, STOP_WORDS, TextConfig, clean_text, select_sections


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Normal chest x-XXXX.", "Normal chest x-ray."),
        ("NORMAL CHEST X-XXXX.", "NORMAL CHEST X-ray."),
        ("There are no XXXX of a pleural effusion.", "There are no of a pleural effusion."),
        ("XXXX-year-old male with XXXX/XXXX.", "year-old male with."),
        ("Comparison: XXXX, XXXX.", "Comparison."),
        ("Costophrenic XXXX blunting.", "Costophrenic blunting."),
        ("XXXX's disease", "disease"),
        ("(XXXX) lungs clear,no effusion", "lungs clear, no effusion"),
    ],
)
def test_deid_tokens_removed(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_deid_tokens_kept_on_request() -> None:
    assert clean_text("There are no XXXX of a  pleural effusion .", strip_deid=False) == (
        "There are no XXXX of a pleural effusion."
    )


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Heart  size\n normal .", "Heart size normal."),
        ("No acute disease..", "No acute disease."),
        ("No effusion , no edema ;", "No effusion, no edema;"),
        ("Lungs clear.Heart normal.", "Lungs clear. Heart normal."),
        ("Measures 2.5 cm.", "Measures 2.5 cm."),
    ],
)
def test_whitespace_and_punctuation(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_empty_inputs() -> None:
    assert clean_text(None) == ""
    assert clean_text("") == ""
    assert clean_text("XXXX XXXX") == ""


def test_negations_survive_stop_word_removal() -> None:
    text = "There is no pleural effusion and the heart is not enlarged, without edema."
    out = clean_text(text, remove_stopwords=True)
    assert out == "no pleural effusion heart not enlarged, without edema."
    assert NEGATIONS.isdisjoint(STOP_WORDS)
    assert {"no", "not", "without", "nor", "none", "never"} <= NEGATIONS
    assert {"the", "is", "and", "there"} <= STOP_WORDS


def test_stop_words_are_scikit_learns_minus_the_negations() -> None:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert STOP_WORDS == frozenset(ENGLISH_STOP_WORDS) - NEGATIONS


def test_stop_words_keep_compounds_and_contractions() -> None:
    assert clean_text("Well-expanded lungs. It isn't enlarged.", remove_stopwords=True) == (
        "Well-expanded lungs. isn't enlarged."
    )


def test_lowercase_and_stop_words_leave_mask_token_alone() -> None:
    out = clean_text("The [MASK] is seen in the Right lung", lowercase=True, remove_stopwords=True)
    assert out == "[MASK] seen right lung"
    assert clean_text("The <Mask> is", lowercase=True, protect=("<Mask>",)) == "the <Mask> is"


# ------------------------------------------------------------------------------ TextConfig
def test_text_config_defaults() -> None:
    config = TextConfig()
    assert config.sections == ["findings", "impression"]
    assert config.mask_labels and config.strip_deid and config.section_headers
    assert not config.lowercase and not config.remove_stopwords
    assert config.mask_token == "[MASK]"


def test_text_config_rejects_unknown_key_by_name() -> None:
    with pytest.raises(ValidationError) as err:
        TextConfig(sectoins=["findings"])  # type: ignore[call-arg]
    assert "sectoins" in str(err.value)


@pytest.mark.parametrize(
    ("sections", "message"),
    [([], "at least one"), (["findings", "findings"], "more than once"), (["history"], "history")],
)
def test_text_config_validates_sections(sections: list[str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TextConfig(sections=sections)


def test_text_config_validates_mask_token() -> None:
    with pytest.raises(ValidationError, match="mask_token"):
        TextConfig(mask_token=" ")


# ------------------------------------------------------------------------------ sections
def test_select_sections_order_headers_and_gaps() -> None:
    row = {"indication": "Cough", "findings": " Lungs are clear. ", "impression": "IMPRESSION: Normal.",
           "comparison": None}
    assert select_sections(row, ["impression", "findings"]) == (
        "IMPRESSION: Normal. FINDINGS: Lungs are clear."
    )
    assert select_sections(row, ["findings", "impression"], headers=False) == "Lungs are clear. Normal."
    assert select_sections(row, ["comparison"]) == ""
    assert select_sections({"findings": float("nan")}, ["findings"]) == ""
