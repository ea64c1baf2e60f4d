"""Radiology reports from a Hugging Face vision-language model (design 001's second stage).

Any image-text-to-text model that transformers' auto classes load works, by hub id or local
folder: ``meta-llama/Llama-3.2-11B-Vision-Instruct`` (design 001), LLaVA, Qwen2-VL, MedGemma,
... The prompt is built by :mod:`cxrfuse.generation.prompts` and rendered by the processor's
own chat template; prompts are batched with left padding (decoder-only generation continues
from the last position of every row), decoding is greedy unless ``num_beams`` > 1.

``load_vlm`` puts the model on the GPU in bfloat16 when there is one and in float32 on the
CPU (small models work there). ``adapter`` adds a LoRA adapter written by
:func:`cxrfuse.generation.lora.finetune_lora` (peft's ``PeftModel.from_pretrained``).

Offline, a hub id that is not in the local cache fails with one :class:`CxrfuseError` line that
names the model and how to get it; weights are never replaced by random ones.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrfuse import runtime
from cxrfuse.data import Manifest
from cxrfuse.encoders.hub import is_offline
from cxrfuse.generation.prompts import INSTRUCTION, build_messages, message_images, prompt_text
from cxrfuse.generation.studies import (
    batches_by_view_count,
    findings_for,
    load_views,
    select_studies,
)
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import GenerationDir

log = logging.getLogger(__name__)

GENERATED_COLUMNS = ("study_id", "split", "generated", "reference", "prompt", "model", "views")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
# Inputs whose second dimension is the token sequence (cut together when truncating).
SEQUENCE_KEYS = (
    "input_ids", "attention_mask", "labels", "token_type_ids", "mm_token_type_ids",
    "cross_attention_mask",
)


@dataclass
class VLM:
    """A loaded vision-language model: the model (a peft model with an adapter), its processor."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    name: str
    adapter: str | None = None

    @property
    def label(self) -> str:
        """``name`` or ``name + adapter DIR``: the ``model`` column of generated reports."""
        return self.name if self.adapter is None else f"{self.name} + adapter {self.adapter}"

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


# ---------------------------------------------------------------------------------- loading
def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU
    (:func:`cxrfuse.runtime.resolve_device`, with an unknown name refused by name)."""
    try:
        return runtime.resolve_device(device)
    except RuntimeError as exc:
        raise CxrfuseError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise CxrfuseError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1


def _how_to_get(model: str) -> str:
    return (
        f"on a machine with internet access run `hf download {model} --local-dir DIR` "
        f"(older huggingface_hub: `huggingface-cli download {model} --local-dir DIR`), copy DIR "
        "here and pass its path; gated models (meta-llama/*, google/medgemma-*) need their licence "
        "accepted on huggingface.co and `hf auth login` first"
    )


def _check_source(model: str) -> str:
    """The local folder or hub id to load; errors for missing or incomplete folders."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CxrfuseError(f"model {model!r} is a file; pass a Hugging Face model folder or hub id")
        if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
            raise CxrfuseError(
                f"{model!r} is a LoRA adapter folder, not a model; pass the base model as the "
                "model and this folder as the adapter"
            )
        if not (path / "config.json").is_file():
            raise CxrfuseError(
                f"model folder {model!r} has no config.json: not a Hugging Face model folder; "
                + _how_to_get("<hub id>")
            )
        return str(path)
    if _looks_like_path(model):
        raise CxrfuseError(f"model folder {model!r} does not exist; {_how_to_get('<hub id>')}")
    return model


def _load_failure(model: str, exc: Exception, offline: bool) -> CxrfuseError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "gated" in str(exc).lower() or "401" in str(exc) or "403" in str(exc):
        return CxrfuseError(f"model {model!r} is gated or needs a login ({first}); {_how_to_get(model)}")
    if isinstance(exc, ValueError) and "Unrecognized configuration class" in str(exc):
        return CxrfuseError(
            f"model {model!r} is not an image-text-to-text model that "
            f"AutoModelForImageTextToText knows ({first})"
        )
    where = "offline mode is on" if offline else "the hub could not be used"
    return CxrfuseError(
        f"cannot load vision-language model {model!r}: not a local folder and not in the "
        f"Hugging Face cache, and {where} ({first}); {_how_to_get(model)}"
    )


