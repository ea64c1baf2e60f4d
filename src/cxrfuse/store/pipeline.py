"""``embed``: a manifest's images and/or texts into the store in one call (the ``cxrfuse
embed`` verb), on one process, ``--nproc`` local ranks or the ranks ``torchrun`` started."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import ValidationError

from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.encoders import create_image_encoder, create_text_encoder
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.runtime import resolve_device
from cxrfuse.store import distributed
from cxrfuse.store.image_shards import ImageEmbeddings, load_image_embeddings
from cxrfuse.store.images import embed_images, resolve_precision
from cxrfuse.store.integrity import read_json
from cxrfuse.store.keys import image_store_key
from cxrfuse.store.texts import embed_texts, load_text_embeddings
from cxrfuse.text import TextConfig
from cxrfuse.vocab import PRE_READ_SECTIONS


def default_workers(device: torch.device | str, nproc: int = 1) -> int:
    """DataLoader workers per rank: all spare cores for a GPU; on a CPU, none up to 2 cores.

    On a 2-core CPU the model's intra-op threads already use both cores, and a decoding worker
    process only contends with them: from 1024-px PNGs the store ran at 40.9 images/s with
    decoding in line against 36.9 with one worker (efficientnet-lite0, 3 runs each). Without
    workers ``embed_images`` decodes in its lanes (one thread per intra-op thread).
    """
    cores = max(1, (os.cpu_count() or 1) // max(1, nproc))
    if str(device).startswith("cuda"):
        return max(1, min(16, cores - 1))
    return 1 if cores > 2 else 0


def embed(
    manifest: str | Path | Manifest,
    image_encoder: str | None,
    text_encoder: str | None,
    store_dir: str | Path,
    *,
    image_weights: str = "default",
    text_weights: str = "default",
    text_sections: Sequence[str] = PRE_READ_SECTIONS,
    mask_labels: bool = True,
    task: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    shard_size: int = 1024,
    input_size: int | None = None,
    dtype: Literal["float32", "float16"] = "float32",
    precision: Literal["auto", "float32", "bfloat16"] = "auto",
    device: str = "auto",
    cache_dir: str | Path | None = None,
    compile: bool = False,
    nproc: int = 1,
    progress: bool = True,
    text_options: dict[str, Any] | None = None,
    fit: str = "pad",
) -> dict[str, Any]:
    """Embed a manifest's images and/or texts into ``store_dir``; return paths and a summary.

    ``manifest`` is a Manifest or its Parquet file. Texts are the chosen report
    ``text_sections``, with the labels of ``task`` (default: all labels) masked when
    ``mask_labels``. ``nproc`` > 1 spawns that many local ranks for the images (gloo on CPU,
    nccl on GPU); under ``torchrun`` (WORLD_SIZE > 1 in the environment) this process joins
    the ranks torchrun started. Texts are embedded by rank 0 only. ``num_workers`` None picks
    :func:`default_workers`. ``text_options`` go to :func:`create_text_encoder`
    (e.g. ``{"svd_dim": 64}`` for tf-idf). ``fit`` (``pad`` or ``crop``) is how non-square
    images become the square input, as a run's ``image.fit`` (default ``pad``, as new runs).
    """
    if image_encoder is None and text_encoder is None:
        raise CxrfuseError("nothing to embed: name an image encoder, a text encoder or both")
    source = str(manifest) if not isinstance(manifest, Manifest) else "<Manifest>"
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    config = _text_config(text_sections, mask_labels)  # checked before any work
    summary: dict[str, Any] = {"manifest": source, "n_studies": len(manifest)}
    is_main = True
    if image_encoder is not None:
        options = {
            "batch_size": batch_size,
            "num_workers": num_workers,
            "shard_size": shard_size,
            "dtype": dtype,
            "precision": precision,
            "cache_dir": cache_dir,
            "compile": compile,
            "progress": progress,
        }
        spec = (image_encoder, image_weights, input_size, fit)
        images, is_main = _embed_images_ranked(manifest, spec, store_dir, device, nproc, options)
        if is_main:
            summary["images"] = _image_summary(images)
    if text_encoder is not None and is_main:
        tenc = create_text_encoder(text_encoder, weights=text_weights, **(text_options or {}))
        texts = embed_texts(manifest, tenc, config, store_dir, task=task)
        summary["texts"] = {
            "path": str(texts.path),
            "encoder": texts.meta.get("encoder"),
            "dim": texts.meta.get("dim"),
            "n_studies": texts.meta.get("n_studies"),
            "n_with_text": texts.meta.get("n_with_text"),
            "n_empty": texts.meta.get("n_empty"),
            "texts_per_s": None if texts.reused else texts.meta.get("texts_per_s"),
            "sections": list(text_sections),
            "masked": mask_labels,
            "task": task,
            "reused": texts.reused,
        }
    summary["rank"] = 0 if is_main else distributed.current_context().rank
    return summary


def _text_config(sections: Sequence[str], mask_labels: bool) -> TextConfig:
    """The text configuration, or a CxrfuseError naming the bad field and value."""
    try:
        return TextConfig(sections=list(sections), mask_labels=mask_labels)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CxrfuseError(
            f"text configuration: {where} = {first.get('input')!r}: {first['msg']}"
        ) from err


def _embed_images_ranked(
    manifest: Manifest,
    spec: tuple[str, str, int | None, str],
    store_dir: str | Path,
    device: str,
    nproc: int,
    options: dict[str, Any],
) -> tuple[ImageEmbeddings, bool]:
    """(embeddings, whether this process is rank 0), computed by 1..N processes."""
    name, weights, input_size, fit = spec
    run_device = resolve_device(device)
    torchrun = distributed.launched_by_torchrun() and not current_group()
    if torchrun and nproc > 1:
        raise CxrfuseError("--nproc starts local ranks itself; do not combine it with torchrun")
    world = nproc if nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))
    if run_device.type == "cuda" and world > 1:
        if nproc > torch.cuda.device_count():
            raise CxrfuseError(f"--nproc {nproc} > {torch.cuda.device_count()} visible GPU(s)")
        run_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    options = {
        **options,
        "precision": resolve_precision(options["precision"], run_device),
        "num_workers": options["num_workers"]
        if options["num_workers"] is not None
        else default_workers(run_device, world),
    }
    encoder = create_image_encoder(name, weights=weights, input_size=input_size, fit=fit)
    key, _ = image_store_key(manifest, encoder, options["dtype"], options["precision"])
    folder = Path(store_dir) / key
    if nproc > 1:
        reused = (folder / "meta.json").is_file()
        if not reused:
            args = (manifest, spec, str(store_dir), run_device.type, options)
            distributed.launch_local(nproc, _image_rank, args)
        return replace(load_image_embeddings(folder), reused=reused), True
    ctx = distributed.init_from_env(run_device.type) if torchrun else None
    try:
        images = embed_images(manifest, encoder, store_dir, device=run_device, **options)
        is_main = distributed.current_context().is_main
    finally:
        if ctx is not None:
            distributed.shutdown()
    return images, is_main


def current_group() -> bool:
    """Whether a torch.distributed process group is already initialised here."""
    return dist.is_available() and dist.is_initialized()


def _image_rank(
    manifest: Manifest,
    spec: tuple[str, str, int | None, str],
    store_dir: str,
    device_type: str,
    options: dict[str, Any],
) -> None:
    """One spawned rank: join the group, embed this rank's shards, leave."""
    ctx = distributed.init_from_env(device_type)
    try:
        if device_type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
        device = torch.device("cuda", ctx.local_rank) if device_type == "cuda" else "cpu"
        name, weights, input_size, fit = spec
        encoder = create_image_encoder(name, weights=weights, input_size=input_size, fit=fit)
        embed_images(manifest, encoder, store_dir, device=device, **options)
    finally:
        distributed.shutdown()


