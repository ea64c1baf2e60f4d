"""The prepared GPU check (issue 16): every GPU figure of cxrfuse in one run of < 9 minutes.

Steps (each writes its figures; a failure or timeout is recorded and the next step runs):

- ``embed-densenet121`` / ``embed-resnet50``: xrv DenseNet-121 and ResNet-50 (random weights,
  no hub) image embedding at 224 px: the bare forward in fp32, bf16 autocast, bf16 +
  channels_last and bf16 + channels_last + torch.compile; the store from the decoded-image
  cache and from full-resolution PNG (compile off and on); the decode ceiling of the
  machine's cores (all processes decoding + resizing, no model), all in the same run;
- ``fusion-head-epoch``: one epoch of the concat-MLP head through ``train_run`` on 100k
  cached studies (random arrays shaped like two DenseNet views + a BERT vector);
- ``finetune-resnet50``: fine-tuning steps of ResNet-50 + head at 224 px (images/s, peak
  memory), bf16 autocast, channels_last;
- ``clip-step``: CLIP training steps, ViT-B/16 + BERT-base with random weights;
- ``generation``: reports/s of the tiny random Mllama of the tests and a LoRA step;
- ``lightning-ddp``: ``train_run`` with ``strategy: ddp`` on one device (one process);
- ``distributed-extraction``: ``embed_images`` inside an initialised process group of one
  rank (nccl on GPU, gloo on CPU);
- ``text-embed``: report-embedding throughput (reports/s) for MIMIC-CXR's 228k reports:
  MiniLM-L6-shaped and BERT-base-shaped encoders (random weights, no hub) on synthetic token
  ids of 128 tokens, bf16 autocast and fp32, and cxrfuse's ``minilm`` encoder (tokenizer,
  chunking, pooling) on synthetic report texts when its weights package is installed.

``--dry-run`` runs every step at toy size on the CPU in this process (CI calls it through
``benchmarks/gpu_suite.sh --dry-run``, so the script cannot rot); on a GPU each step runs in
its own process with a hard timeout. Writes ``gpu_suite.json`` and ``gpu_suite.md`` to --out.

    bash benchmarks/gpu_suite.sh --out gpu-results            # on the GPU machine
    bash benchmarks/gpu_suite.sh --dry-run --out /tmp/dry     # anywhere, ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from _common import image_paths, sync

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TOTAL_BUDGET_S = 495  # all steps together (the 8 minutes + 45 s of text embedding, less install and header)


@dataclass(frozen=True)
class Scale:
    """Sizes of one run: the GPU run's or the dry run's toy sizes."""

    images: int  # phantom PNGs per embedding step
    png_size: int  # their side (px)
    input_size: int  # model input (px)
    batch: int  # embedding batch
    forward_batches: int  # timed batches of the bare forward
    compile_backend: str  # torch.compile backend ("eager" traces without code generation)
    head_studies: int  # studies of the fusion-head epoch
    finetune_encoder: str  # ResNet-50 on the GPU; a smaller ResNet in the dry run
    finetune_batch: int
    finetune_size: int
    clip_batch: int
    clip_tokens: int
    clip_tiny_text: bool  # a 2-layer BERT instead of BERT-base
    clip_image_size: int
    clip_image_encoder: str  # ViT-B/16 on the GPU
    steps: int  # timed training steps
    warmup: int  # untimed calls before each timing
    vlm_reports: int
    vlm_tokens: int
    ddp_studies: int
    dist_images: int
    text_reports: int = 228_000  # reports of the MiniLM-shaped pass (MIMIC-CXR's studies)
    text_sample: int = 65_536  # reports of the BERT-base and fp32 passes (rate, then projected)
    text_tokens: int = 128  # tokens a report (padded), MIMIC findings+impression's bulk
    text_batch: int = 512


GPU = Scale(images=4096, png_size=1024, input_size=224, batch=256, forward_batches=20,
            compile_backend="inductor", head_studies=100_000, finetune_encoder="resnet50", finetune_batch=128,
            finetune_size=224, clip_batch=128, clip_tokens=128, clip_tiny_text=False,
            clip_image_size=224, clip_image_encoder="vit-b-16", steps=10, warmup=3, vlm_reports=32, vlm_tokens=64, ddp_studies=20_000,
            dist_images=1024)  # fmt: skip
TOY = Scale(images=8, png_size=96, input_size=32, batch=4, forward_batches=1,
            compile_backend="eager", head_studies=400, finetune_encoder="resnet18",
            finetune_batch=2, finetune_size=32, clip_batch=2, clip_tokens=8, clip_tiny_text=True,
            clip_image_size=32, clip_image_encoder="resnet18", steps=1, warmup=1,
            vlm_reports=2, vlm_tokens=4, ddp_studies=200, dist_images=8, text_reports=32,
            text_sample=16, text_tokens=16, text_batch=16)  # fmt: skip

# Hard per-step timeouts (seconds) on the GPU run; the sum stays within TOTAL_BUDGET_S.
BUDGET_S = {
    "embed-densenet121": 150,
    "embed-resnet50": 110,
    "fusion-head-epoch": 40,
    "finetune-resnet50": 30,
    "clip-step": 35,
    "generation": 30,
    "distributed-extraction": 25,
    "lightning-ddp": 30,
    "text-embed": 45,
}
STEPS = list(BUDGET_S)


# ----------------------------------------------------------------------------- helpers
PARTIAL: dict[str, Any] = {}  # in a step's child process: where and what to record so far


def record(figures: dict[str, Any]) -> None:
    """Save a step's figures so far, so a step killed at its timeout keeps what it measured."""
    path = PARTIAL.get("path")
    if path is not None:
        partial = {"step": PARTIAL["step"], "status": "timeout", "seconds": None,
                   "figures": figures, "error": "killed at its timeout; figures so far"}  # fmt: skip
        Path(path).write_text(json.dumps(partial, indent=2, default=str))


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def median_step_s(step: Callable[[], None], device: torch.device, steps: int,
                  warmup: int) -> float:  # fmt: skip
    """Median seconds of ``step`` over ``steps`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def phantoms(work: Path, n: int, size: int) -> tuple[Any, list[str]]:
    """``n`` phantom PNGs of ``size`` px under ``work`` (made once, reused by later steps)."""
    from embed_throughput import make_data

    from cxrfuse.data.manifest import read_manifest

    folder = work / f"phantoms-{n}-{size}px"
    if (folder / "manifest.parquet").is_file():
        manifest = read_manifest(folder / "manifest.parquet")
        return manifest, image_paths(manifest)
    return make_data(folder, n, size)


# ----------------------------------------------------------------------------- steps
def step_embed(name: str, scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """Bare forward variants, store from cache and from PNG, and the decode ceiling."""
    from embed_throughput import decode_ceiling, store_run

    from cxrfuse.data.images import decode_resized
    from cxrfuse.encoders import create_image_encoder
    from cxrfuse.encoders.image import to_model_input

    manifest, paths = phantoms(work, scale.images, scale.png_size)
    encoder = create_image_encoder(name, weights="none", device=device,
                                   input_size=scale.input_size)  # fmt: skip
    size = encoder.spec.input_size
    pixels = torch.stack([torch.from_numpy(decode_resized(p, size)) for p in paths[: scale.batch]])
    if len(pixels) < scale.batch:
        pixels = pixels.repeat(-(-scale.batch // len(pixels)), 1, 1)[: scale.batch]
    x = to_model_input(pixels.to(device), encoder.spec)
    forward: dict[str, float] = {}
    store: dict[str, float] = {}
    out: dict[str, Any] = {"encoder": name, "input_size": size, "batch": scale.batch,
                           "images": len(paths), "png_size": scale.png_size,
                           "bare_forward_images_per_s": forward,
                           "store_images_per_s": store}  # fmt: skip
    variants = [("fp32", False, False, False), ("bf16", True, False, False),
                ("bf16+channels_last", True, True, False),
                ("bf16+channels_last+compile", True, True, True)]  # fmt: skip
    for label, bf16, channels_last, compiled in variants:
        encoder.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        model = torch.compile(encoder, backend=scale.compile_backend) if compiled else encoder
        with torch.inference_mode(), autocast(device, bf16):
            seconds = median_step_s(lambda: model(xin), device, scale.forward_batches,  # noqa: B023
                                    scale.warmup)  # fmt: skip
        forward[label] = scale.batch / seconds
        record(out)
    encoder.to(memory_format=torch.contiguous_format)
    args = SimpleNamespace(batch_size=scale.batch, compile=False,
                           workers=_store_workers(device))  # fmt: skip
    out["store_workers"] = args.workers
    cache = work / f"cache-{name}"
    store_run(manifest, encoder, work / f"fill-{name}", args, device, cache)  # fills the cache
    store["from_cache"] = store_run(manifest, encoder, work / f"d-{name}", args, device, cache)
    store["from_png"] = store_run(manifest, encoder, work / f"b-{name}", args, device)
    out["decode_ceiling_images_per_s"] = ceiling = decode_ceiling(paths, size, os.cpu_count() or 1)
    record(out)
    if device.type == "cuda":  # inductor compiles outside the timing: a first small run
        args.compile = True
        head = manifest.replace(df=manifest.df.iloc[: scale.batch // 2 + 1])
        store_run(head, encoder, work / f"warm-{name}", args, device)
        store["from_cache_compiled"] = store_run(manifest, encoder, work / f"dc-{name}", args,
                                                 device, cache)  # fmt: skip
        record(out)
        store["from_png_compiled"] = store_run(manifest, encoder, work / f"bc-{name}", args,
                                               device)  # fmt: skip
    best_png = max(v for k, v in store.items() if k.startswith("from_png"))
    best_cache = max(v for k, v in store.items() if k.startswith("from_cache"))
    out["png_over_decode_ceiling"] = best_png / ceiling
    out["targets"] = {"from_cache >= 5000 images/s": best_cache >= 5000,
                      "from_png >= 0.7 x decode ceiling": best_png >= 0.7 * ceiling}  # fmt: skip
    return out


def _store_workers(device: torch.device) -> int:
    from cxrfuse.store import default_workers

    return default_workers(device)


def step_fusion_head(scale: Scale, device: torch.device, work: Path,
                     strategy: str = "auto") -> dict[str, Any]:  # fmt: skip
    """One epoch of the concat-MLP head through ``train_run`` on cached study arrays."""
    from train_speed import random_arrays

    from cxrfuse.config import RunConfig
    from cxrfuse.rundir import RunDir
    from cxrfuse.training import StoredEmbeddings, train_run

    n = scale.head_studies if strategy == "auto" else scale.ddp_studies
    training: dict[str, Any] = {"max_epochs": 1, "early_stopping": None, "batch_size": 64,
                                "accelerator": "gpu" if device.type == "cuda" else "cpu",
                                "devices": 1, "strategy": strategy}  # fmt: skip
    config = RunConfig(name=f"head-{strategy}", model={"kind": "concat-mlp", "hidden": [256]},
                       image={"views": "mean"}, training=training)  # fmt: skip
    arrays = random_arrays(n, 2, 1024, 768, prevalence=0.3)
    run_dir = work / f"run-{strategy}"
    run_dir.mkdir(parents=True, exist_ok=True)
    reset_peak(device)
    start = time.perf_counter()
    try:
        train_run(config, progress=False, source=StoredEmbeddings(config, progress=False,
                                                                  arrays=arrays), run_dir=run_dir)  # fmt: skip
    finally:
        _leave_process_group()
    seconds = time.perf_counter() - start
    info = RunDir(run_dir).info().model_dump()
    return {"studies": n, "train_studies": info["n"]["train"], "epochs": info["fit"]["epochs_run"],
            "batch_size": 64, "strategy": strategy, "train_run_seconds": round(seconds, 2),
            "studies_per_s_whole_run": round(n / seconds, 1),
            "peak_gpu_memory_gib": peak_memory_gib(device)}  # fmt: skip


def _leave_process_group() -> None:
    from cxrfuse.store.distributed import shutdown

    shutdown()


def step_finetune(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """Fine-tuning steps of ResNet-50 + a concat-MLP head on uint8 views (images/s, memory)."""
    from cxrfuse.encoders import create_image_encoder
    from cxrfuse.fusion.heads import build_head
    from cxrfuse.training.finetune import FinetuneModel

    encoder = create_image_encoder(scale.finetune_encoder, weights="none",
                                   input_size=scale.finetune_size)  # fmt: skip
    head = build_head("concat-mlp", modalities=["image"], n_outputs=14,
                      image_dim=encoder.feature_dim, n_views=1, hidden=[256])  # fmt: skip
    model = FinetuneModel(encoder.requires_grad_(True), head).to(device).train()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size, b = scale.finetune_size, scale.finetune_batch
    images = torch.randint(0, 256, (b, 1, size, size), dtype=torch.uint8, device=device)
    mask = torch.ones((b, 1), dtype=torch.bool, device=device)
    targets = torch.randint(0, 2, (b, 14), device=device).float()
    reset_peak(device)

    def step() -> None:
        with autocast(device, device.type == "cuda"):
            logits = model(images, mask)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_step_s(step, device, scale.steps, scale.warmup)
    return {"encoder": scale.finetune_encoder, "batch": b, "input_size": size, "precision": "bf16" if device.type == "cuda" else "fp32",
            "step_s": round(seconds, 4), "images_per_s": round(b / seconds, 1),
            "peak_gpu_memory_gib": peak_memory_gib(device)}  # fmt: skip


def step_clip(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """CLIP training steps: ViT-B/16 + BERT (random weights), InfoNCE, AdamW."""
    from transformers import BertConfig, BertModel

    from cxrfuse.clip.model import ClipModel
    from cxrfuse.encoders import create_image_encoder
    from cxrfuse.encoders.image import to_model_input

    image = create_image_encoder(scale.clip_image_encoder, weights="none",
                                 input_size=scale.clip_image_size)  # fmt: skip
    text_config = (BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64) if scale.clip_tiny_text else BertConfig())  # fmt: skip
    model = ClipModel(image.requires_grad_(True), BertModel(text_config), pooling="cls",
                      projection_dim=512).to(device).train()  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    b, size = scale.clip_batch, scale.clip_image_size
    pixels = torch.randint(0, 256, (b, size, size), dtype=torch.uint8, device=device)
    images = to_model_input(pixels, image.spec)
    tokens = {"input_ids": torch.randint(1000, text_config.vocab_size, (b, scale.clip_tokens),
                                         device=device),
              "attention_mask": torch.ones((b, scale.clip_tokens), dtype=torch.long,
                                           device=device)}  # fmt: skip
    reset_peak(device)

    def step() -> None:
        with autocast(device, device.type == "cuda"):
            loss = model(images, tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_step_s(step, device, scale.steps, scale.warmup)
    text = "BERT-base" if not scale.clip_tiny_text else "2-layer BERT (dry run)"
    return {"image_tower": scale.clip_image_encoder, "text_tower": text, "batch": b, "tokens": scale.clip_tokens,
            "step_s": round(seconds, 4), "pairs_per_s": round(b / seconds, 1),
            "peak_gpu_memory_gib": peak_memory_gib(device)}  # fmt: skip


def step_generation(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """The tiny random Mllama of the tests: reports/s at batch 1 and 4, a LoRA step."""
    from generation_speed import bench_tiny_vlm

    rows = bench_tiny_vlm(device=str(device), n_test=scale.vlm_reports,
                          max_new_tokens=scale.vlm_tokens, batches=(1, 4),
                          lora_steps=max(3, scale.steps // 2))  # fmt: skip
    return {"rows": rows, "note": "a tiny random model: the code path's cost, not an 11B model's"}


def _bert(layers: int, hidden: int, device: torch.device) -> torch.nn.Module:
    """A randomly initialised BERT of the given shape (MiniLM-L6: 6 x 384, BERT-base: 12 x 768)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=12,
                        intermediate_size=4 * hidden, max_position_embeddings=512)  # fmt: skip
    return BertModel(config).to(device).eval()