def load_vlm(
    model: str,
    *,
    adapter: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    offline: bool | None = None,
) -> VLM:
    """Load an image-text-to-text model and its processor (and a LoRA adapter) for generation.

    ``offline`` (default: :func:`is_offline`) uses local folders and the Hugging Face cache only.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    source = _check_source(model)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    offline = is_offline() if offline is None else offline
    local = {"local_files_only": True} if offline else {}
    try:
        AutoConfig.from_pretrained(source, **local)  # the cheapest file first: fails fast
        processor = AutoProcessor.from_pretrained(source, **local)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, **local}
        if torch_device.type == "cuda":
            kwargs["device_map"] = str(torch_device)  # straight onto the GPU, no CPU copy
        net = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_failure(model, exc, offline) from exc
    if not hasattr(processor, "apply_chat_template") or not getattr(processor, "chat_template", None):
        raise CxrfuseError(f"the processor of model {model!r} has no chat template")
    net = net.to(torch_device).eval()
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:  # Llama-style tokenizers without a pad token
        tokenizer.pad_token = tokenizer.eos_token
    vlm = VLM(model=net, processor=processor, device=torch_device, dtype=torch_dtype, name=model)
    if adapter is not None:
        attach_adapter(vlm, adapter)
    return vlm


def attach_adapter(vlm: VLM, adapter: str | Path) -> VLM:
    """Wrap ``vlm.model`` with the LoRA adapter in folder ``adapter`` (peft)."""
    from peft import PeftModel

    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise CxrfuseError(
            f"adapter folder {str(adapter)!r} has no adapter_config.json; pass the adapter/ "
            "folder that `generate finetune` writes"
        )
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base and Path(str(base)).name != Path(vlm.name).name:
        log.warning("adapter %s was trained on %s, loading it on %s", folder, base, vlm.name)
    try:
        vlm.model = PeftModel.from_pretrained(vlm.model, str(folder)).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CxrfuseError(f"cannot load adapter {str(adapter)!r} on {vlm.name!r}: {exc}") from exc
    vlm.adapter = str(adapter)
    return vlm


# ---------------------------------------------------------------------------------- encoding
@contextmanager
def padding_side(vlm: VLM, side: str) -> Iterator[None]:
    """Pad on ``side`` inside the block (left for generation, right for training)."""
    tokenizer = vlm.tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def render(vlm: VLM, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool) -> str:
    """The prompt string the model's chat template makes of ``messages``."""
    return vlm.processor.apply_chat_template(
        list(messages), add_generation_prompt=generation_prompt, tokenize=False
    )


def encode(
    vlm: VLM, texts: Sequence[str], images: Sequence[Sequence[Any]], *, side: str
) -> Any:
    """Tokenise rendered prompts with their images into one padded batch on the model's device.

    ``add_special_tokens=False``: the chat template already wrote the special tokens.
    """
    with padding_side(vlm, side):
        batch = vlm.processor(
            text=list(texts),
            images=[list(im) for im in images] if any(images) else None,
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
        )
    return batch.to(vlm.device, dtype=vlm.dtype)


def generation_config(vlm: VLM, *, max_new_tokens: int, num_beams: int) -> Any:
    """The model's generation config, made deterministic: greedy or beam search, no sampling."""
    base = getattr(vlm.model, "generation_config", None)
    if base is None:
        from transformers import GenerationConfig

        base = GenerationConfig()
    config = copy.deepcopy(base)
    config.do_sample = False
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
        if hasattr(config, name):
            setattr(config, name, None)
    config.num_beams = num_beams
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    if config.pad_token_id is None:
        config.pad_token_id = vlm.tokenizer.pad_token_id
    return config


@torch.inference_mode()
def generate_texts(
    vlm: VLM,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    max_new_tokens: int = 256,
    num_beams: int = 1,
) -> tuple[list[str], int]:
    """Generate one answer per conversation as one left-padded batch; (texts, new tokens)."""
    texts = [render(vlm, m, generation_prompt=True) for m in conversations]
    batch = encode(vlm, texts, [message_images(m) for m in conversations], side="left")
    config = generation_config(vlm, max_new_tokens=max_new_tokens, num_beams=num_beams)
    output = vlm.model.generate(**batch, generation_config=config)
    new = output[:, batch["input_ids"].shape[1] :]
    pad = config.pad_token_id
    n_tokens = int((new != pad).sum()) if pad is not None else int(new.numel())
    decoded = vlm.processor.batch_decode(new, skip_special_tokens=True)
    return [t.strip() for t in decoded], n_tokens


