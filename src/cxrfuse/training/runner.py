"""Train one run from its config and write the run directory: one pipeline for a head on
stored embeddings and for end-to-end fine-tuning (the two differ only in their
:class:`~cxrfuse.training.inputs.InputSource`).

1. the run directory gets ``config.yaml`` and ``run.json`` (status ``running``);
2. the inputs are built (embedding what the store lacks, or reading image slots), then the
   process is seeded and the model (head, or encoder + head) is created;
3. Lightning trains with early stopping on the validation loss and restores the best epoch;
4. val and test are predicted; ``predictions.parquet``, ``epochs.csv``,
   ``plots/training_curves.png``, the weights and ``model.json`` are written, and ``run.json``
   says ``finished`` (or ``failed`` with the error, re-raised).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrfuse.config import RunConfig
from cxrfuse.data.manifest import read_manifest
from cxrfuse.data.views import read_view_counts
from cxrfuse.encoders import TfidfEncoder
from cxrfuse.files import first_rank, folder_lock
from cxrfuse.fusion import FusionHead, build_head
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import (
    FitFacts,
    HeadSidecar,
    HeadSpec,
    RunDir,
    RunInfo,
    TextSide,
    p_column,
    y_column,
)
from cxrfuse.rundir.modelcard import write_model_card
from cxrfuse.runtime import environment_info, now_iso, seed_everything
from cxrfuse.store import StudyArrays
from cxrfuse.store.integrity import digest_file
from cxrfuse.training.fit import fit_module
from cxrfuse.training.inputs import InputSource, make_source
from cxrfuse.training.losses import build_loss
from cxrfuse.training.module import METRICS
from cxrfuse.training.sampling import (
    balanced_class_weights,
    balanced_pos_weight,
    subsample_indices,
    weighted_sampler,
)
from cxrfuse.training.tracking import make_logger

log = logging.getLogger(__name__)
CURVE_METRICS = ("loss", "auroc", "f1", "accuracy", "precision", "recall")


def training_rows(config: RunConfig, arrays: StudyArrays) -> np.ndarray:
    """Train row indices after the configured subsampling (seeded)."""
    rows = arrays.indices("train")
    sub = config.data.subsample
    if sub is not None:
        seed = config.seed if sub.seed is None else sub.seed
        rows = rows[subsample_indices(arrays.y[rows], sub.positive_fraction, seed)]
    return rows


def make_loss(config: RunConfig, y_train: np.ndarray) -> torch.nn.Module:
    """The configured loss, with ``balanced`` weights resolved from the training labels."""
    loss = config.training.loss
    if config.model.output == "softmax" and y_train.shape[1] != 1:
        raise CxrfuseError("model.output 'softmax' is for binary tasks; this task has "
                           f"{y_train.shape[1]} labels: use sigmoid")  # fmt: skip
    pos_weight: Any = loss.pos_weight
    if pos_weight == "balanced":
        pos_weight = balanced_pos_weight(y_train).tolist()
    weights = balanced_class_weights(y_train) if config.training.class_weights == "balanced" else None
    return build_loss(loss.kind, config.model.output, pos_weight=pos_weight, alpha=loss.alpha,
                      gamma=loss.gamma, class_weights=weights)  # fmt: skip


def make_head(config: RunConfig, n_labels: int, *, image_dim: int, n_views: int,
              text_dim: int) -> FusionHead:  # fmt: skip
    """The configured fusion head for an image side of ``image_dim`` x ``n_views`` and a text
    side of ``text_dim`` (each used only when the run reads that modality)."""
    model = config.model
    specific = ({"hidden": model.hidden} if model.kind == "concat-mlp"
                else {"projection_dim": model.projection_dim})  # fmt: skip
    return build_head(
        model.kind,
        modalities=model.modalities,
        n_outputs=2 if model.output == "softmax" else n_labels,
        image_dim=image_dim if "image" in model.modalities else 0,
        text_dim=text_dim if "text" in model.modalities else 0,
        view_fusion=config.image.views,
        n_views=n_views,
        dropout=model.dropout,
        **specific,
    )


def predictions_frame(arrays: StudyArrays, rows: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The predictions table of the run-directory contract for ``rows``."""
    frame = pd.DataFrame({
        "study_id": arrays.study_ids[rows].astype(str),
        "patient_id": arrays.patient_ids[rows].astype(str),
        "split": arrays.split[rows].astype(str),
    })  # fmt: skip
    for j, name in enumerate(arrays.labels):
        frame[y_column(name)] = arrays.y[rows, j].astype(np.float64)
        frame[p_column(name)] = probs[:, j].astype(np.float64)
    return frame


