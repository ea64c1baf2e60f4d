"""The files of a LoRA fine-tuning (:mod:`cxrfuse.generation.lora`) in its generation
directory: the best adapter and the resumable checkpoint (safetensors + JSON, swapped in
atomically), ``epochs.csv``, ``curves.png``, the check that ``--out`` is the fine-tuning's own
folder, and the ``--tracking`` logger. No pickles.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from cxrfuse.config import TrackingConfig
from cxrfuse.files import LOCK_NAME, write_json, write_text
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import GenerationDir, LoraRunInfo, layout
from cxrfuse.rundir.tracking import make_tracker

RESUMABLE_CHANGES = frozenset({"epochs", "patience", "min_delta", "device"})
ADAPTER_DIR, CHECKPOINT_DIR = layout.ADAPTER, layout.LORA_CHECKPOINT
EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", "seconds")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap folder ``tmp`` in as ``final`` (the old one survives as ``final.old`` until then)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def save_adapter(model: Any, folder: Path, info: Mapping[str, Any]) -> None:
    """The adapter (safetensors) + ``cxrfuse_adapter.json``, written atomically."""
    tmp = _fresh_dir(folder.with_name(folder.name + ".tmp"))
    model.save_pretrained(str(tmp), safe_serialization=True)
    write_json(tmp / "cxrfuse_adapter.json", dict(info), indent=2)
    _replace_dir(tmp, folder)


def load_adapter_weights(model: Any, folder: Path) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, state)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    out: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]
) -> None:
    """The last finished epoch: adapter, optimizer, scheduler, torch RNG and loop state."""
    from safetensors.torch import save_file

    tmp = _fresh_dir(out / (CHECKPOINT_DIR + ".tmp"))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {**state, "optimizer": meta, "scheduler": scheduler.state_dict()},
               indent=2)  # fmt: skip
    _replace_dir(tmp, out / CHECKPOINT_DIR)


def find_checkpoint(out: Path) -> Path | None:
    """The checkpoint folder of ``out`` (or the previous one when a swap was interrupted)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        if (out / name / "state.json").is_file():
            return out / name
    return None


def restore_checkpoint(
    folder: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    load_adapter_weights(model, folder)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    rng = tensors.pop("rng.torch")
    cuda = [tensors.pop(k) for k in sorted([k for k in tensors if k.startswith("rng.cuda.")])]
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(rng)
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return state


def check_resumable(previous: Mapping[str, Any], settings: BaseModel, model: str) -> None:
    """Refuse to continue a run whose model or fixed settings differ."""
    if previous.get("model") != model:
        raise CxrfuseError(
            f"the output folder holds a fine-tuning run of {previous.get('model')!r}, not {model!r}; "
            "use another folder"
        )
    now = settings.model_dump()
    for key, before in previous.get("settings", {}).items():
        if key not in RESUMABLE_CHANGES and now.get(key) != before:
            raise CxrfuseError(
                f"the output folder holds a run with {key}={before!r}, now {key}={now.get(key)!r}; "
                f"only {sorted(RESUMABLE_CHANGES)} may change when resuming; use another folder"
            )


def write_epochs(gen: GenerationDir, history: Sequence[Mapping[str, Any]]) -> None:
    """``epochs.csv``: epoch, train_loss, val_loss, seconds."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(EPOCH_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in EPOCH_COLUMNS})
    write_text(gen.epochs_path, buffer.getvalue())


def plot_curves(gen: GenerationDir, history: Sequence[Mapping[str, Any]], best_epoch: int | None) -> None:
    """Train and val loss per epoch (``curves.png``)."""
    epochs = [row["epoch"] for row in history]
    fig = new_figure(figsize=(5, 3.2), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    val = [math.nan if row["val_loss"] is None else row["val_loss"] for row in history]
    ax.plot(epochs, val, marker="o", label="val")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("target-token cross-entropy")
    ax.legend()
    save_figure(fig, gen.curves_path, dpi=120)


def check_owned(gen: GenerationDir) -> None:
    """Refuse an output folder that fine-tuning did not make: it writes and replaces
    ``adapter/`` and ``checkpoint/`` there, so only a new or empty folder, or one holding an
    earlier fine-tuning (``finetune.json``, or the checkpoint of a call killed before it wrote
    one) is used. A DataError names the folder."""
    path = gen.path
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(f"{path}: not a folder; --out must name a new or empty folder, or an "
                        "earlier `cxrfuse generate finetune` output")  # fmt: skip
    if gen.lora_info() is not None or _checkpoint_state(path) is not None:
        return
    others = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise DataError(
            f"{path}: not empty ({shown}) and not a `cxrfuse generate finetune` output (no "
            f"{layout.LORA_INFO}); fine-tuning writes and replaces {ADAPTER_DIR}/ and "
            f"{CHECKPOINT_DIR}/ in its --out folder, so it leaves this one alone: pass a new or "
            "empty folder"
        )


def _checkpoint_state(out: Path) -> dict[str, Any] | None:
    """The loop state of the checkpoint in ``out`` when it is a fine-tuning checkpoint."""
    folder = find_checkpoint(out)
    if folder is None:
        return None
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None
    keys = {"model", "settings", "epoch", "history"}
    return state if isinstance(state, dict) and keys <= set(state) else None


class _Tracker:
    """The epochs of a fine-tuning sent to the tracker of ``--tracking`` (Lightning's logger,
    built as for training runs by :func:`cxrfuse.rundir.tracking.make_tracker`)."""

    def __init__(self, tracking: TrackingConfig | None, gen: GenerationDir, model: str,
                 settings: BaseModel) -> None:  # fmt: skip
        self.logger = None
        if tracking is not None:
            self.logger = make_tracker(
                tracking, gen.path, name=gen.name, runs_dir=gen.path,
                params={"model": model, "lora": settings.model_dump(mode="json")},
                tags={"cxrfuse.generation_dir": str(gen.path.resolve())})

    def epoch(self, row: Mapping[str, Any]) -> None:
        if self.logger is None:
            return
        values = {"train/loss": row["train_loss"], "val/loss": row["val_loss"],
                  "epoch_seconds": row["seconds"]}  # fmt: skip
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        self.logger.log_metrics(finite, step=int(row["epoch"]))

    def fail(self) -> None:
        if self.logger is not None:
            self.logger.finalize("failed")

    def finish(self, info: LoraRunInfo, gen: GenerationDir) -> None:
        if self.logger is None:
            return
        final = {"best_epoch": info.best_epoch, "best_val_loss": info.best_val_loss,
                 "epochs_done": info.epochs_done}  # fmt: skip
        self.logger.log_metrics({k: float(v) for k, v in final.items() if v is not None},
                                step=info.epochs_done)  # fmt: skip
        run_id = getattr(self.logger, "run_id", None)
        if run_id is not None:  # MLflow: the record and plot as artifacts, the status as a tag
            client = self.logger.experiment
            client.set_tag(run_id, "status", info.status)
            for path in (gen.lora_info_path, gen.epochs_path, gen.curves_path):
                if path.is_file():
                    client.log_artifact(run_id, str(path))
        self.logger.finalize("success")
