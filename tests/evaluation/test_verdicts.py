"""The verdict rules on synthetic arrays: each fires where its condition holds and not where it
does not; baselines are the trivial rules' exact metrics; the typed model refuses a bad kind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from cxrfuse.evaluation import bootstrap_ci
from cxrfuse.evaluation.ablation import shuffle_sensitivity
from cxrfuse.evaluation.verdicts import (
    baselines,
    experiment_conclusion,
    paired_verdict,
    run_conclusion,
    run_verdicts,
)
from cxrfuse.rundir import Metrics


def kinds(verdicts: list[dict], label: str | None = "a") -> set[str]:
    return {v["kind"] for v in verdicts if v["label"] == label}


def verdicts_of(y: np.ndarray, p: np.ndarray, threshold: float, **kwargs) -> list[dict]:
    ci = bootstrap_ci(y[:, None], p[:, None], threshold, ["a"], n_boot=300, seed=0)
    return run_verdicts(y[:, None], p[:, None], np.array([threshold]), ["a"], ci=ci,
                        n_boot=300, **kwargs)  # fmt: skip


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_baselines_are_the_trivial_rules_metrics(rng: np.random.Generator) -> None:
    y = (rng.random(200) < 0.84).astype(float)
    y[:5] = np.nan
    base = baselines(y[:, None], ["a"])["a"]
    known = y[~np.isnan(y)].astype(int)
    ones, zeros = np.ones_like(known), np.zeros_like(known)
    assert base["n"] == 195 and base["positives"] == known.sum()
    assert base["prevalence"] == pytest.approx(known.mean())
    assert base["always_positive"]["f1"] == pytest.approx(f1_score(known, ones))
    assert base["always_positive"]["accuracy"] == pytest.approx(accuracy_score(known, ones))
    assert base["always_negative"]["accuracy"] == pytest.approx(accuracy_score(known, zeros))
    assert base["always_negative"]["f1"] == 0.0 and base["chance_auroc"] == 0.5


def test_chance_fires_on_noise_and_not_on_a_ranking_model(rng: np.random.Generator) -> None:
    y = (np.arange(120) % 2).astype(float)
    noise = np.linspace(0.2, 0.8, 120)  # AUROC 0.49: positives and negatives interleaved
    fired = verdicts_of(y, noise, 0.5)
    assert "chance" in kinds(fired)
    message = next(v["message"] for v in fired if v["kind"] == "chance")
    assert "not distinguishable from chance" in message and "includes 0.5" in message
    good = np.clip(0.3 * y + 0.7 * rng.random(120), 0, 1)
    assert "chance" not in kinds(verdicts_of(y, good, 0.5))
    # no bootstrap: DeLong's interval decides
    plain = run_verdicts(y[:, None], noise[:, None], np.array([0.5]), ["a"], n_boot=0)
    chance = next(v["message"] for v in plain if v["kind"] == "chance")
    assert "DeLong" in chance


def test_trivial_fires_when_f1_equals_always_positive(rng: np.random.Generator) -> None:
    """84 % prevalence, every probability above the threshold: F1 0.91 = always-abnormal's."""
    y = (rng.random(150) < 0.84).astype(float)
    p = 0.70 + 0.14 * rng.random(150)
    fired = verdicts_of(y, p, 0.6)
    assert {"trivial", "chance"} <= kinds(fired)
    good = np.clip(0.6 * y + 0.4 * rng.random(150), 0, 1)
    assert "trivial" not in kinds(verdicts_of(y, good, 0.5))


def test_trivial_needs_the_interval_not_only_the_point(rng: np.random.Generator) -> None:
    """A point F1 a little above always-positive's on few studies is still trivial."""
    y = np.r_[np.ones(20), np.zeros(20)]
    p = np.r_[np.full(20, 0.9), np.full(3, 0.2), np.full(17, 0.9)]  # 3 negatives right
    f1 = f1_score(y, p >= 0.5)
    always = baselines(y[:, None], ["a"])["a"]["always_positive"]["f1"]
    assert f1 > always
    assert "trivial" in kinds(verdicts_of(y, p, 0.5))
    assert "trivial" not in kinds(run_verdicts(y[:, None], p[:, None], np.array([0.5]), ["a"],
                                               n_boot=0))  # fmt: skip