def history_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-epoch metrics, train before val within an epoch."""
    frame = pd.DataFrame(history, columns=["epoch", "split", *METRICS, "lr"])
    order = frame["split"].map({"train": 0, "val": 1})
    return frame.assign(_order=order).sort_values(["epoch", "_order"], kind="stable").drop(
        columns="_order").reset_index(drop=True)  # fmt: skip


def plot_training_curves(history: pd.DataFrame, path: Path, title: str) -> Path:
    """Loss, AUROC, F1, accuracy, precision and recall per epoch, train vs val."""
    fig = new_figure(figsize=(12, 6.5))
    axes = fig.subplots(2, 3, sharex=True)
    for ax, metric in zip(axes.ravel(), CURVE_METRICS):
        for split, style in (("train", "-o"), ("val", "-s")):
            part = history[history["split"] == split]
            ax.plot(part["epoch"] + 1, part[metric], style, markersize=3, label=split)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    return save_figure(fig, path)


def missing_counts(arrays: StudyArrays) -> dict[str, int]:
    """Studies without any image view and without text."""
    out = {}
    if arrays.image_mask is not None:
        out["image"] = int((~arrays.image_mask.any(axis=1)).sum())
    if arrays.text_mask is not None:
        out["text"] = int((~arrays.text_mask).sum())
    return out


def training_views(arrays: StudyArrays, rows: dict[str, np.ndarray], view_fusion: str
                   ) -> dict[str, dict[str, int]]:  # fmt: skip
    """Per split, the view kinds the head's view fusion read (``run.json`` ``views``), from the
    manifest the arrays came from (empty when it is not readable any more)."""
    path = arrays.info.get("manifest")
    if not path or not Path(path).is_file():
        return {}
    manifest = read_manifest(path)
    views_of = dict(zip(manifest.df["study_id"].astype(str), manifest.df["views"]))
    studies = {split: [views_of.get(str(arrays.study_ids[i]), []) for i in r]
               for split, r in rows.items()}  # fmt: skip
    return {split: read_view_counts(views, view_fusion) for split, views in studies.items()}


def text_side(run: RunDir, arrays: StudyArrays) -> TextSide | None:
    """The sidecar's text side, with the fitted state stored when the encoder was fitted."""
    text = arrays.info.get("text")
    if text is None:
        return None
    state = None
    encoder = arrays.text_encoder
    if getattr(encoder, "requires_fit", False):
        if not isinstance(encoder, TfidfEncoder):
            raise CxrfuseError(f"text encoder {getattr(encoder, 'name', '?')!r} is fitted on the "
                               "training split but cxrfuse does not know how to store its "
                               "state; predict could not rebuild it")  # fmt: skip
        state = run.write_text_state(*encoder.export_state())
    return TextSide(**text, state=state)


def run_file_digests(run: RunDir) -> dict[str, str]:
    """SHA-256 of the run's weights (``*.safetensors``) and fitted-state JSON files: not
    ``run.json`` (which holds them) nor ``model.json`` (``evaluate`` adds its thresholds)."""
    return {p.name: digest_file(p) for p in sorted(run.path.iterdir())
            if p.is_file() and p.suffix in (".safetensors", ".json")
            and p not in (run.info_path, run.sidecar_path) and not p.name.startswith(".")}  # fmt: skip


def _started_info(config: RunConfig) -> RunInfo:
    return RunInfo(name=config.name, kind="finetune" if config.training.mode == "finetune"
                   else "head", status="running", started=now_iso(), seed=config.seed,
                   task=config.data.task, modalities=list(config.model.modalities),
                   output=config.model.output, manifest=str(config.data.manifest),
                   environment=environment_info())  # fmt: skip


