"""External validation: a trained run scored on another manifest.

:func:`evaluate_external` embeds the other manifest with the run's own encoders and text
settings through the embedding store (keyed as usual, so a rerun reuses the vectors; a fitted
tf-idf is the run's, never refitted), predicts with the run's head, aligns the label
vocabularies (:mod:`~cxrfuse.evaluation.alignment`), and writes metrics with bootstrap
intervals beside the run's internal test metrics, at the thresholds chosen on the run's own
validation split. Optionally it recalibrates (Platt: logistic regression on the logit;
isotonic regression) on a seeded, patient-level part of the external set and scores the rest
before and after, with reliability diagrams. Subgroup metrics (:mod:`~.subgroups`) come with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import Manifest, label_column, label_slug, read_manifest
from cxrfuse.evaluation.alignment import LabelAlignment, align_labels
from cxrfuse.evaluation.bootstrap import bootstrap_ci
from cxrfuse.evaluation.metrics import compute_metrics
from cxrfuse.evaluation.plots import plot_reliability, plot_roc
from cxrfuse.evaluation.run import evaluate_run
from cxrfuse.evaluation.subgroups import (
    ATTRIBUTES,
    study_attributes,
    subgroup_metrics,
    subgroup_table,
)
from cxrfuse.evaluation.verdicts import baselines, run_verdicts
from cxrfuse.inference import LoadedRun, load_run
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import ExternalDir, RunDir, p_column, y_column
from cxrfuse.runtime import environment_info, now_iso
from cxrfuse.store import embed_images, embed_texts, study_level_image
from cxrfuse.text import TextConfig

Recalibration = Literal["platt", "isotonic"]
EPS = 1e-6


def q_column(label: str) -> str:
    """The external predictions column of a label's recalibrated probability."""
    return f"q__{label_slug(label)}"


# ------------------------------------------------------------------------------ embedding
def _with_mask_labels(manifest: Manifest, names: Sequence[str]) -> Manifest:
    """The manifest with (empty) label columns for ``names`` it lacks, so that text masking
    hides the run's label words as in training, and the manifest's own."""
    have = {label_column(n) for n in manifest.labels}
    extra = [n for n in dict.fromkeys(names) if label_column(n) not in have]
    df = manifest.df.copy()
    for name in extra:
        df[label_column(name)] = np.nan
    return manifest.replace(df=df, labels=[*manifest.labels, *extra], tasks={})


def embed_for_run(loaded: LoadedRun, manifest: Manifest, store_dir: str | Path,
                  progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:  # fmt: skip
    """The head's inputs for every study of ``manifest`` (keys image, image_mask, text,
    text_mask), embedded through the store with the run's encoders, and what was done."""
    inputs: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {"store": str(store_dir)}
    if loaded.sidecar.image is not None:
        images = embed_images(manifest, loaded.image_encoder(), store_dir, progress=progress)
        X, mask = study_level_image(images, manifest, loaded.config.image.views)
        inputs["image"], inputs["image_mask"] = X, mask
        facts["images"] = {"store": str(images.path), "reused": images.reused,
                           "studies_with_image": int(mask.any(axis=1).sum())}  # fmt: skip
    if loaded.sidecar.text is not None:
        spec = loaded.sidecar.text
        config = TextConfig(**spec.text_config)
        texts = embed_texts(_with_mask_labels(manifest, spec.mask_labels_for), loaded.text_encoder(),
                            config, store_dir, task=None, fit=False)  # fmt: skip
        X, mask = texts.study_matrix(manifest)
        inputs["text"], inputs["text_mask"] = X.astype(np.float32), mask.astype(bool)
        facts["texts"] = {"store": str(texts.path), "reused": texts.reused,
                          "studies_with_text": int(mask.sum())}  # fmt: skip
    return inputs, facts


# ------------------------------------------------------------------------------ recalibration
def calibration_part(patients: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the studies whose patient falls in a seeded ``fraction`` of patients."""
    if not 0 < fraction < 1:
        raise CxrfuseError(f"calibration fraction must be between 0 and 1, got {fraction}")
    unique = np.array(sorted({str(p) for p in patients}), dtype=object)
    rng = np.random.default_rng(seed)
    n = max(1, round(fraction * len(unique)))
    chosen = set(rng.permutation(unique)[:n].tolist())
    return np.array([str(p) in chosen for p in patients], dtype=bool)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def fit_calibrator(y: np.ndarray, p: np.ndarray, method: Recalibration) -> tuple[Any, str | None]:
    """A fitted non-decreasing map probability -> recalibrated probability (callable on
    arrays) and a warning. Both methods are kept monotone: where the calibration part ranks
    the label the wrong way round, Platt's slope is clipped at 0 (as isotonic regression
    does), i.e. every study gets the part's prevalence."""
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1e4).fit(_logit(p)[:, None], y.astype(int))
        if model.coef_[0, 0] <= 0:
            prevalence = float(np.mean(y))
            return (lambda q: np.full(np.shape(q), prevalence),
                    (f"Platt slope {model.coef_[0, 0]:.3f} <= 0 on the calibration part (the model "
                    f"ranks it the wrong way round): calibrated to its prevalence {prevalence:.3f}"))
        return lambda q: model.predict_proba(_logit(np.asarray(q, float))[:, None])[:, 1], None
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return lambda q: iso.predict(np.asarray(q, float)), None
    raise CxrfuseError(f"unknown recalibration {method!r}; choose platt or isotonic")


