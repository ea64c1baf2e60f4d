"""Contrastive training of the image-report model with Lightning.

:func:`train_clip` builds the model from a :class:`ClipConfig`, measures the validation InfoNCE
loss and retrieval once *before* training (epoch 0), trains with AdamW (encoders at
``training.lr``, projections and temperature at ``training.head_lr``) under linear warm-up and
cosine decay, and writes the run directory: ``config.yaml``, ``run.json``, ``epochs.csv``
(train and val InfoNCE loss, val Recall@1/5 both ways, lr, temperature per epoch),
``plots/curves.png``, ``model.safetensors`` + ``model.json`` + ``text_model/``.

The validation loss is the InfoNCE of consecutive chunks of ``batch_size`` val pairs (the
loss depends on the number of negatives, so it is measured at the training batch size).
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrfuse.clip.checkpoint import save_clip_model
from cxrfuse.clip.data import make_collate
from cxrfuse.clip.embed import lock_towers, pair_dataset
from cxrfuse.clip.model import (
    ClipModel,
    Temperature,
    info_nce,
    load_text_tower,
    resolve_text_source,
)
from cxrfuse.clip.retrieval import recall_at_k
from cxrfuse.config import ClipConfig
from cxrfuse.data import check_patient_leakage
from cxrfuse.data.manifest import read_manifest
from cxrfuse.encoders import create_image_encoder
from cxrfuse.files import first_rank, folder_lock
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import CLIP_TASK, ClipFacts, Environment, RunDir, RunInfo
from cxrfuse.rundir.modelcard import write_model_card
from cxrfuse.runtime import environment_info, now_iso, quiet_lightning, seed_everything
from cxrfuse.training.tracking import HistoryLogging, make_logger

EPOCH_COLUMNS = ["epoch", "split", "loss", "r1_image_to_text", "r1_text_to_image",
                 "r5_image_to_text", "r5_text_to_image", "n", "lr", "temperature"]  # fmt: skip


def build_clip_model(config: ClipConfig) -> tuple[ClipModel, Any, dict[str, Any]]:
    """(model, tokenizer, sidecar fields) from the config; pretrained weights as configured."""
    image = create_image_encoder(config.image_encoder, weights=config.image.weights,
                                 input_size=config.image.input_size)  # fmt: skip
    source = resolve_text_source(config.text_encoder, config.text.pooling)
    tokenizer, text_model = load_text_tower(source, random_init=config.text.weights == "none")
    t = config.model.temperature
    model = ClipModel(image, text_model, pooling=source.pooling,
                      projection_dim=config.model.projection_dim,
                      temperature=Temperature(t.init, t.learn, t.min, t.max))  # fmt: skip
    model.freeze(config.image.freeze_blocks, config.text.freeze_blocks)
    sidecar = {
        "image": {"encoder": config.image_encoder, "weights": config.image.weights,
                  "design_encoder": config.image.encoder},
        "text": {"encoder": config.text_encoder, "source": source.source,
                 "weights": config.text.weights, "design_encoder": config.text.encoder,
                 "max_length": config.text.max_length,
                 "text_config": config.text.text_config().model_dump()},
    }  # fmt: skip
    return model, tokenizer, sidecar


def chunked_info_nce(image: torch.Tensor, text: torch.Tensor, temperature: float,
                     chunk: int) -> float:  # fmt: skip
    """Mean InfoNCE over consecutive chunks of ``chunk`` pairs, weighted by chunk size."""
    total, count = 0.0, 0
    for start in range(0, len(image), chunk):
        i, t = image[start : start + chunk], text[start : start + chunk]
        if len(i) < 2:
            continue
        total += float(info_nce(i, t, temperature)) * len(i)
        count += len(i)
    return total / count if count else float("nan")


class ClipModule(L.LightningModule):
    """Lightning wrapper: InfoNCE training steps, validation embeddings, epoch history."""

    def __init__(self, model: ClipModel, config: ClipConfig, steps_per_epoch: int) -> None:
        super().__init__()
        self.model, self.config, self.steps_per_epoch = model, config, steps_per_epoch
        self.history: list[dict[str, Any]] = []
        self._train_losses: list[tuple[float, int]] = []
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.best: tuple[int, float, dict[str, torch.Tensor]] | None = None

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, texts = batch  # inputs, or a locked tower's features
        loss = self.model(images, texts)
        self._train_losses.append((float(loss.detach()), len(images)))
        self.log("loss", loss.detach(), prog_bar=True, batch_size=len(images))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.model.temperature.clamp_()  # after the optimiser step

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        image, text = self.model.encode_pair(*batch)
        self._val.append((image.float().cpu(), text.float().cpu()))

    def on_validation_epoch_end(self) -> None:
        image = torch.cat([v[0] for v in self._val])
        text = torch.cat([v[1] for v in self._val])
        self._val = []
        temperature = float(self.model.temperature())
        recall = recall_at_k(image @ text.T, (1, 5))
        before = self.trainer.state.fn == "validate"
        epoch = 0 if before else self.current_epoch + 1
        row = {
            "epoch": epoch, "split": "val",
            "loss": chunked_info_nce(image, text, temperature, self.config.training.batch_size),
            "r1_image_to_text": recall["image_to_text"][1],
            "r1_text_to_image": recall["text_to_image"][1],
            "r5_image_to_text": recall["image_to_text"][5],
            "r5_text_to_image": recall["text_to_image"][5],
            "n": len(image), "lr": self._lr(), "temperature": temperature,
        }  # fmt: skip
        if not before and self._train_losses:
            n = sum(c for _, c in self._train_losses)
            train_loss = sum(v * c for v, c in self._train_losses) / n
            self.history.append({**dict.fromkeys(EPOCH_COLUMNS), "epoch": epoch,
                                 "split": "train", "loss": train_loss, "n": n,
                                 "lr": self._lr(), "temperature": temperature})  # fmt: skip
            self._train_losses = []
        self.history.append(row)
        self.log("val_loss", row["loss"], prog_bar=True)
        if not before and (self.best is None or row["loss"] < self.best[1]):
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = (epoch, row["loss"], state)

    def _lr(self) -> float | None:
        try:
            return float(self.trainer.optimizers[0].param_groups[0]["lr"])
        except (IndexError, AttributeError, RuntimeError):
            return None

    def configure_optimizers(self) -> Any:
        cfg = self.config.training
        heads = [*self.model.image_projection.parameters(), *self.model.text_projection.parameters()]
        encoders = [p for m in (self.model.image_encoder, self.model.text_model)
                    for p in m.parameters() if p.requires_grad]  # fmt: skip
        groups = [{"params": encoders, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
                  {"params": heads, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay}]
        temperature = [p for p in self.model.temperature.parameters() if p.requires_grad]
        if temperature:
            groups.append({"params": temperature, "lr": cfg.head_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        if cfg.schedule == "none":
            return optimizer
        total = max(1, cfg.max_epochs * self.steps_per_epoch)
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                          "interval": "step"}}  # fmt: skip


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear from 1/warmup to 1 over ``warmup`` steps, cosine to 0."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_precision(config: ClipConfig) -> tuple[str, str]:
    """(accelerator, precision): bf16-mixed on a GPU under ``auto``, 32-bit on the CPU."""
    accelerator = config.training.accelerator
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = config.training.precision
    if precision == "auto":
        precision = "bf16-mixed" if gpu else "32"
    return accelerator, precision


def write_epochs(history: list[dict[str, Any]], run: RunDir) -> Path:
    return run.write_epochs(pd.DataFrame(history, columns=EPOCH_COLUMNS))


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """InfoNCE loss (train, val) and val Recall@1/5 per epoch."""
    fig = new_figure(figsize=(10, 4))
    ax_loss, ax_r = fig.subplots(1, 2)
    for split, style in (("train", "o-"), ("val", "s-")):
        rows = [r for r in history if r["split"] == split]
        ax_loss.plot([r["epoch"] for r in rows], [r["loss"] for r in rows], style, label=split)
    val = [r for r in history if r["split"] == "val"]
    epochs = [r["epoch"] for r in val]
    for key, label in (("r1_image_to_text", "R@1 image->report"),
                       ("r1_text_to_image", "R@1 report->image"),
                       ("r5_image_to_text", "R@5 image->report"),
                       ("r5_text_to_image", "R@5 report->image")):  # fmt: skip
        ax_r.plot(epochs, [r[key] for r in val], ".-", label=label)
    if val and val[0]["n"]:
        n = val[0]["n"]
        ax_r.axhline(1 / n, color="grey", ls=":", label=f"chance R@1 (1/{n})")
        ax_r.axhline(min(1.0, 5 / n), color="grey", ls="--", label=f"chance R@5 (5/{n})")
    ax_loss.set(xlabel="epoch (0 = before training)", ylabel="InfoNCE loss", title="loss")
    ax_r.set(xlabel="epoch (0 = before training)", ylabel="recall (val)", title="retrieval",
             ylim=(0, 1))  # fmt: skip
    ax_loss.legend()
    ax_r.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=120)


def train_clip(config: ClipConfig, run_dir: Path | None = None) -> Path:
    """Train a CLIP model and write its run directory; returns the directory.

    A failure after the directory exists leaves ``run.json`` with ``status: "failed"`` and the
    error, and keeps the epochs written so far.
    """
    run = RunDir(run_dir or config.run_dir)
    lock = folder_lock(run.path, "the CLIP run directory") if first_rank() else nullcontext()
    with lock:
        return _train_locked(config, run)


def _train_locked(config: ClipConfig, run: RunDir) -> Path:
    """The body of :func:`train_clip` once this process may write ``run``."""
    run.write_config(config)
    t0 = time.perf_counter()
    info = RunInfo(name=config.name, kind="clip", status="running", task=CLIP_TASK,
                   started=now_iso(), seed=config.seed, clip=ClipFacts())  # fmt: skip
    run.write_info(info)
    module = None
    try:
        module = _fit(config, run, info)
        info.status = "finished"
    except BaseException as err:
        info.status, info.error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        if module is not None and module.history:
            write_epochs(module.history, run)
            plot_curves(module.history, run.clip_curves, config.name)
        info.finished, info.timing_s = now_iso(), round(time.perf_counter() - t0, 2)
        run.write_info(info)
    if first_rank():
        write_model_card(run.path)  # refreshed by `clip retrieve` / `clip zero-shot`
    return run.path


def _fit(config: ClipConfig, run: RunDir, info: RunInfo) -> ClipModule:
    """Train; fills ``info`` (counts, facts, environment) and saves the model into ``run``."""
    seed_everything(config.seed)
    manifest = read_manifest(config.data.manifest)
    check_patient_leakage(manifest, config.data.manifest)
    model, tokenizer, sidecar = build_clip_model(config)
    progress = config.training.progress
    train_set, truncated = pair_dataset(config, manifest, "train", model, tokenizer, progress)
    val_set, _ = pair_dataset(config, manifest, "val", model, tokenizer, progress)
    for name, dataset in (("train", train_set), ("val", val_set)):
        if len(dataset) < 2:
            raise DataError(f"{config.data.manifest}: {len(dataset)} {name} studies with an "
                            f"image and report text (dropped: {dataset.pairs.dropped}); "
                            "CLIP needs at least 2")  # fmt: skip
    cfg = config.training
    accelerator, precision = resolve_precision(config)
    if model.locked_image or model.locked_text:
        device = "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() \
            else "cpu"  # fmt: skip
        model.to(device)
        train_set, val_set = (lock_towers(model, d, tokenizer, cfg.batch_size, progress, device)
                              for d in (train_set, val_set))  # fmt: skip
        model.cpu()
    collate = make_collate(tokenizer)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                              collate_fn=collate, num_workers=cfg.num_workers,
                              generator=generator)  # fmt: skip
    if len(train_loader) == 0:
        raise CxrfuseError(f"training.batch_size={cfg.batch_size} exceeds the {len(train_set)} "
                           "training pairs; lower it")  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, collate_fn=collate,
                            num_workers=cfg.num_workers)  # fmt: skip
    module = ClipModule(model, config, len(train_loader))
    info.labels, info.modalities = train_set.pairs.label_names, ["image", "text"]
    info.images, info.manifest = manifest.images, str(config.data.manifest)
    info.n = {"train": len(train_set), "val": len(val_set)}
    info.environment = Environment(**environment_info(accelerator))
    facts = info.clip = ClipFacts(
        dropped={"train": train_set.pairs.dropped, "val": val_set.pairs.dropped},
        truncated_train_texts=truncated, precision=precision,
        locked={"image": model.locked_image, "text": model.locked_text},
        encoders={"image": config.image_encoder, "text": config.text_encoder},
    )  # fmt: skip
    with quiet_lightning(), warnings.catch_warnings():  # frozen blocks: eval mode on purpose
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        logger = make_logger(config, run)  # --tracking: params and every epoch's metrics
        trainer = L.Trainer(
            max_epochs=cfg.max_epochs, accelerator=accelerator, devices=cfg.devices,
            precision=precision, gradient_clip_val=cfg.gradient_clip,
            logger=logger if logger is not None else False,
            callbacks=[HistoryLogging()] if logger is not None else [],
            enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
            num_sanity_val_steps=0, deterministic=False,
        )  # fmt: skip
        trainer.validate(module, val_loader, verbose=False)
        trainer.fit(module, train_loader, val_loader)
    model.cpu().eval()
    if cfg.keep == "best" and module.best is not None:
        model.load_state_dict(module.best[2])
        facts.kept_epoch = module.best[0]
    else:
        facts.kept_epoch = module.history[-1]["epoch"]
    sidecar.update(labels=train_set.pairs.label_names, task=config.data.task,
                   images=manifest.images)  # fmt: skip
    save_clip_model(model, tokenizer, run, sidecar)
    val = [r for r in module.history if r["split"] == "val"]
    kept = next(r for r in val if r["epoch"] == facts.kept_epoch)
    facts.val_loss = {"before": val[0]["loss"], "after": kept["loss"]}
    facts.val_r5_image_to_text = {"before": val[0]["r5_image_to_text"],
                                  "after": kept["r5_image_to_text"], "chance": 5 / val[0]["n"]}
    return module
