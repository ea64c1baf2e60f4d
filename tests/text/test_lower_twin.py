"""The fast path of masking and the audit (lower-cased ASCII text, case-sensitive twins of the
patterns, grouped first-character dispatch) finds exactly what the case-insensitive patterns
find on the original text, including mixed case, non-ASCII texts in the same block (searched
the slow way) and terms at the edges of texts and blocks."""

from __future__ import annotations

import re

import pytest

from cxrfuse.text.audit import _candidates, _Corpus
from cxrfuse.text.mask import (
    SEPARATOR,
    _all_terms,
    compile_terms,
    lower_twin,
    mask_label_mentions,
    mask_many,
    terms_source,
)

TEXTS = [
    "PNEUMOTHORAX. Heart Size Is Normal",  # terms at both ends of the first text
    "No Pleural Effusion, no pneumothorax or CONSOLIDATION.",
    "",
    "Small Right PLEURAL effusion and Mild Cardiomegaly",
    "Kerley B lines; \u212aerley b lines (Kelvin sign).",  # non-ASCII: folds to k only under IGNORECASE
    "Heart size is normal. Caf\u00e9 au lait; no acute cardiopulmonary process.",
    "ATELECTASIS\u00a0at the bases; lungs are clear.",  # a no-break space
    "Lungs are CLEAR. No [mask] here, [MASK] and [Mask].",
    "\u0130nfiltrate? PNEUMON\u0130A; pneumonia; Stable chest.",  # dotless/dotted i
    "lung lesion; LUNG-LESIONS; lung  lesions",
    "edema",  # a term as the whole last text
]

LABEL_SETS = [["Pneumothorax"], ["Pleural Effusion", "Atelectasis"], ["No Finding"],
              ["Edema", "Lung Lesion", "Pneumonia", "Cardiomegaly"], ["abnormal"]]


@pytest.mark.parametrize("labels", LABEL_SETS)
@pytest.mark.parametrize("token", ["[MASK]", "<LBL>", "[mask]"])
def test_mask_many_matches_per_text_masking(labels: list[str], token: str) -> None:
    expected = [mask_label_mentions(t, labels, token=token) for t in TEXTS]
    assert mask_many(TEXTS, labels, token=token) == expected
    # every block boundary: each text first, last and alone
    for i in range(len(TEXTS)):
        assert mask_many(TEXTS[i:] + TEXTS[:i], labels, token=token) == expected[i:] + expected[:i]
    assert any(token in t for t in expected)


def test_non_ascii_text_is_masked_case_insensitively() -> None:
    out = mask_many(TEXTS, ["Edema"])
    assert out[4] == "[MASK]; [MASK] (Kelvin sign)."  # the Kelvin-sign K folds to k


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_corpus_matches_and_candidates_equal_case_insensitive_search(labels: list[str]) -> None:
    terms = _all_terms(tuple(labels))
    pattern = compile_terms(terms)
    expected = [(i, m.group(0).lower()) for i, t in enumerate(TEXTS) for m in pattern.finditer(t)]
    owners, found = _Corpus(TEXTS).matches(terms)
    assert list(zip(owners.tolist(), [f.lower() for f in found])) == expected
    assert _candidates(TEXTS, list(terms)) == sorted({i for i, _ in expected})
    ascii_only = [t for t in TEXTS if t.isascii()]
    assert _candidates(ascii_only, list(terms)) == sorted(
        {i for i, t in enumerate(ascii_only) if pattern.search(t)})
    subset = [1, 4, 8]
    owners, _ = _Corpus(TEXTS, subset).matches(terms)
    assert owners.tolist() == [i for i, _ in expected if i in subset]


def test_lower_twin_refuses_patterns_that_could_differ() -> None:
    assert lower_twin(r"(?<!\w)abc(?!\w)") is not None
    for source in [r"ABC", r"a[A-Z]", r"\x41", "\u017f", r"[^A]", r"(?i:x)Y", r"a(?-i:b)"]:
        assert lower_twin(source) is None, source
    twin = lower_twin(terms_source(_all_terms(("No Finding",))))
    assert twin is not None and twin.flags & re.IGNORECASE == 0


def test_separator_text_falls_back() -> None:
    texts = ["no pneumothorax", f"a{SEPARATOR}pneumothorax"]
    assert mask_many(texts, ["Pneumothorax"]) == [mask_label_mentions(t, ["Pneumothorax"]) for t in texts]