def _reports_per_s(model: torch.nn.Module, n: int, scale: Scale, device: torch.device,
                   bf16: bool) -> float:  # fmt: skip
    """Mean-pooled embeddings of ``n`` synthetic reports of ``scale.text_tokens`` token ids."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (scale.text_batch, scale.text_tokens), generator=gen).to(device)
    mask = torch.ones_like(ids)
    with torch.inference_mode(), autocast(device, bf16):
        model(input_ids=ids, attention_mask=mask)  # warm-up
        sync(device)
        start = time.perf_counter()
        done = 0
        while done < n:
            b = min(scale.text_batch, n - done)
            hidden = model(input_ids=ids[:b], attention_mask=mask[:b]).last_hidden_state
            (hidden * mask[:b, :, None]).sum(1).float().cpu()
            done += b
        sync(device)
    return round(n / (time.perf_counter() - start), 1)


def step_text_embed(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """Report embedding throughput (module docstring): reports/s and the projected time of
    MIMIC-CXR's 228k reports."""
    figures: dict[str, Any] = {"tokens_per_report": scale.text_tokens, "batch": scale.text_batch}
    minilm = _bert(6, 384, device)
    figures["minilm_shape_bf16_reports_per_s"] = _reports_per_s(minilm, scale.text_reports, scale, device, True)
    figures["minilm_shape_bf16_reports"] = scale.text_reports
    record(figures)
    figures["minilm_shape_fp32_reports_per_s"] = _reports_per_s(minilm, scale.text_sample, scale, device, False)
    del minilm
    bert = _bert(12, 768, device)
    figures["bert_base_shape_bf16_reports_per_s"] = _reports_per_s(bert, scale.text_sample, scale, device, True)
    record(figures)
    figures["bert_base_shape_fp32_reports_per_s"] = _reports_per_s(bert, scale.text_sample, scale, device, False)
    del bert
    figures["projected_228k_seconds"] = {
        k.replace("_reports_per_s", ""): round(228_000 / v, 1)
        for k, v in list(figures.items()) if k.endswith("_reports_per_s") and v}  # fmt: skip
    record(figures)
    try:
        from cxrfuse.encoders import create_text_encoder

        encoder = create_text_encoder("minilm", device=str(device))
    except Exception as err:  # noqa: BLE001 - the weights package is optional on the GPU machine
        figures["minilm_encoder"] = f"not measured: {type(err).__name__}: {err}"[:300]
        return figures
    from scale import NEGATIVE, OTHER, POSITIVE

    pool = [s for group in POSITIVE.values() for s in group] + NEGATIVE + OTHER
    rng = np.random.default_rng(0)
    n = scale.text_sample
    texts = [" ".join(pool[j] for j in rng.choice(len(pool), size=8)) for _ in range(n)]
    start = time.perf_counter()
    encoder.encode(texts, batch_size=scale.text_batch)
    sync(device)
    figures["minilm_encoder_reports_per_s"] = round(n / (time.perf_counter() - start), 1)
    figures["minilm_encoder_reports"] = n
    return figures


