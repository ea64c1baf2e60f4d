"""Explanations of a trained run directory (the entry points of ``cxrfuse explain``/``attribute``).

Outputs go under the run directory unless told otherwise:

* ``explain/<method>/``: one overlay PNG per (view, label), named
  ``<image id>__<label slug>__<method>.png``, and ``index.csv``;
* ``explain/<method>/scores/`` (phantom runs, ``score=True``): ``pointing_game.md``/``.csv``,
  ``cases.csv``, ``pointing_game.png``, ``deletion.png``;
* ``attribution/``: ``attribution.csv`` (per study and label), ``attribution_summary.csv``/``.md``
  and ``attribution.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrfuse.data.manifest import Manifest
from cxrfuse.explain.attribution import (
    ModalityInputs,
    ModalityMeans,
    Removal,
    modality_attribution,
    write_attribution,
)
from cxrfuse.explain.explainer import CaptionFacts, Explainer, ViewExplanation
from cxrfuse.explain.scoring import PhantomScores, score_on_phantoms, write_scores
from cxrfuse.inference import LoadedRun, load_run
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import ImageSide, RunDir, layout
from cxrfuse.vocab import FRONTAL_VIEWS, LATERAL_VIEWS, PHANTOM


def untrained_view_note(image: ImageSide, view: str,
                        trained: Mapping[str, int] | None = None) -> str | None:  # fmt: skip
    """Why no map is drawn for a view of position ``view``, or None.

    ``trained``: the view kinds the run's training read (run.json ``views.train``: frontal,
    lateral, unknown counts) where the run recorded them: a frontal or lateral view of a kind
    with no training image gets no map (unless training read views of unknown position, which
    may be of that kind). A run that recorded none falls back to its view fusion: ``frontal``
    was trained on frontal views only. A map of a kind the model never saw would show nothing
    it learned. A view of unknown position is mapped (the prediction warns about it)."""
    kind = ("frontal" if view in FRONTAL_VIEWS else "lateral" if view in LATERAL_VIEWS
            else "unknown")  # fmt: skip
    if kind == "unknown":
        return None
    if trained:
        if trained.get("unknown") or trained.get(kind):
            return None
        seen = ", ".join(f"{n} {k}" for k, n in trained.items() if n) or "no view"
        return (f"no map: this model never saw a {kind} view in training ({seen}) and was "
                f"given a {view} view; a map of it would show nothing the model learned")
    if image.views == "frontal" and kind == "lateral":
        return (f"no map: this model was trained on frontal views only and was given a {view} "
                "view; a map of it would show nothing the model learned (give a frontal view)")
    return None


def caption_facts(run: LoadedRun) -> CaptionFacts:
    """The run's val-chosen thresholds and per-label test AUROC with its bootstrap interval
    (``metrics.json``; none when the run was never evaluated), for overlay captions."""
    facts = CaptionFacts(dict(run.sidecar.thresholds), run.sidecar.threshold_method,
                         synthetic=run.info.images == PHANTOM)  # fmt: skip
    rundir = RunDir(run.run_dir)
    if not rundir.has_metrics():
        return facts
    try:
        raw = rundir.metrics()
    except CxrfuseError:
        return facts
    per_label = raw.test.per_label
    for label in run.labels:
        value = (per_label.get(label) or {}).get("auroc")
        if value is None:
            continue
        ci = raw.ci.get(f"label/{label}/auroc") or {}
        facts.auroc[label] = (float(value), ci.get("low"), ci.get("high"))
    return facts


def explainer_from_run(run_dir: str | Path, device: str = "cpu") -> tuple[Explainer, Manifest]:
    """The run's image encoder (fine-tuned or as named in ``model.json``), head and report
    embeddings, and the run's manifest. (A CLIP run explains its zero-shot scores:
    :func:`cxrfuse.clip.explain.clip_explainer`.)"""
    run = load_run(run_dir)
    if run.sidecar.image is None:
        raise CxrfuseError(
            f"{run_dir}: this run reads {run.info.modalities} only; image explanations need a "
            "model that reads images (try `cxrfuse attribute` for fused runs)"
        )
    encoder = run.image_encoder(device=device)
    texts: dict[str, Any] = {}
    if run.sidecar.text is not None:
        arrays = run.arrays()
        texts = {
            str(sid): (vec, bool(present))
            for sid, vec, present in zip(arrays.study_ids, arrays.text, arrays.text_mask)
        }
    explainer = Explainer(encoder, run.head, run.labels, output=run.output, texts=texts,
                          device=device, fit=run.sidecar.image.fit,
                          facts=caption_facts(run))  # fmt: skip
    return explainer, run.manifest()


@dataclass
class RunExplanation:
    """What :func:`explain_run` produced."""

    out_dir: Path
    maps: list[ViewExplanation]
    scores: PhantomScores | None = None
    score_files: dict[str, Path] | None = None
    warnings: list[str] | None = None
    """Studies that could not be explained, maps not shown (flat/empty), missing scales."""


def explain_run(
    run_dir: str | Path,
    *,
    studies: Sequence[str] | None = None,
    split: str = "test",
    limit: int | None = 20,
    labels: Sequence[str] | None = None,
    method: str = "gradcam",
    out_dir: str | Path | None = None,
    score: bool = False,
    score_limit: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    explainer: tuple[Explainer, Manifest] | None = None,
) -> RunExplanation:
    """Overlays for ``studies`` (ids) or the first ``limit`` studies of ``split``; with
    ``score`` (phantom runs) also the pointing-game / deletion scores on ``split``.

    ``explainer`` (explainer, manifest) replaces the run's head explainer, e.g. a CLIP run's
    zero-shot one."""
    explainer, manifest = explainer or explainer_from_run(run_dir, device=device)
    out = Path(out_dir) if out_dir else RunDir(run_dir).explain_dir(method)
    warnings: list[str] = []
    wanted = list(labels or explainer.labels)
    if not all(label in explainer.scales for label in wanted):
        explainer.calibrate(manifest, wanted, method)
        unscaled = [label for label in wanted if label not in explainer.scales]
        if unscaled:
            warnings.append(f"no run-level colour scale for {', '.join(unscaled)} (no readable "
                            "val study): those maps are drawn on their own maximum")  # fmt: skip
    maps = explainer.explain_manifest(
        manifest, studies=studies, split=None if studies else split, limit=limit, labels=labels,
        method=method, out_dir=out, progress=progress,
    )  # fmt: skip
    warnings += explainer.failures
    flat = [m for m in maps if not m.shown]
    if flat:
        warnings.append(f"{len(flat)} of {len(maps)} map(s) empty or flat, not drawn as a "
                        f"result (e.g. {flat[0].study_id} {flat[0].view} {flat[0].label}: "
                        f"{flat[0].note})")  # fmt: skip
    result = RunExplanation(out, maps, warnings=warnings)
    if score:
        result.scores = score_on_phantoms(explainer, manifest, labels=labels, method=method,
                                          split=split, limit=score_limit, progress=progress)  # fmt: skip
        result.score_files = write_scores(result.scores, out / layout.EXPLAIN_SCORES)
    return result


def attribute_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    removal: Removal = "mean",
    out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Modality attribution of every prediction of ``split`` of a fused run (training means
    from its train split); writes the table, summary and plot under ``out_dir``."""
    run = load_run(run_dir)
    inputs, _ = run.split_inputs(split)
    if "image" not in inputs or "text" not in inputs:
        raise CxrfuseError(
            f"{run_dir}: modality attribution needs a fused run (image and text); this run "
            f"reads {sorted(k for k in inputs if k in ('image', 'text'))}"
        )
    means = ModalityMeans.of_run_arrays(run.arrays()) if removal == "mean" else None
    table = modality_attribution(run.head, ModalityInputs(**inputs), run.labels,
                                 output=run.output, removal=removal, means=means,
                                 study_ids=run.split_study_ids(split))  # fmt: skip
    table.attrs["split"] = split
    out = Path(out_dir) if out_dir else run.run.attribution_dir
    title = f"Modality attribution, {run.info.name} ({split})"
    return write_attribution(table, out, title)