def recalibrate(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, part: np.ndarray,
                method: Recalibration, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """Per label, a calibrator fitted on the rows of ``part``: recalibrated probabilities of
    every row, the thresholds mapped through it (the same decisions), and warnings."""
    q, thr, warnings = p.copy(), thresholds.astype(float).copy(), []
    for j, name in enumerate(labels):
        known = part & ~np.isnan(y[:, j])
        if np.unique(y[known, j]).size < 2:
            warnings.append(f"{name}: the calibration part has {int(known.sum())} known labels of "
                            "one class; left uncalibrated")  # fmt: skip
            continue
        calibrator, warning = fit_calibrator(y[known, j], p[known, j], method)
        if warning:
            warnings.append(f"{name}: {warning}")
        q[:, j] = calibrator(p[:, j])
        thr[j] = float(calibrator(np.array([thresholds[j]]))[0])
    return q, thr, warnings


# ------------------------------------------------------------------------------ one external set
def internal_metrics(run: RunDir, n_boot: int | None, seed: int) -> dict[str, Any]:
    """The run's ``metrics.json`` (evaluating first, without the leakage probe, if needed)."""
    if run.has_metrics():
        return run.metrics().as_result()
    return evaluate_run(run, n_boot=n_boot, seed=seed, leakage=False)


def evaluate_external(
    run_dir: str | Path | RunDir,
    manifest: str | Path | Manifest,
    out: str | Path | None = None,
    *,
    align: Mapping[str, str] | None = None,
    recalibration: Recalibration | None = None,
    calibration_fraction: float = 0.2,
    n_boot: int | None = None,
    seed: int = 0,
    store_dir: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a run on another manifest; writes ``external.json`` / ``.md``, the predictions and
    the plots into ``out`` (default ``RUN/external/<manifest stem>/``) and returns the result."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    loaded = load_run(run)
    source = "<Manifest>" if isinstance(manifest, Manifest) else str(manifest)
    other = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    alignment = align_labels(loaded.labels, other.labels, align)
    if not alignment.pairs:
        raise DataError(f"{source}: none of its labels {other.labels} matches a label of the run "
                        f"{loaded.labels}; give a mapping (--align RUN_LABEL=EXTERNAL_LABEL)")  # fmt: skip
    name = Path(source).stem if source != "<Manifest>" else other.dataset
    target = ExternalDir(out) if out is not None else run.external_dir(name)
    internal = internal_metrics(run, n_boot, seed)
    n_boot = int(internal.get("n_boot", 1000)) if n_boot is None else n_boot
    inputs, facts = embed_for_run(loaded, other, store_dir or loaded.config.data.store, progress)
    has_input = np.zeros(len(other), dtype=bool)
    for key in ("image_mask", "text_mask"):
        if key in inputs:
            mask = inputs[key]
            has_input |= mask.any(axis=1) if mask.ndim == 2 else mask
    y = alignment.targets(other)
    keep = has_input & (~np.isnan(y)).any(axis=1)
    if not keep.any():
        raise DataError(f"{source}: no study has both an input the run reads "
                        f"({list(loaded.info.modalities)}) and a known aligned label")  # fmt: skip
    rows = np.flatnonzero(keep)
    probs = loaded.predict_proba({k: v[rows] for k, v in inputs.items()})
    index = [loaded.labels.index(p.run_label) for p in alignment.pairs]
    p, y = probs[:, index].astype(np.float64), y[rows]
    labels = alignment.run_labels
    thresholds = np.array([internal["thresholds"].get(n, 0.5) for n in labels], dtype=np.float64)
    metrics = compute_metrics(y, p, thresholds, labels)
    ci = bootstrap_ci(y, p, thresholds, labels, n_boot=n_boot, seed=seed) if n_boot else {}
    metrics["baselines"] = baselines(y, labels)  # the trivial rules on the external studies
    metrics["verdicts"] = run_verdicts(y, p, thresholds, labels, ci=ci, n_boot=n_boot, seed=seed)
    study_ids = other.df["study_id"].astype(str).to_numpy()[rows]
    patients = other.df["patient_id"].astype(str).to_numpy()[rows]
    target.plots_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_roc(y, {"external": p}, labels, target.plot(0), title=f"ROC on {name}")]
    attributes = study_attributes(other, study_ids)
    subgroups = subgroup_metrics(y, p, thresholds, labels, attributes, n_boot=min(n_boot, 200),
                                 seed=seed, plot_path=target.subgroup_plot)  # fmt: skip
    frame = pd.DataFrame({"study_id": study_ids, "patient_id": patients})
    for j, label in enumerate(labels):
        frame[y_column(label)], frame[p_column(label)] = y[:, j], p[:, j]
    result: dict[str, Any] = {
        "run": loaded.info.name, "run_dir": str(run.path), "manifest": source,
        "dataset": other.dataset, "images": other.images,
        "alignment": alignment.to_dict(), "labels": labels,
        "studies": {"in_manifest": len(other), "scored": int(keep.sum()),
                    "without_input": int((~has_input).sum()),
                    "without_aligned_label": int((has_input & ~keep).sum())},
        "embedding": facts, "thresholds": dict(zip(labels, thresholds.tolist())),
        "threshold_method": internal.get("threshold_method"), "n_boot": n_boot, "bootstrap_seed": seed,
        "external": metrics, "ci": ci, "internal": _internal_block(internal, labels),
        "side_by_side": side_by_side(internal, metrics, ci, labels),
        "subgroups": subgroups, "image_overlap": image_overlap(loaded, other, None if source == "<Manifest>" else source),
        "evaluated": now_iso(), "environment": environment_info(),
    }  # fmt: skip
    if recalibration is not None:
        result["recalibration"] = _recalibration(y, p, thresholds, patients, labels, recalibration,
                                                 calibration_fraction, seed, n_boot, target, frame)  # fmt: skip
        plots += [Path(x) for x in result["recalibration"]["plots"]]
    subgroups["plots"] = [str(Path(x).relative_to(target.path)) for x in subgroups["plots"]]
    result["plots"] = [str(Path(x).relative_to(target.path)) for x in plots] + subgroups["plots"]
    target.write(result, external_markdown(result), frame)
    result["out"] = str(target.path)
    return result


def image_overlap(loaded: LoadedRun, other: Manifest, other_path: str | Path | None = None) -> dict[str, Any]:
    """How many images of ``other`` occur in the run's training data (train + val of its
    manifest): ``{exact, near, total, found, by_split, examples, ...}``
    (:func:`~cxrfuse.data.image_hashes.cross_overlap`); hashes a manifest lacks are computed
    now, kept in the hash cache next to each manifest (``other``'s only when ``other_path`` is
    given). ``skipped`` (with null counts) when the training manifest is gone or has no images."""
    from cxrfuse.data.image_hashes import add_image_hashes, cache_path_for, cross_overlap

    path = Path(loaded.config.data.manifest)
    empty = {"exact": None, "near": None, "total": None, "found": False}
    if loaded.sidecar.image is None:
        return {**empty, "skipped": "the run reads no images"}
    try:
        training = read_manifest(path)
    except DataError as err:
        return {**empty, "skipped": f"the run's training manifest cannot be read ({err})"}
    if not training.has_images().any() or not other.has_images().any():
        return {**empty, "skipped": "no images on disk in the run's training manifest or the external one"}
    training, _ = add_image_hashes(training, cache=cache_path_for(path))
    other, _ = add_image_hashes(other, cache=cache_path_for(other_path) if other_path else None)
    result = cross_overlap(other, training)
    result["training_manifest"] = str(path)
    result["found"] = bool(result["exact"] or result["near"])
    return result


def overlap_message(overlap: Mapping[str, Any]) -> str:
    """One sentence on the external images found in the run's training data."""
    if overlap.get("skipped"):
        return f"Image overlap with the training data not checked: {overlap['skipped']}."
    splits = " + ".join(overlap["training_splits"])
    by = ", ".join(f"{s} {b['exact']} exact / {b['near']} near" for s, b in overlap["by_split"].items())
    head = (f"{overlap['exact']} exact and {overlap['near']} near-duplicate images of the "
            f"{overlap['total']} external images occur in the run's training data ({splits}; by split: {by})")
    if not overlap["found"]:
        return f"Image overlap: none: {head}."
    return (f"IMAGE OVERLAP: {head}: these studies are not external; the external metrics "
            "overstate how the model does on unseen images.")


def _internal_block(internal: Mapping[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    test = internal.get("test", {})
    return {"headline": test.get("headline", {}),
            "per_label": {n: {k: test.get("per_label", {}).get(n, {}).get(k)
                              for k in ("n", "positives", "auroc", "auprc", "f1", "recall", "ece")}
                          for n in labels}}  # fmt: skip


def side_by_side(internal: Mapping[str, Any], external: Mapping[str, Any], ci: Mapping[str, Any],
                 labels: Sequence[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Per scored label (and the macro average): internal test vs external AUROC, F1, ECE."""
    rows = []
    test = internal.get("test", {}).get("per_label", {})
    icis = internal.get("ci", {})
    for name in labels:
        ext, own = external["per_label"][name], test.get(name, {})
        rows.append({"label": name, "internal_n": own.get("n"), "external_n": ext["n"],
                     "external_positives": ext["positives"],
                     **{f"{side}_{m}": v for m in ("auroc", "f1", "ece")
                        for side, v in (("internal", own.get(m)), ("external", ext[m]))},
                     "internal_auroc_ci": [icis.get(f"label/{name}/auroc", {}).get(k) for k in ("low", "high")],
                     "external_auroc_ci": [ci.get(f"label/{name}/auroc", {}).get(k) for k in ("low", "high")]})  # fmt: skip
    return rows


def _recalibration(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray, patients: np.ndarray,
                   labels: Sequence[str], method: Recalibration, fraction: float, seed: int,
                   n_boot: int, target: ExternalDir, frame: pd.DataFrame) -> dict[str, Any]:  # fmt: skip
    part = calibration_part(patients, fraction, seed)
    rest = ~part
    if not rest.any():
        raise CxrfuseError(f"calibration fraction {fraction} leaves no study to evaluate on")
    q, q_thresholds, warnings = recalibrate(y, p, thresholds, part, method, labels)
    before = compute_metrics(y[rest], p[rest], thresholds, labels)
    after = compute_metrics(y[rest], q[rest], q_thresholds, labels)
    ci_after = bootstrap_ci(y[rest], q[rest], q_thresholds, labels, n_boot=n_boot, seed=seed) if n_boot else {}
    frame["calibration_part"] = part
    for j, label in enumerate(labels):
        frame[q_column(label)] = q[:, j]
    plots = [plot_reliability(before["per_label"], target.plot(1), title="Reliability before recalibration"),
             plot_reliability(after["per_label"], target.plot(2), title=f"Reliability after {method} recalibration")]
    return {"method": method, "fraction": fraction, "seed": seed,
            "calibration_studies": int(part.sum()), "calibration_patients": len(set(patients[part])),
            "evaluation_studies": int(rest.sum()), "thresholds_after": dict(zip(labels, q_thresholds.tolist())),
            "before": before, "after": after, "ci_after": ci_after, "warnings": warnings,
            "plots": [str(x) for x in plots]}  # fmt: skip


# ------------------------------------------------------------------------------ Markdown
def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _ci(pair: Sequence[Any] | None) -> str:
    return "" if not pair or pair[0] is None else f" [{pair[0]:.3f}, {pair[1]:.3f}]"


def alignment_frame(alignment: Mapping[str, Any]) -> pd.DataFrame:
    """The alignment as a table: pairs first, then the labels without a counterpart."""
    return pd.DataFrame(LabelAlignment.from_dict(alignment).table())


def side_by_side_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{
        "label": r["label"], "internal AUROC [95 % CI]": _f(r["internal_auroc"]) + _ci(r["internal_auroc_ci"]),
        "external AUROC [95 % CI]": _f(r["external_auroc"]) + _ci(r["external_auroc_ci"]),
        "internal F1": _f(r["internal_f1"]), "external F1": _f(r["external_f1"]),
        "internal ECE": _f(r["internal_ece"]), "external ECE": _f(r["external_ece"]),
        "external studies (positives)": f"{r['external_n']} ({r['external_positives']})",
    } for r in rows])  # fmt: skip


def recalibration_frame(block: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name in block["before"]["per_label"]:
        b, a = block["before"]["per_label"][name], block["after"]["per_label"][name]
        rows.append({"label": name, "ECE before": _f(b["ece"]), "ECE after": _f(a["ece"]),
                     "AUROC before": _f(b["auroc"]), "AUROC after": _f(a["auroc"]),
                     "F1 before": _f(b["f1"]), "F1 after": _f(a["f1"])})  # fmt: skip
    return pd.DataFrame(rows)


def external_markdown(result: Mapping[str, Any]) -> str:
    """``external.md``: alignment, internal vs external, subgroups, recalibration."""
    s = result["studies"]
    overlap = result.get("image_overlap")
    lines = [
        f"# External validation of {result['run']} on {result['dataset']}", "",
        *([f"**{overlap_message(overlap)}**" if overlap.get("found") else overlap_message(overlap), ""]
          if overlap else []),
        (f"Manifest `{result['manifest']}` ({result['images']} images): {s['in_manifest']} studies, "
        f"{s['scored']} scored ({s['without_input']} without an input the run reads, "
        f"{s['without_aligned_label']} without a known aligned label). Thresholds: the run's, chosen "
        f"on its own validation split ({result['threshold_method']}); intervals: {result['n_boot']} "
        "bootstrap resamples of the external studies."), "",
        "## Label alignment", "",
        alignment_frame(result["alignment"]).to_markdown(index=False), "",
        "## Internal test vs external", "",
        side_by_side_frame(result["side_by_side"]).to_markdown(index=False), "",
    ]  # fmt: skip
    lines += [f"> **Warning:** {v['message']} (external set)\n"
              for v in result["external"].get("verdicts", [])]  # fmt: skip
    table = subgroup_table(result["subgroups"])
    if len(table):
        lines += [f"## Subgroups ({', '.join(a for a in ATTRIBUTES if a in result['subgroups']['attributes'])})",
                  "", subgroup_intro(result["subgroups"]), "", table.to_markdown(index=False), ""]  # fmt: skip
    if "recalibration" in result:
        r = result["recalibration"]
        lines += ["## Recalibration", "",
                  (f"{r['method']} fitted on {r['calibration_studies']} studies of "
                  f"{r['calibration_patients']} patients (a seeded {r['fraction']:.0%} of the patients, "
                  f"seed {r['seed']}), scored on the other {r['evaluation_studies']} studies; thresholds "
                  "mapped through the calibrator."), "",
                  recalibration_frame(r).to_markdown(index=False), ""]  # fmt: skip
        lines += [f"- {w}" for w in r["warnings"]]
    return "\n".join(lines) + "\n"


def subgroup_intro(subgroups: Mapping[str, Any]) -> str:
    """The paragraph above a subgroup table."""
    return SUBGROUP_INTRO.format(overall=_f(subgroups["overall"]["auroc"]),
                                 min_class=subgroups.get("min_class", 10))  # fmt: skip


SUBGROUP_INTRO = (
    "AUROC with its bootstrap interval and the gap to the overall {overall}; the "
    "false-negative rate (FN / positives) per label at the val-chosen threshold (underdiagnosis, "
    "Seyyed-Kalantari et al. 2021); ECE of the labels pooled. 'small': fewer than {min_class} "
    "positives or {min_class} negatives of some label (the rarer class): read the figures with care."
)
