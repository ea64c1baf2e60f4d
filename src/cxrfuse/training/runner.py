"""Train a fusion head from a run config and write the run directory; grids of runs; loading.

* :func:`train_run` - one run: study arrays from the store, a Lightning ``Trainer`` with early
  stopping on the validation loss and a checkpoint that restores the best epoch, then the run
  directory of ``/work/notes/rundir.md`` (``config.yaml``, ``run.json``, ``epochs.csv``,
  ``plots/training_curves.png``, ``predictions.parquet`` for val and test,
  ``model.safetensors`` + ``model.json``).
* :func:`train_experiment` - every run of a grid; finished runs are skipped, a failed run is
  recorded and the grid goes on; ``summary.csv`` / ``summary.md`` with mean and standard
  deviation over seeds.
* :func:`load_run` / :func:`predict` - a trained head back from its directory, for the
  stored embeddings (``split_inputs``) or new images and a report (``predict``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import platform
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from cxrfuse.config import ExperimentConfig, RunConfig, TrainingConfig, validate_run, value_slug
from cxrfuse.data.manifest import label_slug
from cxrfuse.encoders.files import write_json
from cxrfuse.fusion.heads import build_head
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.training.artifacts import (
    SIDECAR_FORMAT,
    load_head,
    load_text_state,
    read_sidecar,
    save_head,
    save_text_state,
)
from cxrfuse.training.data import StudyArrays, assemble, build_study_arrays, make_loader
from cxrfuse.training.losses import build_loss
from cxrfuse.training.module import METRICS, FusionModule, epoch_metrics, probabilities
from cxrfuse.training.sampling import (
    balanced_class_weights,
    balanced_pos_weight,
    subsample_indices,
    weighted_sampler,
)

log = logging.getLogger(__name__)
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                     "lightning_fabric")
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*The number of training batches.*is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*You called `self.log\(.*` but have no logger configured.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
)
EVAL_BATCH = 4096


# ----------------------------------------------------------------------------- Lightning setup


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info banners and known-harmless warnings off, only inside this block."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


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
) -> tuple[Any, Any]:
    """A ``Trainer`` (CPU by default, DDP when ``devices > 1``) and its checkpoint callback."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
        save_weights_only=True, enable_version_counter=False,
    )
    callbacks: list[Any] = [checkpoint]
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
        logger=False,
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
) -> dict[str, Any]:
    """Fit, then load the best epoch's weights (lowest validation loss); return fit facts."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with quiet_lightning():
        trainer, checkpoint = build_trainer(training, checkpoint_dir=checkpoint_dir,
                                            progress=progress)
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


# ----------------------------------------------------------------------------- one run


def environment_info(device: str | None = None) -> dict[str, str]:
    """Python, torch, cxrfuse, platform and device (the first GPU, else "cpu") of this run."""
    try:
        version = metadata.version("cxrfuse")
    except metadata.PackageNotFoundError:
        version = "unknown"
    if device is None:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"python": sys.version.split()[0], "torch": torch.__version__, "cxrfuse": version,
            "platform": platform.platform(), "device": device}


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_run_json(path: Path, payload: Any) -> None:
    """``run.json``: indented strict JSON (NaN as null), written atomically."""
    write_json(path, payload, indent=2)


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
                           f"{y_train.shape[1]} labels: use sigmoid")
    pos_weight: Any = loss.pos_weight
    if pos_weight == "balanced":
        pos_weight = balanced_pos_weight(y_train).tolist()
    weights = balanced_class_weights(y_train) if config.training.class_weights == "balanced" else None
    return build_loss(loss.kind, config.model.output, pos_weight=pos_weight, alpha=loss.alpha,
                      gamma=loss.gamma, class_weights=weights)


def make_head(config: RunConfig, arrays: StudyArrays) -> torch.nn.Module:
    """The configured fusion head, sized for ``arrays``."""
    model = config.model
    specific = ({"hidden": model.hidden} if model.kind == "concat-mlp"
                else {"projection_dim": model.projection_dim})
    return build_head(
        model.kind,
        modalities=model.modalities,
        n_outputs=2 if model.output == "softmax" else arrays.y.shape[1],
        image_dim=arrays.image_dim if "image" in model.modalities else 0,
        text_dim=arrays.text_dim if "text" in model.modalities else 0,
        view_fusion=config.image.views,
        n_views=arrays.n_views,
        dropout=model.dropout,
        **specific,
    )


def predictions_frame(arrays: StudyArrays, rows: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({
        "study_id": arrays.study_ids[rows].astype(str),
        "patient_id": arrays.patient_ids[rows].astype(str),
        "split": arrays.split[rows].astype(str),
    })
    for j, name in enumerate(arrays.labels):
        frame[f"y__{label_slug(name)}"] = arrays.y[rows, j].astype(np.float64)
        frame[f"p__{label_slug(name)}"] = probs[:, j].astype(np.float64)
    return frame


def plot_training_curves(history: pd.DataFrame, path: Path, title: str) -> Path:
    """Loss, AUROC, F1, accuracy, precision and recall per epoch, train vs val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), sharex=True)
    for ax, metric in zip(axes.ravel(), ("loss", "auroc", "f1", "accuracy", "precision", "recall")):
        for split, style in (("train", "-o"), ("val", "-s")):
            part = history[history["split"] == split]
            ax.plot(part["epoch"] + 1, part[metric], style, markersize=3, label=split)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def train_on_arrays(
    config: RunConfig, arrays: StudyArrays, run_dir: Path, *, progress: bool = True
) -> dict[str, Any]:
    """Fit the configured head on ``arrays`` and write the run directory; returns run.json."""
    import lightning.pytorch as pl

    started, start = now_iso(), time.perf_counter()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    train_rows = training_rows(config, arrays)
    val_rows, test_rows = arrays.indices("val"), arrays.indices("test")
    training = config.training
    sampler = None
    if config.data.sampler == "weighted":
        sampler = weighted_sampler(arrays.y[train_rows], seed=config.seed)
    train_loader = make_loader(arrays.tensors(train_rows), training.batch_size, shuffle=True,
                               seed=config.seed, sampler=sampler, num_workers=training.num_workers)
    val_loader = make_loader(arrays.tensors(val_rows), max(training.batch_size, EVAL_BATCH))
    head = make_head(config, arrays)
    module = FusionModule(
        head, make_loss(config, arrays.y[train_rows]), output=config.model.output,
        optimizer=training.optimizer, lr=training.lr, weight_decay=training.weight_decay,
        schedule=training.schedule, max_epochs=training.max_epochs,
    )
    fit = fit_module(module, train_loader, val_loader, training, run_dir / ".checkpoints",
                     progress=progress)
    info: dict[str, Any] = {
        "name": config.name, "status": "finished", "started": started, "seed": config.seed,
        "task": config.data.task, "labels": list(arrays.labels), "output": config.model.output,
        "modalities": list(config.model.modalities), "images": arrays.images_kind,
        "manifest": arrays.info.get("manifest"),
        "stores": arrays.info.get("stores", {"image": None, "text": None}),
        "n": {"train": len(train_rows), "val": len(val_rows), "test": len(test_rows)},
        "n_train_before_subsample": len(arrays.indices("train")),
        "missing": missing_counts(arrays),
        "fit": {k: v for k, v in fit.items() if k != "is_global_zero"},
        "environment": environment_info(),
    }
    if not fit["is_global_zero"]:
        return info
    eval_rows = np.concatenate([val_rows, test_rows])
    probs = module.predict_arrays(arrays.tensors(eval_rows))
    predictions_frame(arrays, eval_rows, probs).to_parquet(run_dir / "predictions.parquet",
                                                              index=False)
    history = pd.DataFrame(module.history, columns=["epoch", "split", *METRICS, "lr"])
    history = history.sort_values(["epoch", "split"], key=lambda s: s.map(
        {"train": 0, "val": 1}) if s.name == "split" else s).reset_index(drop=True)
    history.to_csv(run_dir / "epochs.csv", index=False)
    plot_training_curves(history, run_dir / "plots" / "training_curves.png", config.name)
    save_head(head, run_dir, build_sidecar(config, arrays, head, run_dir))
    info["finished"] = now_iso()
    info["timing_s"] = round(time.perf_counter() - start, 3)
    write_run_json(run_dir / "run.json", info)
    return info


