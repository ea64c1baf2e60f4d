"""Encoder verbs: ``embed`` (images and reports into the embedding store), ``encoders`` (list)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cxrfuse.cli import app, console, csv_list, friendly_errors
from cxrfuse.cli.options import (
    DeviceOption,
    NoWaitOption,
    Precision,
    PrecisionOption,
    ProgressOption,
    StoreDtype,
    StoreDtypeOption,
    device_name,
)
from cxrfuse.problems import CxrfuseError

MAX_FAILURES_SHOWN = 20


@app.command("embed")
@friendly_errors
def embed_cmd(
    manifest_path: Annotated[Path | None, typer.Argument(metavar="MANIFEST", help="Study manifest (.parquet).")] = None,
    store: Annotated[Path | None, typer.Option(help="Embedding store folder (one sub-folder per key).")] = None,
    image_encoder: Annotated[str | None, typer.Option(help="Image encoder name (see `cxrfuse encoders`).")] = None,
    text_encoder: Annotated[str | None, typer.Option(help="Report encoder name (see `cxrfuse encoders`).")] = None,
    image_weights: Annotated[str, typer.Option(help="'default', a registry weights name, a local state_dict file, or 'none' (random).")] = "default",
    text_weights: Annotated[str, typer.Option(help="'default', a Hugging Face id or local model folder, or 'none' (random).")] = "default",
    sections: Annotated[str, typer.Option(help="Comma-separated report sections to encode.")] = "indication",
    mask: Annotated[bool, typer.Option("--mask/--no-mask", help="Mask label mentions in the text.")] = True,
    task: Annotated[str | None, typer.Option(help="Task or label whose words are masked (default: all labels).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass (default: 4 on a CPU, 256 on a GPU).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="DataLoader workers decoding images (default: 0 = in line on a CPU of up to 2 cores, else 1; spare cores on GPU).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per store shard (the unit of resumption).")] = 1024,
    dtype: StoreDtypeOption = StoreDtype.float32,
    precision: PrecisionOption = Precision.auto,
    input_size: Annotated[int | None, typer.Option(min=8, help="Override the encoder's input size (pixels).")] = None,
    fit: Annotated[str, typer.Option(help="How a non-square image becomes the square input: pad (letterboxed, as new runs) or crop (central square, as runs before the option).")] = "pad",
    cache: Annotated[Path | None, typer.Option(help="Decoded-image cache folder: decode and resize each image once, reuse it for every encoder of that input size.")] = None,
    device: DeviceOption = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="Run the image model through torch.compile.")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="Local processes embedding images in parallel (gloo on CPU, one GPU each with nccl).")] = 1,
    svd_dim: Annotated[int | None, typer.Option(min=1, help="tfidf only: SVD dimension (default 256).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    progress: ProgressOption = True,
    no_wait: NoWaitOption = False,
    verify: Annotated[Path | None, typer.Option(help="Only check every file of the store STORE against the digests recorded when it was written (a damaged shard is named and removed, so the next embed recomputes it).", metavar="STORE")] = None,
) -> None:
    """Embed a manifest's images and reports into the embedding store (resumable, keyed).

    A second run with the same key does no work; a killed run resumes from its last whole
    shard. Multi-node: `torchrun --no-python --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d
    --rdzv-endpoint HEAD:29500 cxrfuse embed ...` with the store on shared storage.

    Example: `cxrfuse embed iu.parquet --image-encoder efficientnet-lite0 --text-encoder minilm --store store/ --cache cache/`
    """
    from cxrfuse.files import set_lock_wait
    from cxrfuse.store import embed
    from cxrfuse.store.pipeline import verify_store

    set_lock_wait(not no_wait)
    device_name(device)  # a bad --device fails first; the library resolves auto per rank
    if precision is Precision.float16:
        raise CxrfuseError("--precision float16: the image encoders run in float32 or bfloat16 "
                           "autocast (store vectors as float16 with --dtype float16)")
    if verify is not None:
        counts = verify_store(verify)
        console.print(f"{verify}: {counts['folders']} store folder(s), {counts['files']} file(s) "
                      f"match their digests, every vector finite"
                      + (f" ({counts['unverified']} folder(s) written before digests were "
                         "recorded: vectors checked only)" if counts["unverified"] else ""))
        return
    if manifest_path is None or store is None:
        raise CxrfuseError("embed needs a MANIFEST and --store (or --verify STORE)")
    text_options = {"svd_dim": svd_dim} if svd_dim else None
    summary = embed(
        manifest_path, image_encoder, text_encoder, store,
        image_weights=image_weights, text_weights=text_weights,
        text_sections=csv_list(sections) or ["indication"], mask_labels=mask, task=task,
        batch_size=batch_size, num_workers=workers, shard_size=shard_size, input_size=input_size,
        dtype=dtype.value, precision=precision.value, device=device, cache_dir=cache,
        compile=compile, nproc=nproc, progress=progress, text_options=text_options, fit=fit,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    console.print(render_embed_summary(summary))
    failed = summary.get("images", {}).get("problems", [])
    for problem in failed[:MAX_FAILURES_SHOWN]:
        console.print(f"  [red]unreadable[/] {escape(problem['where'])}: "
                      f"{escape(problem['message'])}", highlight=False, soft_wrap=True)
    if len(failed) > MAX_FAILURES_SHOWN:
        console.print(f"  ... and {len(failed) - MAX_FAILURES_SHOWN} more (see meta.json)")


def render_embed_summary(summary: dict[str, Any]) -> Table:
    """The end-of-run table: what was embedded, what failed, how fast, where it is."""
    table = Table(title=f"embedding store: {summary['n_studies']} studies", show_lines=False)
    for column in ("", "encoder", "embedded", "failed / empty", "speed", "store"):
        table.add_column(column, overflow="fold")
    images = summary.get("images")
    if images:
        speed = (
            "reused (no work)"
            if images["reused"]
            else f"{images['images_per_s'] or 0:.1f} img/s ({images['world_size']} rank(s))"
        )
        cache = images.get("cache")
        if cache:
            speed += f", {cache['hits']} from cache"
        table.add_row(
            "images",
            f"{images['encoder']} ({images['dim']}-d, {images['dtype']})",
            f"{images['n_embedded']} / {images['n_images']}",
            str(images["n_failed"]),
            speed,
            images["path"],
        )
    texts = summary.get("texts")
    if texts:
        speed = "reused (no work)" if texts["reused"] else f"{texts['texts_per_s'] or 0:.1f} texts/s"
        masked = "masked" if texts["masked"] else "unmasked"
        table.add_row(
            "texts",
            f"{texts['encoder']} ({texts['dim']}-d; {'+'.join(texts['sections'])}, {masked})",
            f"{texts['n_with_text']} with text",
            f"{texts['n_empty']} without text",
            speed,
            texts["path"],
        )
    return table


@app.command("encoders")
@friendly_errors
def encoders_cmd(
    offline: Annotated[bool, typer.Option("--offline", help="Only encoders whose weights work offline.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON.")] = False,
) -> None:
    """List the registered image and report encoders (dimension, input size, offline, notes).

    Example: `cxrfuse encoders --offline`
    """
    from cxrfuse.encoders import encoder_table

    rows = encoder_table(offline_only=offline)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for kind in ("image", "text"):
        table = Table(title=f"{kind} encoders", show_lines=False)
        for column in ("name", "dim", "input", "offline", "notes"):
            table.add_column(column, overflow="fold")
        for row in rows:
            if row["kind"] == kind:
                offline_mark = "[green]yes[/]" if row["offline"] else "no"
                table.add_row(row["name"], str(row["dim"] or "fit"), row["input"], offline_mark,
                              row["notes"])
        console.print(table)
