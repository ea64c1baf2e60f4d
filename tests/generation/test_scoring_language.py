"""Language metrics: R2Gen normalisation, values against direct pycocoevalcap calls, METEOR."""

from __future__ import annotations

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.cider.cider_scorer import CiderScorer
from pycocoevalcap.rouge.rouge import Rouge

from cxrfuse.generation import language
from cxrfuse.generation.language import java_available, language_scores, normalise_report
from cxrfuse.problems import DataError

GENERATED = {
    "a": "The heart is normal in size. The lungs are clear.",
    "b": "Mild cardiomegaly. No pleural effusion or pneumothorax.",
    "c": "1. Small left pleural effusion. 2. No pneumothorax.",
    "d": "Heart size normal; lungs clear!",
    "e": "There is a right upper lobe opacity (likely pneumonia).",
}
REFERENCES = {
    "a": ["The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."],
    "b": ["The heart is mildly enlarged. There is no pleural effusion.",
          "Mild cardiomegaly without effusion or pneumothorax."],
    "c": ["Small left pleural effusion. No pneumothorax. Heart size normal."],
    "d": ["The lungs are clear. Heart size is normal."],
    "e": ["Right upper lobe consolidation concerning for pneumonia."],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The heart is normal. No effusion.", "the heart is normal . no effusion ."),
        ("1. No acute disease. 2. Stable cardiomegaly.", "no acute disease . stable cardiomegaly ."),
        ("Heart size: normal (stable), lungs clear!", "heart size normal stable lungs clear ."),
        ("Patient's x-ray.. Unremarkable", "patients x-ray . unremarkable ."),
        ("Nodule >5 mm @ apex", "nodule 5 mm apex ."),  # R2Gen's class ':-\[' also drops < = > @
        ("Heart normal.\nLungs clear.", "heart normal lungs clear ."),  # iu_xray: no split at ".\n"
        ("", ""),
    ],
)
def test_normalise_report_iu(text: str, expected: str) -> None:
    assert normalise_report(text) == expected


def test_normalise_report_mimic_style() -> None:
    assert normalise_report("Heart normal.\nLungs  clear...", style="mimic_cxr") == "heart normal . lungs clear ."
    with pytest.raises(Exception, match="style"):
        normalise_report("x", style="r2gen")


def _normalised(gen: dict, refs: dict) -> tuple[dict, dict]:
    return ({k: [normalise_report(v)] for k, v in gen.items()},
            {k: [normalise_report(r) for r in v] for k, v in refs.items()})