def missing_counts(arrays: StudyArrays) -> dict[str, int]:
    out = {}
    if arrays.image_mask is not None:
        out["image"] = int((~arrays.image_mask.any(axis=1)).sum())
    if arrays.text_mask is not None:
        out["text"] = int((~arrays.text_mask).sum())
    return out


def build_sidecar(config: RunConfig, arrays: StudyArrays, head: Any, run_dir: Path) -> dict[str, Any]:
    image = arrays.info.get("image")
    text = arrays.info.get("text")
    if image is not None:
        image = {**image, "n_views": arrays.n_views}
    if text is not None:
        text = {**text, "state": save_text_state(arrays.text_encoder, run_dir)}
    return {
        "format": SIDECAR_FORMAT,
        "head": {"kind": config.model.kind, "kwargs": dict(head.init_kwargs)},
        "labels": list(arrays.labels),
        "task": config.data.task,
        "output": config.model.output,
        "image": image,
        "text": text,
        "thresholds": {},
    }


def _write_failed(run_dir: Path, config: RunConfig, started: str, start: float, err: BaseException) -> None:
    write_run_json(run_dir / "run.json", {
        "name": config.name, "status": "failed", "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(limit=20), "started": started, "finished": now_iso(),
        "seed": config.seed, "task": config.data.task, "modalities": list(config.model.modalities),
        "output": config.model.output, "manifest": config.data.manifest,
        "environment": environment_info(), "timing_s": round(time.perf_counter() - start, 3),
    })


