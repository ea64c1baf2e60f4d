"""LoRA fine-tuning of a vision-language model on the training split's image-report pairs.

Design 001 fine-tunes Llama-3.2-11B-Vision-Instruct "to align text and visual features". Here
that is LoRA (peft) on the attention projections of the language model (optionally of the
vision tower too): the prompt of :mod:`cxrfuse.generation.prompts` (views, indication, optional
classifier findings) is the input, the study's findings + impression the target, and the loss
is the token-mean cross-entropy of the target tokens only (prompt and padding labels are -100;
gradient accumulation sums token losses over the whole window before dividing, so it equals
one big batch). The validation loss is computed the same way on the val split after every
epoch; the best epoch's adapter is kept and training stops after ``patience`` epochs without
improvement.

The output folder (written by :mod:`cxrfuse.generation.lora_io`)::

    adapter/             best epoch's adapter (adapter_model.safetensors, adapter_config.json)
    checkpoint/          last finished epoch: adapter, optimizer.safetensors, state.json
                         (epoch, scheduler, torch RNG, history, best), swapped in atomically
    epochs.csv           epoch, train_loss, val_loss, seconds
    curves.png           the loss curves
    finetune.json        settings, model, studies used and skipped, parameters, status

Rerunning the same call continues after the last finished epoch (a run killed mid-epoch
repeats that epoch from its start); ``epochs``, ``patience``, ``min_delta`` and ``device`` may
change between runs, any other setting is refused with the key named. No pickles: tensors go
to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from cxrfuse.config import TrackingConfig
from cxrfuse.data import Manifest
from cxrfuse.files import folder_lock
from cxrfuse.generation.lora_io import (
    EPOCH_COLUMNS,
    RESUMABLE_CHANGES,
    _nan_to_none,
    _Tracker,
    check_owned,
    check_resumable,
    find_checkpoint,
    load_adapter_weights,
    plot_curves,
    restore_checkpoint,
    save_adapter,
    save_checkpoint,
    write_epochs,
)
from cxrfuse.generation.prompts import build_messages, message_images, with_answer
from cxrfuse.generation.studies import (
    Selection,
    Study,
    batches_by_view_count,
    findings_for,
    load_views,
    select_studies,
)
from cxrfuse.generation.vlm import SEQUENCE_KEYS, VLM, encode, load_vlm, render
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import GenerationDir, LoraRunInfo
from cxrfuse.runtime import seed_everything

log = logging.getLogger(__name__)

LANGUAGE_TOWERS = ("language_model", "text_model")
VISION_TOWERS = ("vision_model", "vision_tower", "visual", "vision_encoder")


class LoraSettings(BaseModel):
    """LoRA fine-tuning settings. Unknown keys are rejected, naming the key."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])
    """Leaf names of the linear layers that get adapters (Qwen2-VL's vision tower: ``qkv``)."""
    include_vision: bool = False
    """Adapters in the vision tower too, not only in the language model."""
    target_regex: str | None = None
    """A peft regex (full match on module names) that replaces the two settings above."""
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(1, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    grad_accum: int = Field(8, ge=1)
    patience: int | None = Field(2, ge=1)
    """Epochs without a val-loss improvement before stopping; None trains every epoch."""
    min_delta: float = Field(0.0, ge=0)
    max_length: int = Field(1024, ge=8)
    max_grad_norm: float | None = Field(1.0, gt=0)
    gradient_checkpointing: bool = False
    seed: int = 0
    image_size: int | None = Field(None, ge=8)
    max_views: int | None = Field(2, ge=1)
    limit_train: int | None = Field(None, ge=1)
    limit_val: int | None = Field(None, ge=1)
    device: str = "auto"
    dtype: str = "auto"


# ---------------------------------------------------------------------------------- the model
def target_pattern(settings: LoraSettings) -> str:
    """The peft ``target_modules`` regex: chosen leaf names inside the chosen towers."""
    if settings.target_regex:
        return settings.target_regex
    towers = LANGUAGE_TOWERS + (VISION_TOWERS if settings.include_vision else ())
    leaves = "|".join(re.escape(name) for name in settings.target_modules)
    return rf"^(?:.*\.)?(?:{'|'.join(towers)})\..*\.(?:{leaves})$"


def _linear_leaves(model: torch.nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def enable_checkpointing(model: Any) -> None:
    """Recompute activations in the backward pass (non-reentrant: frozen inputs are fine)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model: Any) -> bool:
    """Whether activation (gradient) checkpointing is on for ``model``."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def add_lora(vlm: VLM, settings: LoraSettings) -> VLM:
    """Freeze ``vlm.model`` and wrap it with fresh LoRA adapters (in place; returns ``vlm``)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(vlm.model, PeftModel):
        raise CxrfuseError(f"model {vlm.name!r} already carries an adapter; fine-tune the base model")
    if settings.gradient_checkpointing:
        enable_checkpointing(vlm.model)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=target_pattern(settings), bias="none",
    )
    seed_everything(settings.seed)  # LoRA A matrices start random: seeded
    try:
        model = get_peft_model(vlm.model, config)
    except ValueError as exc:
        raise CxrfuseError(
            f"LoRA target modules matched nothing in {vlm.name!r} (pattern {config.target_modules!r}); "
            f"its linear layers are named {_linear_leaves(vlm.model)}"
        ) from exc
    wrapped = [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    in_vision = [n for n in wrapped if re.search(rf"(?:^|\.)(?:{'|'.join(VISION_TOWERS)})\.", n)]
    if settings.include_vision and not settings.target_regex and not in_vision:
        raise CxrfuseError(
            f"include_vision: no layer of the vision tower of {vlm.name!r} is named one of "
            f"{settings.target_modules}; its linear layers are named {_linear_leaves(vlm.model)}"
        )
    vlm.model = model
    return vlm


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------- batches
@dataclass
class Encoded:
    """One model-ready batch: the processor's tensors plus labels."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    n_target: int  # target tokens the loss counts (after the shift)


def encode_examples(
    vlm: VLM,
    studies: Sequence[Study],
    *,
    max_length: int,
    image_size: int | None = None,
    findings: Mapping[str, Sequence[str]] | None = None,
) -> Encoded:
    """Prompt + target conversations, right-padded, with the prompt and padding labels -100."""
    conversations = [
        build_messages(load_views(s, image_size), s.indication, findings_for(findings, s.study_id))
        for s in studies
    ]
    images = [message_images(c) for c in conversations]
    prompts = [render(vlm, c, generation_prompt=True) for c in conversations]
    fulls = [render(vlm, with_answer(c, s.reference), generation_prompt=False)
             for c, s in zip(conversations, studies, strict=True)]
    prompt_batch = encode(vlm, prompts, images, side="right")
    batch = encode(vlm, fulls, images, side="right")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    prompt_lengths = prompt_batch["attention_mask"].sum(dim=1).tolist()
    for i, (study, n) in enumerate(zip(studies, prompt_lengths, strict=True)):
        if not torch.equal(ids[i, :n], prompt_batch["input_ids"][i, :n]):
            raise CxrfuseError(
                f"the chat template of {vlm.name!r} does not render the prompt as the start of the "
                f"conversation (study {study.study_id}); the prompt tokens cannot be masked"
            )
        if n >= max_length:
            raise DataError(
                f"study {study.study_id}: the prompt alone is {n} tokens, max_length is {max_length}"
            )
        labels[i, :n] = -100
    inputs = {k: v for k, v in batch.items()}
    if ids.shape[1] > max_length:  # right padding: cutting the tail shortens targets only
        inputs = {k: v[:, :max_length] if k in SEQUENCE_KEYS else v for k, v in inputs.items()}
        labels = labels[:, :max_length]
    return Encoded(inputs=inputs, labels=labels, n_target=int((labels[:, 1:] != -100).sum()))


def target_loss_sum(model: torch.nn.Module, batch: Encoded) -> torch.Tensor:
    """Sum of the cross-entropy over the target tokens (float32)."""
    logits = model(**batch.inputs, use_cache=False).logits
    shifted = batch.labels[:, 1:].to(logits.device)
    keep = shifted != -100
    picked = logits[:, :-1][keep].float()
    return torch.nn.functional.cross_entropy(picked, shifted[keep], reduction="sum")


@torch.no_grad()
def mean_loss(
    vlm: VLM,
    studies: Sequence[Study],
    settings: LoraSettings,
    findings: Mapping[str, Sequence[str]] | None = None,
    *,
    progress: bool = False,
) -> float:
    """Token-mean target loss of ``studies`` (eval mode)."""
    vlm.model.eval()
    total, tokens = 0.0, 0
    batches = batches_by_view_count(studies, settings.eval_batch_size or settings.batch_size)
    for chunk in tqdm(batches, desc="val", unit="batch", disable=not progress, leave=False):
        batch = encode_examples(vlm, chunk, max_length=settings.max_length,
                                image_size=settings.image_size, findings=findings)
        total += float(target_loss_sum(vlm.model, batch))
        tokens += batch.n_target
    return total / tokens if tokens else math.nan


# ---------------------------------------------------------------------------------- training
def _lr_lambda(settings: LoraSettings, total_steps: int) -> Callable[[int], float]:
    warmup = settings.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if settings.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if settings.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def _select(manifest: Manifest, split: str, limit: int | None, settings: LoraSettings) -> Selection:
    selection = select_studies(manifest, split, limit=limit, max_views=settings.max_views,
                               require_reference=True)
    if not selection.studies:
        raise DataError(
            f"no {split} study has both an image on disk and findings or impression text "
            f"(skipped: {selection.skipped_counts() or 'none in the split'})"
        )
    return selection


def train_epoch(
    vlm: VLM,
    studies: Sequence[Study],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    settings: LoraSettings,
    epoch: int,
    findings: Mapping[str, Sequence[str]] | None,
    *,
    progress: bool,
) -> float:
    """One epoch; returns the token-mean training loss."""
    model = vlm.model
    model.train()
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
    batches = batches_by_view_count(studies, settings.batch_size, generator=generator)
    windows = [batches[i : i + settings.grad_accum] for i in range(0, len(batches), settings.grad_accum)]
    params = [p for _, p in trainable_parameters(model)]
    total, tokens = 0.0, 0
    bar = tqdm(windows, desc=f"epoch {epoch}/{settings.epochs}", unit="step", disable=not progress)
    for window in bar:
        encoded = [
            encode_examples(vlm, chunk, max_length=settings.max_length,
                            image_size=settings.image_size, findings=findings)
            for chunk in window
        ]
        n_window = sum(b.n_target for b in encoded)
        if n_window == 0:
            continue
        for batch in encoded:
            loss_sum = target_loss_sum(model, batch)
            (loss_sum / n_window).backward()
            total += float(loss_sum.detach())
        tokens += n_window
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{total / tokens:.4f}")
    return total / tokens if tokens else math.nan


def finetune_lora(
    model: str | VLM,
    manifest: Manifest,
    out_dir: str | Path,
    settings: LoraSettings | None = None,
    *,
    findings: Mapping[str, Sequence[str]] | None = None,
    progress: bool = True,
    tracking: TrackingConfig | None = None,
) -> Path:
    """Fine-tune LoRA adapters; return the folder of the best epoch's adapter.

    ``model`` is a hub id / folder, or a loaded :class:`VLM`: that one is fine-tuned in place
    and ends with the best epoch's adapter weights (``vlm.adapter`` names the folder).
    ``findings`` (study id -> classifier label names) puts design 001's two-stage line in
    the training prompts; pass the same to :func:`~cxrfuse.generation.vlm.generate_reports`.
    ``out_dir`` must be new, empty or an earlier fine-tuning's (:func:`check_owned`); the
    call holds its lock (``files.folder_lock``) while it writes. ``tracking`` logs the
    settings and every epoch's losses to MLflow, TensorBoard or CSV, as training runs do.
    """
    settings = settings or LoraSettings()
    gen = GenerationDir(out_dir)
    check_owned(gen)
    with folder_lock(gen.path, "the generation directory"):
        check_owned(gen)  # as it is now that this call holds the lock
        return _finetune(model, manifest, gen, settings, findings, progress, tracking)


def _finetune(model: str | VLM, manifest: Manifest, gen: GenerationDir, settings: LoraSettings,
              findings: Mapping[str, Sequence[str]] | None, progress: bool,
              tracking: TrackingConfig | None) -> Path:  # fmt: skip
    out = gen.path
    vlm = model if isinstance(model, VLM) else load_vlm(model, device=settings.device,
                                                          dtype=settings.dtype)
    train = _select(manifest, "train", settings.limit_train, settings)
    val = _select(manifest, "val", settings.limit_val, settings)
    for study in [*train.studies, *val.studies]:
        findings_for(findings, study.study_id)
    use_cache = getattr(vlm.model.config, "use_cache", None)
    if use_cache is not None:
        vlm.model.config.use_cache = False  # no KV cache while training
    add_lora(vlm, settings)
    params = trainable_parameters(vlm.model)
    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=settings.lr, weight_decay=settings.weight_decay
    )
    n_batches = len(batches_by_view_count(train.studies, settings.batch_size))
    steps_per_epoch = math.ceil(n_batches / settings.grad_accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(settings, steps_per_epoch * settings.epochs)
    )
    state: dict[str, Any] = {
        "model": vlm.name, "settings": settings.model_dump(), "epoch": 0, "history": [],
        "best_epoch": None, "best_val_loss": None, "bad_epochs": 0, "stopped": False,
    }
    checkpoint = find_checkpoint(out)
    if checkpoint is not None:
        previous = json.loads((checkpoint / "state.json").read_text())
        check_resumable(previous, settings, vlm.name)
        state = restore_checkpoint(checkpoint, vlm.model, optimizer, scheduler)
        state["settings"] = settings.model_dump()
        log.info("resuming %s after epoch %d", out, state["epoch"])
    else:
        seed_everything(settings.seed)  # dropout masks: seeded, and restored on resume
    n_params = sum(p.numel() for p in vlm.model.parameters())
    n_trainable = sum(p.numel() for _, p in params)

    def record(status: str, seconds: float | None) -> LoraRunInfo:
        return LoraRunInfo(
            model=vlm.name, settings=settings.model_dump(), target_modules=target_pattern(settings),
            status=status, epochs_done=state["epoch"], best_epoch=state["best_epoch"],
            best_val_loss=_nan_to_none(state["best_val_loss"]), history=state["history"],
            studies={"train": len(train.studies), "val": len(val.studies)},
            skipped={"train": train.skipped_counts(), "val": val.skipped_counts()},
            parameters=n_params, trainable_parameters=n_trainable, trainable_tensors=len(params),
            device=str(vlm.device), dtype=str(vlm.dtype).removeprefix("torch."),
            seconds_this_call=seconds, steps_per_epoch=steps_per_epoch,
        )

    gen.write_lora_info(record("running", None))  # the folder is this fine-tuning's from now on
    tracker = _Tracker(tracking, gen, vlm.name, settings)
    for row in state["history"]:  # a resumed call's tracker run shows the whole curve
        tracker.epoch(row)
    started = time.perf_counter()
    try:
        for epoch in range(state["epoch"] + 1, settings.epochs + 1):
            if state["stopped"]:
                break
            t0 = time.perf_counter()
            train_loss = train_epoch(vlm, train.studies, optimizer, scheduler, settings, epoch,
                                     findings, progress=progress)
            val_loss = mean_loss(vlm, val.studies, settings, findings, progress=progress)
            row = {"epoch": epoch, "train_loss": _nan_to_none(train_loss), "val_loss": _nan_to_none(val_loss),
                   "seconds": round(time.perf_counter() - t0, 3)}
            state["history"].append(row)
            state["epoch"] = epoch
            best = state["best_val_loss"]
            if best is None or val_loss < best - settings.min_delta:
                state.update(best_epoch=epoch, best_val_loss=val_loss, bad_epochs=0)
                save_adapter(vlm.model, gen.adapter_dir, {"model": vlm.name, "epoch": epoch,
                                                          "val_loss": val_loss})
            else:
                state["bad_epochs"] += 1
                if settings.patience is not None and state["bad_epochs"] >= settings.patience:
                    state["stopped"] = True
            log.info("epoch %d: train loss %.4f, val loss %.4f", epoch, train_loss, val_loss)
            save_checkpoint(out, vlm.model, optimizer, scheduler, state)
            write_epochs(gen, state["history"])
            plot_curves(gen, state["history"], state["best_epoch"])
            tracker.epoch(row)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            gen.write_lora_info(record("failed", None))  # the epochs done stay resumable
        tracker.fail()  # the tracker run ends as failed, not left running
        raise
    adapter_dir = gen.adapter_dir
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        raise CxrfuseError(f"{out}: no adapter was saved (no epoch finished)")
    load_adapter_weights(vlm.model, adapter_dir)  # the in-memory model = the kept adapter
    vlm.model.eval()
    if use_cache is not None:
        vlm.model.get_base_model().config.use_cache = use_cache
    vlm.adapter = str(adapter_dir)
    info = record("early-stopped" if state["stopped"] else "finished",
                  round(time.perf_counter() - started, 3))
    gen.write_lora_info(info)
    tracker.finish(info, gen)
    return adapter_dir


__all__ = ["EPOCH_COLUMNS", "RESUMABLE_CHANGES", "Encoded", "LoraSettings", "add_lora",
           "encode_examples", "finetune_lora", "is_checkpointing", "mean_loss", "target_loss_sum",
           "target_pattern", "train_epoch", "trainable_parameters"]