def test_constant_fires_on_flat_predictions_and_on_a_first_best_epoch(
    rng: np.random.Generator,
) -> None:
    y = (rng.random(200) < 0.3).astype(float)
    flat = 0.7 + 0.01 * rng.random(200)
    assert "constant" in kinds(verdicts_of(y, flat, 0.5))
    # a confident model of a rare label: interquartile range ~0, not constant
    rare = (rng.random(400) < 0.05).astype(float)
    confident = np.where(rare == 1, 0.95, 0.001) + 0.001 * rng.random(400)
    assert np.subtract(*np.percentile(confident, [75, 25])) < 0.05
    assert "constant" not in kinds(verdicts_of(rare, confident, 0.5))
    good = np.clip(0.5 * y + 0.5 * rng.random(200), 0, 1)
    first = verdicts_of(y, good, 0.5, fit={"best_epoch": 0, "epochs_run": 6})
    assert "constant" in kinds(first, None) and "first epoch" in first[-1]["message"]
    assert "constant" not in kinds(verdicts_of(y, good, 0.5, fit={"best_epoch": 3,
                                                                  "epochs_run": 6}), None)


def test_small_val_counts_the_rarer_class(rng: np.random.Generator) -> None:
    y = (rng.random(200) < 0.5).astype(float)
    good = np.clip(0.5 * y + 0.5 * rng.random(200), 0, 1)
    few_normals = np.r_[np.ones(60), np.zeros(5)]
    fired = verdicts_of(y, good, 0.5, y_val=few_normals, threshold_method="f1")
    assert kinds(fired) == {"small_val"} and "5 negative" in fired[0]["message"]
    enough = np.r_[np.ones(60), np.zeros(10)]
    assert not verdicts_of(y, good, 0.5, y_val=enough, threshold_method="f1")
    assert not verdicts_of(y, good, 0.5, y_val=few_normals, threshold_method=0.5)


def test_paired_verdict_claims_only_on_an_interval_excluding_zero() -> None:
    helps = paired_verdict({"diff": 0.05, "low": 0.01, "high": 0.09, "p": 0.01}, 500, "fusion adds")
    unclear = paired_verdict({"diff": 0.006, "low": -0.01, "high": 0.02, "p": 0.52}, 63,
                             "fusion adds")  # fmt: skip
    worse = paired_verdict({"diff": -0.05, "low": -0.09, "high": -0.01, "p": 0.02}, 500, "x")
    assert helps["status"] == "evidence" and worse["status"] == "against"
    assert unclear["status"] == "unclear" and "too few studies to tell" in unclear["text"]
    assert "+0.006 AUROC [-0.010, +0.020], p = 0.52 on 63" in unclear["text"]


def test_conclusions_say_chance_and_trivial_in_words(rng: np.random.Generator) -> None:
    y = (rng.random(150) < 0.84).astype(float)
    p = 0.70 + 0.14 * rng.random(150)
    ci = bootstrap_ci(y[:, None], p[:, None], 0.6, ["abnormal"], n_boot=300)
    from cxrfuse.evaluation import compute_metrics

    metrics = {"labels": ["abnormal"], "ci": ci,
               "test": compute_metrics(y[:, None], p[:, None], 0.6, ["abnormal"])}  # fmt: skip
    metrics["test"]["baselines"] = baselines(y[:, None], ["abnormal"])
    metrics["test"]["verdicts"] = run_verdicts(y[:, None], p[:, None], np.array([0.6]),
                                               ["abnormal"], ci=ci, n_boot=300)  # fmt: skip
    text = run_conclusion(metrics)
    assert "not distinguishable from chance" in text and "no better than always-positive" in text
    evaluation = {"settings": [{"setting": "all runs", "best_unimodal": "Image", "paired": [
        {"seed": 0, "studies": 63, "bootstrap": {"auroc": {"diff": 0.006, "low": -0.01,
                                                           "high": 0.02, "p": 0.52}}}]}]}  # fmt: skip
    text = experiment_conclusion(evaluation, {"image-seed0": metrics})
    assert text.startswith("Fusion adds +0.006 AUROC [-0.010, +0.020] over image alone")
    assert "no evidence that it helps" in text and "not distinguishable from chance" in text


def test_metrics_model_types_the_verdicts() -> None:
    raw = {"run": "r", "labels": ["a"], "modalities": ["image"], "threshold_method": "f1",
           "thresholds": {"a": 0.5}, "n_boot": 0, "val": {},
           "test": {"verdicts": [{"label": "a", "kind": "chance", "message": "m"}]}}  # fmt: skip
    assert Metrics.model_validate(raw).verdicts[0].kind == "chance"
    raw["test"]["verdicts"][0]["kind"] = "bad luck"
    with pytest.raises(ValueError, match="kind"):
        Metrics.model_validate(raw)