def test_values_equal_direct_pycocoevalcap() -> None:
    out = language_scores(GENERATED, REFERENCES, n_boot=0, meteor=False)
    res, gts = _normalised(GENERATED, REFERENCES)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        assert out[f"bleu_{k + 1}"]["value"] == pytest.approx(bleu[k], abs=1e-12)
    assert out["rouge_l"]["value"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert out["cider"]["value"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert out["meteor"] is None and "switched off" in out["notes"][0]
    assert out["bleu_1"]["low"] is None  # n_boot=0: no interval
    assert out["n_studies"] == 5 and out["normalisation"] == "R2Gen clean_report_iu_xray"
    assert 0 < out["bleu_4"]["value"] < out["bleu_1"]["value"] < 1


def test_replicates_equal_pycocoevalcap_on_resampled_lists() -> None:
    res, gts = _normalised(GENERATED, REFERENCES)
    ids = list(GENERATED)
    rows = [np.array([0, 0, 1, 4, 2]), np.array([3, 3, 3, 1, 0]), np.array([4, 2, 2, 1, 1])]
    weights = np.stack([np.bincount(r, minlength=len(ids)) for r in rows]).astype(float)
    _, bleu, sentence_bleu = language._bleu(gts, res, ids, weights)
    _, cider, study_cider = language._cider(gts, res, ids, weights)
    _, rouge, study_rouge = language._rouge(gts, res, ids, weights)
    for row, r in zip(rows, rouge):
        assert r == pytest.approx(study_rouge[row].mean(), abs=1e-12)
    for j, i in enumerate(ids):  # per-study scores: pycocoevalcap's own per-study lists
        one = BleuScorer(n=4)
        one += (res[i][0], gts[i])
        assert sentence_bleu[j] == pytest.approx(one.compute_score(option="closest")[1][3][0], abs=1e-12)
    assert study_cider.mean() == pytest.approx(language._cider(gts, res, ids, weights[:0])[0], abs=1e-12)
    for row, b, c in zip(rows, bleu, cider):
        bs, cs = BleuScorer(n=4), CiderScorer(n=4, sigma=6.0)
        for j in row:
            bs += (res[ids[j]][0], gts[ids[j]])
            cs += (res[ids[j]][0], gts[ids[j]])
        assert b == pytest.approx(bs.compute_score(option="closest")[0], abs=1e-12)
        assert c == pytest.approx(cs.compute_score()[0], abs=1e-12)


def test_intervals_contain_point_and_are_seeded() -> None:
    refs = {f"s{i}": [REFERENCES[k][0]] for i, k in enumerate(list(REFERENCES) * 8)}
    gen = {f"s{i}": GENERATED[k] for i, k in enumerate(list(GENERATED) * 8)}
    for i in range(0, 40, 3):  # vary the studies so the replicates differ
        gen[f"s{i}"] = "No acute cardiopulmonary abnormality."
    a = language_scores(gen, refs, n_boot=60, seed=1, meteor=False)
    b = language_scores(gen, refs, n_boot=60, seed=1, meteor=False)
    c = language_scores(gen, refs, n_boot=60, seed=2, meteor=False)
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert a[key]["low"] < a[key]["value"] < a[key]["high"], key
        assert a[key] == b[key]
    assert a["cider"] != c["cider"]


def test_ids_must_match() -> None:
    with pytest.raises(DataError, match="1 generated id"):
        language_scores({**GENERATED, "x": "text"}, REFERENCES, n_boot=0, meteor=False)
    with pytest.raises(DataError, match="reference id"):
        language_scores({"a": GENERATED["a"]}, REFERENCES, n_boot=0, meteor=False)
    with pytest.raises(DataError, match="every reference text is empty"):
        language_scores({"a": "x"}, {"a": ["  "]}, n_boot=0, meteor=False)


def test_meteor_missing_java_is_none_with_reason(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on this PATH
    assert not java_available()
    out = language_scores(GENERATED, REFERENCES, n_boot=5)
    assert out["meteor"] is None
    assert any("java" in note for note in out["notes"])


def test_java_available_follows_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(language.shutil, "which", lambda name: None)
    assert not java_available()
    assert language_scores(GENERATED, REFERENCES, n_boot=0)["meteor"] is None


@pytest.mark.skipif(not java_available(), reason="METEOR needs java")
def test_meteor_equals_pycocoevalcap_and_bootstraps(monkeypatch: pytest.MonkeyPatch) -> None:
    from pycocoevalcap.meteor import meteor as meteor_module

    from cxrfuse.generation.bootstrap import estimate, replicate_weights, resample_indices

    res, gts = _normalised(GENERATED, REFERENCES)
    ids = list(GENERATED)
    direct = meteor_module.Meteor()  # one Java process for everything (it takes seconds to start)
    expected_point, expected_segments = direct.compute_score(gts, res)
    rows = [row for chunk in resample_indices(len(ids), 4, seed=7) for row in chunk]
    counted = np.stack([np.bincount(r, minlength=len(ids)) for r in rows])
    assert (counted == replicate_weights(len(ids), 4, seed=7)).all()  # the replicates scored
    expected = []
    for row in rows:  # the corpus METEOR of each resampled list, straight from pycocoevalcap
        g = {str(k): gts[ids[j]] for k, j in enumerate(row)}
        r = {str(k): res[ids[j]] for k, j in enumerate(row)}
        expected.append(direct.compute_score(g, r)[0])
    monkeypatch.setattr(meteor_module, "Meteor", lambda: direct)
    out = language_scores(GENERATED, REFERENCES, n_boot=4, seed=7)
    assert out["meteor"]["value"] == pytest.approx(expected_point, abs=1e-12)
    want = estimate(expected_point, np.array(expected))
    assert out["meteor"]["low"] == pytest.approx(want["low"], abs=1e-12)
    assert out["meteor"]["high"] == pytest.approx(want["high"], abs=1e-12)
    assert 0 < expected_point < 1 and not out["notes"]
    assert out["_per_study"]["meteor"].shape == (len(ids),)
    assert list(expected_segments) == pytest.approx(list(out["_per_study"]["meteor"]), abs=1e-12)