def train_run(config: RunConfig, *, progress: bool = True) -> Path:
    """Train one run and write ``<runs_dir>/<name>/``; a failure writes run.json (failed) and
    re-raises. ``training.mode == "finetune"`` hands over to
    :func:`cxrfuse.training.finetune.train_finetune`."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    started, start = now_iso(), time.perf_counter()
    try:
        if config.training.mode == "finetune":
            try:
                from cxrfuse.training.finetune import train_finetune
            except ImportError as err:
                raise CxrfuseError("training.mode 'finetune' needs cxrfuse.training.finetune, "
                                   f"which is not available in this install ({err})") from err
            train_finetune(config, run_dir, progress=progress)
            return run_dir
        arrays = build_study_arrays(config, progress=progress)
        train_on_arrays(config, arrays, run_dir, progress=progress)
    except BaseException as err:
        _write_failed(run_dir, config, started, start, err)
        raise
    return run_dir


def run_status(run_dir: Path) -> str | None:
    """``finished`` / ``failed`` from run.json, None when there is none."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("status")
    except json.JSONDecodeError:
        return None


# ----------------------------------------------------------------------------- experiments


def train_experiment(
    experiment: ExperimentConfig,
    *,
    progress: bool = True,
    after_run: Callable[[Path], None] | None = None,
    console: Any = None,
) -> Path:
    """Train every run of the grid (skipping finished ones), then write the summary tables.

    ``after_run(run_dir)`` runs after each newly finished run (e.g. evaluation). A run that
    raises is recorded as failed and the grid goes on.
    """
    out = experiment.experiment_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(
        yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False))
    say = console.print if console is not None else log.info
    runs = experiment.expand()
    for i, config in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {config.name}"
        stored = config.run_dir / "config.yaml"
        if run_status(config.run_dir) == "finished" and stored.is_file() and \
                yaml.safe_load(stored.read_text()) == config.model_dump(mode="json"):
            say(f"{prefix}: finished before, skipped")
            continue
        try:
            train_run(config, progress=progress)
        except Exception as err:  # noqa: BLE001 - a failed run must not stop the grid
            say(f"{prefix}: FAILED ({type(err).__name__}: {err})")
            continue
        say(f"{prefix}: finished")
        if after_run is not None:
            after_run(config.run_dir)
    write_summary(experiment, runs)
    return out


def test_metrics(run_dir: Path) -> dict[str, float]:
    """Headline test metrics (threshold 0.5, macro over labels) from predictions.parquet."""
    path = Path(run_dir) / "predictions.parquet"
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path)
    test = frame[frame["split"] == "test"]
    if test.empty:
        return {}
    ys = [c for c in test.columns if c.startswith("y__")]
    ps = ["p__" + c[3:] for c in ys]
    scores = epoch_metrics(test[ys].to_numpy(), test[ps].to_numpy())
    return {f"test_{k}": v for k, v in scores.items()}


def write_summary(experiment: ExperimentConfig, runs: Sequence[RunConfig]) -> pd.DataFrame:
    """``summary.csv`` (one row per run) and ``summary.md`` (mean ± sd over seeds)."""
    rows = []
    for config in runs:
        info = {}
        path = config.run_dir / "run.json"
        if path.is_file():
            info = json.loads(path.read_text())
        row: dict[str, Any] = {"run": config.name}
        for key, value in experiment.grid_values(config).items():
            row[key] = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        row.update(modalities="+".join(config.model.modalities), seed=config.seed,
                   status=info.get("status", "missing"), error=info.get("error"))
        fit = info.get("fit", {})
        row.update(best_epoch=fit.get("best_epoch"), best_val_loss=fit.get("best_val_loss"),
                   timing_s=info.get("timing_s"))
        row.update(test_metrics(config.run_dir))
        rows.append(row)
    table = pd.DataFrame(rows)
    out = experiment.experiment_dir
    table.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(summary_markdown(experiment, table))
    return table