# ---------------------------------------------------------------------------------- reports
def generate_reports(
    vlm: VLM,
    manifest: Manifest,
    *,
    split: str | Sequence[str] = "test",
    limit: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    findings: Mapping[str, Sequence[str]] | None = None,
    image_size: int | None = None,
    progress: bool = True,
    num_beams: int = 1,
    max_views: int | None = 2,
) -> pd.DataFrame:
    """One generated report per study of ``split`` that has an image.

    Columns :data:`GENERATED_COLUMNS`; ``frame.attrs["generation"]`` holds the settings,
    throughput and the skipped studies (``skipped``: reason -> count, ``skipped_studies``).
    ``findings`` (study id -> label names a classifier predicted) adds design 001's
    two-stage line to every prompt.
    """
    if batch_size < 1 or max_new_tokens < 1 or num_beams < 1:
        raise CxrfuseError("batch_size, max_new_tokens and num_beams must be at least 1")
    selection = select_studies(manifest, split, limit=limit, max_views=max_views)
    for study in selection.studies:  # a missing classifier entry fails before any work
        findings_for(findings, study.study_id)
    rows: list[dict[str, Any]] = []
    n_tokens, gen_seconds, start = 0, 0.0, time.perf_counter()
    bar = tqdm(total=len(selection.studies), desc="generate", unit="report", disable=not progress)
    for chunk in batches_by_view_count(selection.studies, batch_size):
        ready, conversations = [], []
        for study in chunk:
            try:
                views = load_views(study, image_size)
            except DataError as exc:
                selection.skipped[study.study_id] = "unreadable image"
                log.warning("skipping study %s: %s", study.study_id, exc)
                continue
            found = findings_for(findings, study.study_id)
            ready.append((study, prompt_text([v for v, _ in views], study.indication, found)))
            conversations.append(build_messages(views, study.indication, found))
        if conversations:
            t0 = time.perf_counter()
            texts, tokens = generate_texts(
                vlm, conversations, max_new_tokens=max_new_tokens, num_beams=num_beams
            )
            gen_seconds += time.perf_counter() - t0
            n_tokens += tokens
            for (study, prompt), text in zip(ready, texts, strict=True):
                rows.append({
                    "study_id": study.study_id, "split": study.split, "generated": text,
                    "reference": study.reference, "prompt": prompt, "model": vlm.label,
                    "views": ",".join(v for v, _ in study.views),
                })
        bar.update(len(chunk))
    bar.close()
    seconds = time.perf_counter() - start
    order = {s.study_id: i for i, s in enumerate(selection.studies)}
    rows.sort(key=lambda r: order[r["study_id"]])  # back to manifest order
    frame = pd.DataFrame(rows, columns=list(GENERATED_COLUMNS))
    if selection.skipped:
        log.warning("skipped %d studies: %s", len(selection.skipped), selection.skipped_counts())
    frame.attrs["generation"] = {
        "model": vlm.name, "adapter": vlm.adapter, "device": str(vlm.device),
        "dtype": str(vlm.dtype).removeprefix("torch."),
        "split": split if isinstance(split, str) else list(split), "limit": limit,
        "batch_size": batch_size, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
        "decoding": "greedy" if num_beams == 1 else f"beam search ({num_beams} beams)",
        "image_size": image_size, "max_views": max_views,
        "classifier_findings": findings is not None, "instruction": INSTRUCTION,
        "n_reports": len(frame), "skipped": selection.skipped_counts(),
        "skipped_studies": dict(list(selection.skipped.items())[:200]),
        "seconds": round(seconds, 3), "generate_seconds": round(gen_seconds, 3),
        "reports_per_second": len(frame) / seconds if seconds > 0 else None,
        "new_tokens_per_second": n_tokens / gen_seconds if gen_seconds > 0 else None,
    }
    return frame


def write_generated(
    frame: pd.DataFrame, out_dir: str | Path, settings: Mapping[str, Any] | None = None
) -> Path:
    """Write ``generated.parquet`` and ``generation.json`` (the frame's settings + ``settings``)
    through :meth:`GenerationDir.write_generated`, the one writer of both."""
    missing = [c for c in GENERATED_COLUMNS[:-1] if c not in frame.columns]
    if missing:
        raise DataError(f"generated reports lack column(s) {missing}")
    payload = {**frame.attrs.get("generation", {}), **dict(settings or {})}
    return GenerationDir(out_dir).write_generated(frame, payload)