def _image_summary(images: ImageEmbeddings) -> dict[str, Any]:
    meta, reused = images.meta, images.reused
    return {
        "path": str(images.path),
        "encoder": meta["encoder"],
        "dim": meta["dim"],
        "dtype": meta.get("dtype"),
        "n_images": meta["n_images"],
        "n_embedded": meta["n_embedded"],
        "n_failed": meta["n_failed"],
        "failed_paths": [p["where"] for p in meta.get("problems", [])],
        "images_per_s": None if reused else meta.get("images_per_s"),
        "computed_this_run": 0 if reused else meta.get("computed_this_run"),
        "world_size": meta.get("world_size", 1),
        "device": meta.get("device"),
        "cache": None if reused else meta.get("cache"),
        "problems": meta.get("problems", []),
        "reused": reused,
    }


def verify_store(store: str | Path) -> dict[str, Any]:
    """Verify every finished store folder under ``store`` (or ``store`` itself): each file
    against its digest, each vector finite. Returns counts; raises at the first damage."""
    root = Path(store)
    if not root.is_dir():
        raise DataError(f"{root}: no such store folder")
    folders = [root] if (root / "meta.json").is_file() else sorted(
        p.parent for p in root.glob("*/meta.json"))  # fmt: skip
    if not folders:
        raise DataError(f"{root}: no finished store folder (no meta.json) in it")
    counts = {"folders": 0, "files": 0, "unverified": 0}
    for folder in folders:
        meta = read_json(folder / "meta.json")
        if meta.get("kind") == "texts":
            load_text_embeddings(folder)
        else:
            load_image_embeddings(folder)
        counts["folders"] += 1
        counts["files"] += len(meta.get("digests", {}))
        counts["unverified"] += 0 if meta.get("digests") else 1
    return counts