def summary_markdown(experiment: ExperimentConfig, table: pd.DataFrame) -> str:
    """Mean ± sd over seeds of the headline test metrics, per grid point."""
    metrics = [c for c in table.columns if c.startswith("test_")]
    keys = [k for k in experiment.grid if k in table.columns and k != "model.modalities"]
    group = ["modalities", *keys]
    lines = [f"# {experiment.name}", "",
             (f"{len(table)} run(s), {int((table['status'] == 'finished').sum())} finished; "
             f"seeds {experiment.seeds}. Test metrics at threshold 0.5, macro over labels; "
             "mean ± sd over seeds (sd 0 for one seed)."), ""]
    done = table[table["status"] == "finished"].copy()
    for key in keys:  # readable grid values: full / sub75, focal, lr0.001
        done[key] = [value_slug(key, yaml.safe_load(str(v))) for v in done[key]]
    if not done.empty and metrics:
        agg = []
        for values, part in done.groupby(group, sort=False, dropna=False):
            values = values if isinstance(values, tuple) else (values,)
            row = dict(zip(group, values)) | {"n_seeds": len(part)}
            for m in metrics:
                x = part[m].astype(float)
                row[m.removeprefix("test_")] = f"{x.mean():.3f} ± {x.std(ddof=1) if len(x) > 1 else 0.0:.3f}"
            agg.append(row)
        lines.append(pd.DataFrame(agg).to_markdown(index=False))
    failed = table[table["status"] != "finished"]
    if not failed.empty:
        lines += ["", "## Runs not finished", ""]
        lines += [f"- {r.run}: {r.status} {r.error or ''}" for r in failed.itertuples()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- loading


@dataclass
class LoadedRun:
    """A trained run: ``head`` (eval mode, CPU), ``sidecar``, ``config`` and ``info`` (run.json)."""

    run_dir: Path
    head: Any
    sidecar: dict[str, Any]
    config: RunConfig
    info: dict[str, Any]
    _arrays: StudyArrays | None = field(default=None, repr=False)

    @property
    def labels(self) -> list[str]:
        return list(self.sidecar["labels"])

    @torch.no_grad()
    def predict_proba(self, inputs: dict[str, Any]) -> np.ndarray:
        """Positive-class probabilities (n, n_labels) for inputs keyed image, image_mask,
        text, text_mask (NumPy arrays or tensors)."""
        tensors = {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)
                   for k, v in inputs.items() if k in ("image", "image_mask", "text", "text_mask")}
        for key in ("image", "text"):
            if key in tensors:
                tensors[key] = tensors[key].float()
        n = len(next(iter(tensors.values())))
        out = [probabilities(self.head(**{k: v[s:s + EVAL_BATCH] for k, v in tensors.items()}),
                             self.sidecar["output"]) for s in range(0, n, EVAL_BATCH)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.labels)), np.float32)

    def arrays(self) -> StudyArrays:
        """The run's study arrays, from the stores recorded in run.json."""
        if self._arrays is None:
            from cxrfuse.data.manifest import read_manifest
            from cxrfuse.encoders.store import load_image_embeddings, load_text_embeddings

            stores = self.info.get("stores") or {}
            manifest = read_manifest(self.info.get("manifest") or self.config.data.manifest)
            image = load_image_embeddings(stores["image"]) if stores.get("image") else None
            text = load_text_embeddings(stores["text"]) if stores.get("text") else None
            self._arrays = assemble(manifest, self.config.data.task, image=image,
                                    views=self.config.image.views, text=text)
        return self._arrays

    def split_inputs(self, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(inputs, y) of one split, in the order of its rows in predictions.parquet."""
        arrays = self.arrays()
        rows = arrays.indices(split)
        inputs = {k: getattr(arrays, k)[rows] for k in ("image", "image_mask", "text", "text_mask")
                  if getattr(arrays, k) is not None}
        return inputs, arrays.y[rows]

    def split_study_ids(self, split: str) -> list[str]:
        arrays = self.arrays()
        return [str(s) for s in arrays.study_ids[arrays.indices(split)]]


def load_run(run_dir: str | Path) -> LoadedRun:
    """A finished run directory's head, sidecar, config and run.json."""
    run_dir = Path(run_dir)
    if run_status(run_dir) != "finished":
        raise CxrfuseError(f"{run_dir}: not a finished run (run.json status "
                           f"{run_status(run_dir)!r})")
    sidecar = read_sidecar(run_dir)
    config = validate_run(yaml.safe_load((run_dir / "config.yaml").read_text()),
                          str(run_dir / "config.yaml"))
    info = json.loads((run_dir / "run.json").read_text())
    return LoadedRun(run_dir, load_head(run_dir, sidecar), sidecar, config, info)


def _image_inputs(
    run_dir: Path, spec: dict[str, Any], images: Sequence[str | Path]
) -> dict[str, torch.Tensor]:
    """The study's view embeddings, decoded exactly as the store decodes (the fine-tuned
    encoder of a fine-tuning run, else the named one)."""
    from cxrfuse.encoders.decode import decode_resized
    from cxrfuse.encoders.registry import create_image_encoder

    if not images:
        raise DataError("this model reads images: pass at least one --image")
    if spec.get("finetuned"):
        from cxrfuse.training.finetune import load_finetuned_encoder

        encoder = load_finetuned_encoder(run_dir)
    else:
        encoder = create_image_encoder(spec["encoder"], weights=spec["weights"],
                                       input_size=spec["input_size"])
    size = encoder.spec.input_size
    pixels = []
    for path in images:
        try:
            pixels.append(encoder.preprocess(decode_resized(path, size)))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read the image ({err})") from err
    with torch.inference_mode():
        feats = encoder(torch.stack(pixels)).float()
    n_views, mode = int(spec["n_views"]), spec["views"]
    if mode == "frontal":
        feats = feats[:1]
    elif mode == "concat":  # slot 0 frontal, slot 1 lateral: images in that order
        feats = feats[:n_views]
    views = torch.zeros((1, max(n_views if mode in ("frontal", "concat") else len(feats), 1),
                         feats.shape[1]))
    mask = torch.zeros(views.shape[:2], dtype=torch.bool)
    views[0, :len(feats)], mask[0, :len(feats)] = feats, True
    return {"image": views, "image_mask": mask}


def _text_inputs(run_dir: Path, spec: dict[str, Any], report: str) -> dict[str, torch.Tensor]:
    from cxrfuse.data.mimic_cxr import parse_report_sections
    from cxrfuse.encoders.registry import create_text_encoder
    from cxrfuse.text import TextConfig, prepare_text

    config = TextConfig(**spec["text_config"])
    sections = parse_report_sections(report)
    if not any(sections.values()):
        raise DataError("the report has no section headings (INDICATION:, COMPARISON:, "
                        f"FINDINGS:, IMPRESSION:); this model reads {config.sections}")
    text = prepare_text(sections, config, spec.get("mask_labels_for", []))
    if spec.get("state"):
        encoder = load_text_state(run_dir, spec["state"])
    else:
        encoder = create_text_encoder(spec["encoder"], weights=spec["weights"], **spec["options"])
        if getattr(encoder, "requires_fit", False):
            raise CxrfuseError(f"{run_dir}: text encoder {spec['encoder']!r} must be fitted but "
                               "the run stored no fitted state; retrain the run")
    has_text = bool(text.strip())
    vector = encoder.encode([text]) if has_text else np.zeros((1, spec["dim"]), np.float32)
    return {"text": torch.as_tensor(np.asarray(vector, dtype=np.float32)),
            "text_mask": torch.tensor([has_text])}


def predict(run_dir: str | Path, images: Sequence[str | Path] = (), report: str | None = None
            ) -> dict[str, float]:
    """Probabilities per label for one study: image files (frontal first, then lateral) and
    the report text, embedded with the encoders named in the run's sidecar."""
    run = load_run(run_dir)
    inputs: dict[str, torch.Tensor] = {}
    if run.sidecar.get("image"):
        inputs |= _image_inputs(run.run_dir, run.sidecar["image"], images)
    if run.sidecar.get("text"):
        if report is None:
            raise DataError("this model reads report text: pass --report")
        inputs |= _text_inputs(run.run_dir, run.sidecar["text"], report)
    probs = run.predict_proba(inputs)[0]
    return {name: float(p) for name, p in zip(run.labels, probs)}