def step_ddp(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """``train_run`` under Lightning's DDP strategy with one process."""
    return step_fusion_head(scale, device, work, strategy="ddp")


def step_distributed(scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """``embed_images`` in a process group of one rank (the torchrun / --nproc code path)."""
    from cxrfuse.encoders import create_image_encoder
    from cxrfuse.store import embed_images
    from cxrfuse.store.distributed import free_port, init_from_env, shutdown

    manifest, _ = phantoms(work, scale.images, scale.png_size)  # the embedding steps' PNGs
    manifest = manifest.replace(df=manifest.df.iloc[: max(1, scale.dist_images // 2)])
    encoder = create_image_encoder("resnet50", weights="none", input_size=scale.input_size)
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = init_from_env(device.type)
        start = time.perf_counter()
        images = embed_images(manifest, encoder, work / "dist-store", device=device,
                              batch_size=scale.batch, num_workers=_store_workers(device),
                              progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        total = ctx.sum(len(images))  # one all-reduce through the group's backend
    finally:
        shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"backend": ctx.backend, "world_size": images.meta["world_size"],
            "images": len(images), "all_reduced": total,
            "images_per_s": round(len(images) / seconds, 1)}  # fmt: skip


STEP_FUNCTIONS: dict[str, Callable[[Scale, torch.device, Path], dict[str, Any]]] = {
    "embed-densenet121": lambda s, d, w: step_embed("xrv-densenet121-all", s, d, w),
    "embed-resnet50": lambda s, d, w: step_embed("resnet50", s, d, w),
    "fusion-head-epoch": step_fusion_head,
    "finetune-resnet50": step_finetune,
    "clip-step": step_clip,
    "generation": step_generation,
    "distributed-extraction": step_distributed,
    "lightning-ddp": step_ddp,
    "text-embed": step_text_embed,
}


# ----------------------------------------------------------------------------- running
def run_step_here(name: str, scale: Scale, device: torch.device, work: Path) -> dict[str, Any]:
    """One step in this process; an exception is recorded, never raised."""
    start = time.perf_counter()
    try:
        figures = STEP_FUNCTIONS[name](scale, device, work)
        status, error = "ok", None
    except Exception as err:  # noqa: BLE001 - a failed step is a result, the suite goes on
        figures, status = {}, "failed"
        error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=8)}"
    finally:
        _leave_process_group()
    return {"step": name, "status": status, "seconds": round(time.perf_counter() - start, 2),
            "figures": figures, "error": error}  # fmt: skip


def run_step_isolated(name: str, dry_run: bool, work: Path, timeout: float) -> dict[str, Any]:
    """One step in a child process killed after ``timeout`` seconds."""
    result = work / f"step-{name}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--work", str(work),
           "--step-result", str(result)] + (["--dry-run"] if dry_run else [])  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        log = (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-2000:] + (err.stderr or b"")[-2000:]
        log = tail.decode(errors="replace") if isinstance(tail, bytes) else str(tail)
        figures = json.loads(result.read_text())["figures"] if result.is_file() else {}
        return {"step": name, "status": "timeout", "seconds": round(time.perf_counter() - start, 2),
                "figures": figures, "error": f"killed after {timeout:.0f} s\n{log}"}  # fmt: skip
    if result.is_file():
        return json.loads(result.read_text())
    return {"step": name, "status": "failed", "seconds": round(time.perf_counter() - start, 2),
            "figures": {}, "error": f"exit code {proc.returncode}, no result\n{log}"}  # fmt: skip


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, cores and the GPU this run measured on."""
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT, check=False).stdout.strip()  # fmt: skip
    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
               "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}  # fmt: skip
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "git": git,
            "python": platform.python_version(), "machine": platform.machine(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "gpu": gpu,
            "packages": {p: version(p) for p in ("torchvision", "transformers", "lightning",
                                                 "torchxrayvision", "peft", "pillow")}}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """The figures as Markdown tables (one row per measured number)."""
    env = report["environment"]
    gpu = env["gpu"]["name"] if env["gpu"] else "none (CPU)"
    lines = [f"# cxrfuse GPU suite{' (dry run, toy sizes)' if report['dry_run'] else ''}", "",
             (f"{env['date_utc']} UTC, git {env['git']}, {gpu}, {env['cpu_cores']} CPU cores, "
              f"torch {env['torch']}, Python {env['python']}; total {report['seconds']:.0f} s"), "",
             "| step | status | s | figure | value |", "|---|---|---:|---|---:|"]  # fmt: skip
    for step in report["steps"]:
        rows = list(_flatten(step["figures"])) or [("", "")]
        for i, (key, value) in enumerate(rows):
            head = (f"| {step['step']} | {step['status']} | {step['seconds']:.1f} "
                    if i == 0 else "| | | ")  # fmt: skip
            lines.append(f"{head}| {key} | {value} |")
    failed = [s for s in report["steps"] if s["status"] != "ok"]
    for step in failed:
        first = (step["error"] or "").strip().splitlines()[:1]
        lines += ["", f"**{step['step']}** {step['status']}: {first[0] if first else ''}"]
    return "\n".join(lines) + "\n"


def _flatten(figures: Any, prefix: str = "") -> Any:
    if isinstance(figures, dict):
        for key, value in figures.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif isinstance(figures, list):
        for i, value in enumerate(figures):
            label = value.get("path", str(i)) if isinstance(value, dict) else str(i)
            yield from _flatten({k: v for k, v in value.items() if k != "path"}
                                if isinstance(value, dict) else value, f"{prefix}{label}.")  # fmt: skip
    else:
        text = f"{figures:,.1f}" if isinstance(figures, float) else str(figures)
        yield prefix.rstrip("."), text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write gpu_suite.json and gpu_suite.md here")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (phantoms, stores)")
    parser.add_argument("--isolate", choices=["auto", "yes", "no"], default="auto",
                        help="each step in its own process with a timeout (auto: on a GPU)")
    parser.add_argument("--step-timeout", type=float, default=None,
                        help="seconds per isolated step (default: each step's budget)")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: run one step, write JSON
    parser.add_argument("--step-result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale = TOY if args.dry_run else GPU
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.step:  # a child process of run_step_isolated
        PARTIAL.update(path=args.step_result, step=args.step)
        result = run_step_here(args.step, scale, device, args.work)
        args.step_result.write_text(json.dumps(result, indent=2, default=str))
        return 0
    if args.out is None:
        parser.error("--out is required")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEP_FUNCTIONS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {STEPS}")
    if device.type == "cpu" and not args.dry_run:
        print("note: no GPU visible; the full-size steps run on the CPU (use --dry-run)")
    isolate = args.isolate == "yes" or (args.isolate == "auto" and device.type == "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxrfuse-gpu-suite-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {"dry_run": args.dry_run, "scale": asdict(scale),
                                  "environment": environment(device), "steps": []}  # fmt: skip
        start = time.perf_counter()
        for name in steps:
            left = TOTAL_BUDGET_S - (time.perf_counter() - start)
            if isolate and left < 10:
                report["steps"].append({"step": name, "status": "skipped", "seconds": 0.0,
                                        "figures": {}, "error": "suite time budget spent"})  # fmt: skip
                continue
            print(f"[{time.perf_counter() - start:6.1f} s] {name} ...", flush=True)
            if isolate:
                budget = args.step_timeout or BUDGET_S[name]
                result = run_step_isolated(name, args.dry_run, work, min(budget, left))
            else:
                result = run_step_here(name, scale, device, work)
            report["steps"].append(result)
            print(f"[{time.perf_counter() - start:6.1f} s] {name}: {result['status']} "
                  f"({result['seconds']:.1f} s)", flush=True)  # fmt: skip
            if result["status"] != "ok":
                print((result["error"] or "")[-1500:], flush=True)
            _write(args.out, report, time.perf_counter() - start)  # partial results survive
    _write(args.out, report, time.perf_counter() - start)
    print(markdown(report))
    return 0


def _write(out: Path, report: dict[str, Any], seconds: float) -> None:
    report["seconds"] = round(seconds, 1)
    (out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_suite.md").write_text(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
