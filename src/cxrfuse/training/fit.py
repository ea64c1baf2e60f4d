"""Lightning plumbing shared by every training pipeline: the ``Trainer`` (CPU by default, DDP
when ``devices > 1``, bf16 on a GPU), early stopping on the validation loss, and restoring
the best epoch's weights from a checkpoint that is deleted afterwards (no pickles stay)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

from cxrfuse.config import TrainingConfig
from cxrfuse.runtime import quiet_lightning
from cxrfuse.training.module import FusionModule
from cxrfuse.training.tracking import HistoryLogging


def resolve_precision(training: TrainingConfig) -> str:
    """``auto``: bf16-mixed on a CUDA GPU, 32-true elsewhere."""
    if training.precision == "auto":
        gpu = torch.cuda.is_available() and training.accelerator in ("auto", "gpu", "cuda")
        return "bf16-mixed" if gpu else "32-true"
    return "32-true" if training.precision == "32" else training.precision


def build_trainer(
    training: TrainingConfig,
    *,
    checkpoint_dir: Path,
    progress: bool = True,
    max_epochs: int | None = None,
    logger: Any = None,
    callbacks: Sequence[Any] = (),
) -> tuple[Any, Any]:
    """A ``Trainer`` (CPU by default, DDP when ``devices > 1``) and its checkpoint callback;
    ``logger`` (a Lightning logger, see :mod:`cxrfuse.training.tracking`) gets every epoch's
    metrics, ``callbacks`` are added (e.g. a sweep's pruning)."""
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
        save_weights_only=True, enable_version_counter=False,
    )
    callbacks = [checkpoint, *callbacks]
    if logger is not None:
        callbacks.append(HistoryLogging())
    if training.early_stopping is not None:
        es = training.early_stopping
        callbacks.append(EarlyStopping(monitor=es.monitor, patience=es.patience,
                                       min_delta=es.min_delta, mode="min"))
    if progress:
        callbacks.append(RichProgressBar(leave=False))
    accelerator = training.accelerator
    if accelerator == "auto" and not torch.cuda.is_available():
        accelerator = "cpu"
    trainer = pl.Trainer(
        max_epochs=max_epochs or training.max_epochs,
        accelerator=accelerator,
        devices=training.devices,
        num_nodes=training.num_nodes,
        strategy=training.strategy,
        precision=resolve_precision(training),  # type: ignore[arg-type]
        deterministic=training.deterministic,
        gradient_clip_val=training.gradient_clip_val,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
        default_root_dir=str(checkpoint_dir),
    )
    return trainer, checkpoint


def fit_module(
    module: FusionModule,
    train_loader: Any,
    val_loader: Any,
    training: TrainingConfig,
    checkpoint_dir: Path,
    *,
    progress: bool = True,
    logger: Any = None,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Fit, then load the best epoch's weights (lowest validation loss); return fit facts."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with quiet_lightning():
        trainer, checkpoint = build_trainer(training, checkpoint_dir=checkpoint_dir,
                                            progress=progress, logger=logger,
                                            callbacks=callbacks)
        trainer.fit(module, train_loader, val_loader)
    best = checkpoint.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    module.cpu()
    val_rows = [r for r in module.history if r["split"] == "val"]
    best_row = min(val_rows, key=lambda r: r["loss"], default=None)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # no pickled checkpoints stay behind
    return {
        "epochs_run": len(val_rows),
        "best_epoch": None if best_row is None else best_row["epoch"],
        "best_val_loss": None if best_row is None else best_row["loss"],
        "stopped_early": len(val_rows) < training.max_epochs,
        "is_global_zero": trainer.is_global_zero,
    }