def test_shuffle_drop_interval_claims_use_only_on_evidence(rng: np.random.Generator) -> None:
    n = 200
    y = (rng.random(n) < 0.5).astype(float)[:, None]
    inputs = {"image": y + 0.3 * rng.normal(size=(n, 1)), "text": rng.normal(size=(n, 1))}

    def predict(batch: dict) -> np.ndarray:
        return 1 / (1 + np.exp(-(3 * batch["image"] - 1.5 + 0.01 * batch["text"])))

    used = shuffle_sensitivity(predict, inputs, y, "image", repeats=3, n_boot=200)
    ignored = shuffle_sensitivity(predict, inputs, y, "text", repeats=3, n_boot=200)
    assert used["drop"]["auroc"]["status"] == "evidence" and used["drop"]["auroc"]["low"] > 0
    assert ignored["drop"]["auroc"]["status"] == "unclear"
    assert ignored["drop"]["auroc"]["low"] <= 0 <= ignored["drop"]["auroc"]["high"]


def test_a_model_trained_on_noise_gets_chance_verdicts_banners_and_printed_lines(
    small_manifest, tmp_path, capsys
) -> None:
    """Synthetic variant of the real-radiograph test: SGD heads on label-free embeddings of
    900 bundled IU studies are at chance; metrics.json, report.html/md and `cxrfuse evaluate`
    say so, and a model trained on informative embeddings gets no chance verdict."""
    from rundirs import LABELS, build_run
    from typer.testing import CliRunner

    from cxrfuse.cli import app
    from cxrfuse.evaluation import evaluate_run
    from cxrfuse.reporting import write_report

    noise = build_run(tmp_path, small_manifest, ["image"], 0, name="noise", signal=0.0)
    signal = build_run(tmp_path, small_manifest, ["image"], 0, name="signal")
    result = evaluate_run(noise, "f1", 300, 0, leakage=False, plots=False)
    metrics = json.loads((noise / "metrics.json").read_text())
    assert set(metrics["test"]["baselines"]) == set(LABELS)
    for label in LABELS:
        ci = metrics["ci"][f"label/{label}/auroc"]
        holds = ci["low"] <= 0.5 <= ci["high"]
        assert holds == ("chance" in kinds(metrics["test"]["verdicts"], label))
    assert "chance" in {v["kind"] for v in result["test"]["verdicts"]}
    good = evaluate_run(signal, "f1", 300, 0, leakage=False, plots=False)
    assert "chance" not in {v["kind"] for v in good["test"]["verdicts"]}
    html_path, md_path = write_report(noise)
    html = html_path.read_text()
    overview = html[: html.index("Test metrics at val-chosen thresholds")]
    assert "Conclusion." in overview and 'class="warning"' in overview
    assert "not distinguishable from chance" in overview
    assert "always positive" in html and "F1 always positive" in html
    assert "not distinguishable from chance" in md_path.read_text()
    printed = CliRunner().invoke(app, ["evaluate", str(noise), "--n-boot", "300", "--no-leakage"])
    assert printed.exit_code == 0, printed.output
    assert "chance:" in printed.output and "always positive" in printed.output


def test_leakage_warning_needs_the_paired_interval_above_zero() -> None:
    """The issue's case: probe 0.695 vs 0.575 on 63 test studies, interval across 0: a note
    "too few studies to tell" with n, no red warning; the same gap with an interval above 0
    warns."""
    from cxrfuse.evaluation.ablation import leakage_reading

    macro = {"chosen": 0.695, "indication": 0.575}
    warning, note, conclusion = leakage_reading(
        macro, {"diff": 0.12, "low": -0.04, "high": 0.27}, 63, "indication+comparison")
    assert warning is None and "too few studies to tell" in note and "n = 63" in note
    assert "too few studies to tell" in conclusion
    warning, note, _ = leakage_reading(macro, {"diff": 0.12, "low": 0.03, "high": 0.21}, 630, "x")
    assert "still carries the label" in warning and note is None
    warning, note, _ = leakage_reading({"chosen": 0.60, "indication": 0.58},
                                       {"diff": 0.02, "low": -0.05, "high": 0.09}, 63, "x")
    assert warning is None and "no evidence" in note
