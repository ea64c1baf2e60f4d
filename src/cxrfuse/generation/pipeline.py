"""The generation stage end to end, as ``cxrfuse generate`` runs it: a generator writes
reports for a split, the shortcut baselines are drawn from the training split for the same
studies, and everything is labelled, scored and written into one generation directory.

* :func:`generate_retrieval`: retrieval from an embedding store or a CLIP run;
* :func:`generate_with_vlm`: a vision-language model (zero-shot or with a LoRA adapter),
  optionally told the findings a cxrfuse classifier run predicts (design 001's two stages);
* :func:`finetune_vlm`: LoRA fine-tuning on the training split (then :func:`generate_with_vlm`);
* :func:`score_files` (from :mod:`cxrfuse.generation.external`, re-exported here): any
  system's reports (JSON / CSV / Parquet) against references.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrfuse.config import TrackingConfig
from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.generation.baselines import baseline_reports, manifest_reports, plain_report
from cxrfuse.generation.external import auto_normalise, score_files
from cxrfuse.generation.labeler import Labeler
from cxrfuse.generation.lora import LoraSettings, finetune_lora
from cxrfuse.generation.outputs import ScoreOptions, write_generation
from cxrfuse.generation.retrieval import (
    Consensus,
    clip_vectors,
    nearest_reports,
    retrieve,
    store_vectors,
    train_reports,
)
from cxrfuse.generation.vlm import generate_reports, load_vlm
from cxrfuse.problems import DataError
from cxrfuse.rundir import GenerationDir, RunDir, p_column
from cxrfuse.runtime import now_iso
from cxrfuse.vocab import PHANTOM


def _manifest(manifest: str | Path | Manifest) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else read_manifest(manifest)


def _validation(man: Manifest, split: str) -> dict[str, str] | None:
    """The val split's reports for choosing the sentence-consensus template; None (a held-out
    part of train) when val is the scored split or has no reports."""
    return None if split == "val" else (manifest_reports(man, ["val"]) or None)


def generate_retrieval(
    out: str | Path,
    *,
    manifest: str | Path | Manifest | None = None,
    store: str | Path | None = None,
    image_encoder: str = "efficientnet-lite0",
    input_size: int | None = None,
    indication_encoder: str | None = None,
    clip_run: str | Path | None = None,
    split: str = "test",
    k: int = 1,
    consensus: Consensus = "top1",
    labeler: Labeler | None = None,
    score: ScoreOptions | None = None,
    progress: bool = True,
) -> tuple[GenerationDir, dict[str, Any]]:
    """Reports by retrieval from the training split (a store's image [+ indication] space, or
    a CLIP run's image -> report space), scored beside the baselines."""
    score = dict(score or {})
    if clip_run is not None:
        space, nearest_space, man = clip_vectors(clip_run, split=split, progress=progress)
        source: dict[str, Any] = {"clip_run": str(clip_run)}
    elif manifest is not None and store is not None:
        man = _manifest(manifest)
        space = store_vectors(man, store, image_encoder, split=split, input_size=input_size,
                              indication_encoder=indication_encoder, progress=progress)  # fmt: skip
        nearest_space = space if indication_encoder is None else store_vectors(
            man, store, image_encoder, split=split, input_size=input_size, progress=False)
        source = {"store": str(store), "image_encoder": image_encoder,
                  "indication_encoder": indication_encoder}  # fmt: skip
    else:
        raise DataError("retrieval needs --clip RUN, or a MANIFEST with --store DIR")
    frame = retrieve(space, man, k=k, consensus=consensus)
    baselines, info = baseline_reports(train_reports(man), list(frame["study_id"]),
                                       seed=score.get("seed", 0),
                                       nearest=nearest_reports(nearest_space, man),
                                       validation=_validation(man, split))  # fmt: skip
    settings = {"generator": f"retrieval (k = {k}, {consensus})", "kind": "retrieval",
                "space": space.description, "k": k, "consensus": consensus, "split": split,
                "bank": len(space.bank_ids), "n_reports": len(frame),
                "synthetic_images": man.images == PHANTOM, "baselines": info,
                "written": now_iso(), **source}  # fmt: skip
    gen = GenerationDir(out)
    return gen, write_generation(gen, frame, settings, baselines, labeler=labeler, **score)


def classifier_findings(run_dir: str | Path, split: str = "test") -> dict[str, list[str]]:
    """Study id -> the labels a cxrfuse classifier run predicts positive on ``split`` (its
    stored predictions at its val-chosen thresholds; 0.5 where it was never evaluated)."""
    run = RunDir(run_dir)
    info = run.require(("head", "finetune"), action="classifier findings for the prompt")
    thresholds = run.sidecar().thresholds
    frame = run.predictions(info.labels, splits=(split,))
    frame = frame[frame["split"] == split]
    return {str(row["study_id"]): [n for n in info.labels
                                   if row[p_column(n)] >= thresholds.get(n, 0.5)]
            for _, row in frame.iterrows()}  # fmt: skip


def _nearest_baseline(man: Manifest, study_ids: Sequence[str], store: str | Path | None,
                      encoder: str | None, split: str) -> dict[str, str] | None:  # fmt: skip
    if store is None or encoder is None:
        return None
    space = store_vectors(man, store, encoder, split=split, progress=False)
    nearest = nearest_reports(space, man)
    missing = [s for s in study_ids if s not in nearest]
    if missing:
        raise DataError(f"{len(missing)} studies (e.g. {missing[0]}) have no image embedding "
                        "for the nearest-neighbour baseline")  # fmt: skip
    return nearest


def generate_with_vlm(
    model: str,
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    findings_run: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    image_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    baseline_store: str | Path | None = "store",
    baseline_encoder: str | None = "efficientnet-lite0",
    labeler: Labeler | None = None,
    score: ScoreOptions | None = None,
    progress: bool = True,
) -> tuple[GenerationDir, dict[str, Any]]:
    """Reports from a vision-language model, scored beside the baselines (the
    nearest-neighbour one from ``baseline_encoder`` image embeddings in ``baseline_store``;
    None for either leaves it out)."""
    score = dict(score or {})
    man = _manifest(manifest)
    findings = classifier_findings(findings_run, split) if findings_run is not None else None
    vlm = load_vlm(model, adapter=None if adapter is None else str(adapter), device=device,
                   dtype=dtype)  # fmt: skip
    frame = generate_reports(vlm, man, split=split, limit=limit, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, findings=findings,
                             image_size=image_size, progress=progress, num_beams=num_beams)  # fmt: skip
    if frame.empty:
        raise DataError(f"no study of split {split!r} has a readable image to generate from")
    frame["reference"] = frame["reference"].map(plain_report)
    ids = list(frame["study_id"])
    nearest = _nearest_baseline(man, ids, baseline_store, baseline_encoder, split)
    baselines, info = baseline_reports(manifest_reports(man, ["train"]), ids,
                                       seed=score.get("seed", 0), nearest=nearest,
                                       validation=_validation(man, split))  # fmt: skip
    settings = {**frame.attrs.get("generation", {}),
                "generator": vlm.label if findings_run is None
                else f"{vlm.label} + findings of {Path(findings_run).name}",
                "kind": "vlm", "findings_run": None if findings_run is None else str(findings_run),
                "synthetic_images": man.images == PHANTOM, "baselines": info,
                "written": now_iso()}  # fmt: skip
    gen = GenerationDir(out)
    return gen, write_generation(gen, frame, settings, baselines, labeler=labeler, **score)


def finetune_vlm(model: str, manifest: str | Path | Manifest, out: str | Path,
                 settings: LoraSettings | None = None, *, findings_run: str | Path | None = None,
                 progress: bool = True, tracking: TrackingConfig | None = None) -> Path:  # fmt: skip
    """LoRA fine-tuning of ``model`` on the manifest's training split (validation loss on val,
    early stopping, resumable); returns the best epoch's adapter folder. With ``findings_run``
    the prompts carry that classifier's predictions (it must have predictions for the train
    and val studies: a run trained on another split, for example); ``tracking`` logs the
    settings and every epoch's losses to MLflow, TensorBoard or CSV. ``out`` must be new,
    empty or an earlier fine-tuning's (a user's folder is refused, never overwritten)."""
    man = _manifest(manifest)
    findings = None
    if findings_run is not None:
        findings = classifier_findings(findings_run, "train") | classifier_findings(findings_run,
                                                                                    "val")
    return finetune_lora(model, man, GenerationDir(out).path, settings, findings=findings,
                         progress=progress, tracking=tracking)  # fmt: skip


__all__ = ["auto_normalise", "classifier_findings", "finetune_vlm", "generate_retrieval",
           "generate_with_vlm", "score_files"]