def train_run(config: RunConfig, *, progress: bool = True, source: InputSource | None = None,
              run_dir: str | Path | None = None, callbacks: Sequence[Any] = ()) -> Path:  # fmt: skip
    """Train one run and write ``<runs_dir>/<name>/`` (or ``run_dir``); see the module
    docstring. ``source`` replaces the config's input source (e.g. ``StoredEmbeddings(config,
    arrays=...)`` on arrays the caller built); ``callbacks`` go to the Lightning ``Trainer``.
    ``config.tracking`` picks the logger (:mod:`cxrfuse.training.tracking`)."""
    run = RunDir(run_dir or config.run_dir)
    lock = folder_lock(run.path, "the run directory") if first_rank() else contextlib.nullcontext()
    with lock:
        return _train_locked(config, run, progress, source, callbacks)


def _train_locked(config: RunConfig, run: RunDir, progress: bool,
                  source: InputSource | None, callbacks: Sequence[Any]) -> Path:  # fmt: skip
    # test figures of earlier weights in this folder would describe the new model (its card,
    # a sweep's best run, the tracker): the evaluation that follows writes them again
    run.metrics_path.unlink(missing_ok=True)
    run.write_config(config)
    info, start = _started_info(config), time.perf_counter()
    run.write_info(info)
    try:
        _train(config, run, info, progress, source, callbacks)
    except BaseException as err:
        info.status, info.error = "failed", f"{type(err).__name__}: {err}"
        info.traceback = traceback.format_exc(limit=20)
        info.finished, info.timing_s = now_iso(), round(time.perf_counter() - start, 3)
        run.write_info(info)
        raise
    info.finished, info.timing_s = now_iso(), round(time.perf_counter() - start, 3)
    info.status = "finished"
    run.write_info(info)
    if run.sidecar_path.is_file():  # the model card (evaluation refreshes it)
        try:
            write_model_card(run.path)
        except CxrfuseError as err:  # a card problem must not fail a trained run
            log.warning("model card of %s not written: %s", run.path, err)
    return run.path


def _train(config: RunConfig, run: RunDir, info: RunInfo, progress: bool,
           source: InputSource | None, callbacks: Sequence[Any] = ()) -> None:  # fmt: skip
    source = source or make_source(config, progress=progress)
    arrays = source.arrays
    seed_everything(config.seed)
    model = source.build_model(lambda image_dim, n_views: make_head(
        config, arrays.y.shape[1], image_dim=image_dim, n_views=n_views,
        text_dim=arrays.text_dim))  # fmt: skip
    train_rows = training_rows(config, arrays)
    val_rows, test_rows = arrays.indices("val"), arrays.indices("test")
    sampler = (weighted_sampler(arrays.y[train_rows], seed=config.seed)
               if config.data.sampler == "weighted" else None)  # fmt: skip
    train_loader, val_loader = source.loaders(train_rows, val_rows, sampler)
    module = source.module(model, make_loss(config, arrays.y[train_rows]))
    logger = make_logger(config, run)
    fit = fit_module(module, train_loader, val_loader, config.training, run.checkpoints_dir,
                     progress=progress, logger=logger, callbacks=callbacks)  # fmt: skip
    eval_rows = np.concatenate([val_rows, test_rows])
    probs = source.predict(module, eval_rows, progress)
    if not fit.pop("is_global_zero"):
        return
    run.write_predictions(predictions_frame(arrays, eval_rows, probs))
    history = history_frame(module.history)
    run.write_epochs(history)
    plot_training_curves(history, run.training_curves, config.name)
    head: FusionHead = getattr(model, "head", model)
    image = source.image_record(run, module)
    run.write_weights(head.state_dict(), metadata={"format": "cxrfuse-head/1"})
    run.write_sidecar(HeadSidecar(
        head=HeadSpec(kind=config.model.kind, kwargs=dict(head.init_kwargs)),
        labels=list(arrays.labels), task=config.data.task, output=config.model.output,
        image=image.side, text=text_side(run, arrays),
    ))  # fmt: skip
    info.digests = run_file_digests(run)
    info.labels, info.images = list(arrays.labels), arrays.images_kind
    info.manifest = arrays.info.get("manifest", info.manifest)
    info.stores = {"image": image.store, "text": arrays.info.get("stores", {}).get("text")}
    info.n = {"train": len(train_rows), "val": len(val_rows), "test": len(test_rows)}
    info.n_train_before_subsample = len(arrays.indices("train"))
    info.missing = missing_counts(arrays)
    if image.side is not None:
        info.views = training_views(arrays, {"train": train_rows, "val": val_rows,
                                             "test": test_rows}, image.side.views)  # fmt: skip
    info.fit = FitFacts(**fit)
    info.finetune = image.finetune
