"""Image embedding throughput, all on the same machine and the same phantom PNG files.

(a) bare model forward on in-memory, already normalised tensors (the ceiling for the model);
(b) the store end to end from PNG files: ``embed_images`` with DataLoader workers;
(c) a naive loop: open one PNG with PIL, preprocess, forward with batch size 1;
(d) the store end to end from the decoded-image cache (filled by an earlier run);
(e) the CPU decode ceiling: all cores decoding + resizing the PNGs in parallel, no model;
(b1) as (b) with one lane (``lanes=1``): decoding in line, the forward on every intra-op
thread (the store before the lanes; on a CPU only, where lanes are the default);
(f) the bare forward as the store's lanes run it: one thread per intra-op thread, each with
one intra-op thread, on in-memory tensors (CPU only; the model ceiling of (b)).

Targets (issue 16). 2-core CPU, efficientnet-lite0: (b) >= 1.2 x (c) and (b) >= 0.85 x the
overlap ceiling 1 / (1/a + 1/e) ("b/overlap").
One GPU (``--device cuda``: bf16 autocast, channels_last, ``--compile``), DenseNet-121:
(d) >= 5,000 images/s and (b) >= 0.7 x (e).

    .venv/bin/python benchmarks/embed_throughput.py                       # CPU defaults
    python benchmarks/embed_throughput.py --device cuda --encoder xrv-densenet121-all \\
        --weights none --n 8192 --batch-size 256 --compile                # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from _common import image_paths, phantom_manifest, sync


def make_data(folder: Path, n_images: int, size: int) -> tuple[Any, list[str]]:
    """A manifest of ``n_images`` phantom PNGs (two views per study) and their paths."""
    records = [
        {"study_id": f"S{i:05d}", "patient_id": f"P{i:05d}", "split": "train",
         "labels": {"abnormal": i % 2}}
        for i in range(-(-n_images // 2))
    ]  # fmt: skip
    manifest = phantom_manifest(folder, records, ["abnormal"], size=size)
    return manifest, image_paths(manifest)


def bare_forward(model: Any, encoder: Any, paths: list[str], args: Any, device: torch.device) -> float:
    """(a) images/s of the model alone on a pre-decoded, normalised batch already on device."""
    from cxrfuse.data.images import decode_resized
    from cxrfuse.encoders.image import to_model_input

    size = encoder.spec.input_size
    pixels = torch.stack([torch.from_numpy(decode_resized(p, size)) for p in paths[: args.batch_size]])
    x = to_model_input(pixels.to(device), encoder.spec)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    n_batches = -(-len(paths) // args.batch_size)
    with torch.inference_mode(), autocast(device):
        for _ in range(2):
            model(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(n_batches):
            model(x).float().cpu()
        sync(device)
    return n_batches * args.batch_size / (time.perf_counter() - start)


def bare_forward_lanes(encoder: Any, paths: list[str], args: Any) -> float:
    """(f) images/s of ``torch.get_num_threads()`` threads each running the forward alone."""
    import threading

    from cxrfuse.data.images import decode_resized
    from cxrfuse.encoders.image import to_model_input

    size, lanes = encoder.spec.input_size, torch.get_num_threads()
    pixels = torch.stack([torch.from_numpy(decode_resized(p, size)) for p in paths[: args.batch_size]])
    x = to_model_input(pixels, encoder.spec)
    per_lane = max(1, -(-len(paths) // args.batch_size) // lanes)

    def lane(count: int) -> None:
        with torch.inference_mode():
            for _ in range(count):
                encoder(x)

    torch.set_num_threads(1)
    try:
        lane(2)
        threads = [threading.Thread(target=lane, args=(per_lane,)) for _ in range(lanes)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(lanes)
    return per_lane * lanes * args.batch_size / elapsed


def autocast(device: torch.device) -> Any:
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def store_run(manifest: Any, encoder: Any, store: Path, args: Any, device: torch.device,
              cache: Path | None = None, lanes: int | None = None) -> float:  # fmt: skip
    """(b)/(d) images/s of ``embed_images`` end to end (wall time of the whole call)."""
    from cxrfuse.store import embed_images

    start = time.perf_counter()
    result = embed_images(
        manifest, encoder, store, batch_size=args.batch_size, num_workers=args.workers,
        device=device, cache_dir=cache, compile=args.compile, progress=False, lanes=lanes,
    )  # fmt: skip
    sync(device)
    return len(result) / (time.perf_counter() - start)


def naive_loop(encoder: Any, paths: list[str], device: torch.device) -> float:
    """(c) images/s of: PIL open, preprocess, forward one image at a time."""
    from PIL import Image

    start = time.perf_counter()
    with torch.inference_mode():
        for path in paths:
            with Image.open(path) as im:
                x = encoder.preprocess(im.convert("L"))[None].to(device)
            encoder(x).cpu()
    return len(paths) / (time.perf_counter() - start)


def _decode_one(job: tuple[str, int]) -> int:
    from cxrfuse.data.images import decode_resized

    return int(decode_resized(*job).shape[0])


def decode_ceiling(paths: list[str], size: int, processes: int) -> float:
    """(e) images/s all ``processes`` cores decode + resize the PNGs (no model)."""
    jobs = [(p, size) for p in paths]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_decode_one, jobs[:processes], chunksize=1))  # start the workers
        start = time.perf_counter()
        list(pool.map(_decode_one, jobs, chunksize=max(1, len(jobs) // (8 * processes))))
    return len(jobs) / (time.perf_counter() - start)


def ratio_bounds(res: dict[str, float], device: torch.device) -> dict[str, float]:
    """Ceilings of b/a and b/c when model and decoder share the CPU cores (CPU only).

    Per image, the model costs ``cores / a`` core-seconds (if it keeps every core busy) and
    decoding ``cores / e``; perfectly overlapped on the same cores, ``b <= 1 / (1/a + 1/e)``,
    so ``b/a <= e / (a + e)`` (an estimate: it is exceeded only by the share of core time the
    model leaves idle). And the store cannot beat the bare forward, ``b <= a``, so
    ``b/c <= a / c``.
    """
    if device.type != "cpu":
        return {}
    a, c, e = res["a_bare_forward"], res["c_naive_loop"], res["e_decode_ceiling"]
    return {"b/a": e / (a + e), "b/c": a / c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--weights", default="default", help="'none' = random (same speed)")
    parser.add_argument("--n", type=int, default=128, help="phantom images")
    parser.add_argument("--image-size", type=int, default=1024, help="phantom PNG side (px)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the store's (4 on a CPU, 256 on a GPU)")
    parser.add_argument("--workers", type=int, default=None, help="default: the store's default")
    parser.add_argument("--naive-n", type=int, default=64, help="images for the naive loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile (a), (b) and (d)")
    parser.add_argument("--data", type=Path, default=None, help="keep/reuse phantoms here")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.batch_size is None:
        from cxrfuse.store import CPU_BATCH, GPU_BATCH

        args.batch_size = CPU_BATCH if args.device == "cpu" else GPU_BATCH

    from cxrfuse.encoders import create_image_encoder
    from cxrfuse.store import default_workers

    device = torch.device(args.device)
    args.workers = default_workers(device) if args.workers is None else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "phantoms"
        manifest, paths = make_data(data, args.n, args.image_size)
        encoder = create_image_encoder(args.encoder, weights=args.weights, device=device)
        if device.type == "cuda":
            encoder.to(memory_format=torch.channels_last)
        model = torch.compile(encoder) if args.compile else encoder
        if args.compile:  # compile outside every timing: full batches, then a remainder
            studies = args.batch_size + 1  # two views each: 2 full batches + a batch of 2
            store_run(manifest.replace(df=manifest.df.iloc[:studies]), encoder,
                      Path(tmp) / "warm", args, device)  # fmt: skip
        res: dict[str, float] = {}
        res["a_bare_forward"] = bare_forward(model, encoder, paths, args, device)
        res["b_store_from_png"] = store_run(manifest, encoder, Path(tmp) / "b", args, device)
        res["c_naive_loop"] = naive_loop(encoder, paths[: args.naive_n], device)
        store_run(manifest, encoder, Path(tmp) / "d0", args, device, Path(tmp) / "cache")
        res["d_store_from_cache"] = store_run(
            manifest, encoder, Path(tmp) / "d", args, device, Path(tmp) / "cache"
        )
        res["e_decode_ceiling"] = decode_ceiling(
            paths, encoder.spec.input_size, os.cpu_count() or 1
        )
        if device.type == "cpu":
            res["f_bare_forward_lanes"] = bare_forward_lanes(encoder, paths, args)
            res["b1_store_one_lane"] = store_run(
                manifest, encoder, Path(tmp) / "b1", args, device, lanes=1
            )
    a, e = res["a_bare_forward"], res["e_decode_ceiling"]
    ratios = {
        "b/a": res["b_store_from_png"] / res["a_bare_forward"],
        "b/overlap": res["b_store_from_png"] * (1 / a + 1 / e),
        "b/c": res["b_store_from_png"] / res["c_naive_loop"],
        "d/a": res["d_store_from_cache"] / res["a_bare_forward"],
        "b/e": res["b_store_from_png"] / res["e_decode_ceiling"],
    }
    if "b1_store_one_lane" in res:
        ratios["b/b1"] = res["b_store_from_png"] / res["b1_store_one_lane"]
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, GPU {gpu}; torch {torch.__version__}, "
               f"{torch.get_num_threads()} intra-op threads")  # fmt: skip
    print(f"machine: {machine}")
    print(f"encoder {args.encoder} ({args.weights} weights, {encoder.spec.input_size} px), "
          f"{args.n} phantom PNGs of {args.image_size} px, batch {args.batch_size}, "
          f"{args.workers} worker(s), device {device}, compile {args.compile}")  # fmt: skip
    print("\n| path | images/s |\n|---|---:|")
    for name, value in res.items():
        print(f"| {name} | {value:,.1f} |")
    bounds = ratio_bounds(res, device)
    print("\n| ratio | value | ceiling on this machine | target |\n|---|---:|---:|---|")
    targets = {"b/a": "", "b/overlap": ">= 0.85 (CPU)", "b/c": ">= 1.2 (CPU)", "d/a": "",
               "b/e": ">= 0.7 (GPU)", "b/b1": ""}  # fmt: skip
    for name, value in ratios.items():
        bound = f"{bounds[name]:.2f}" if name in bounds else ""
        print(f"| {name} | {value:.2f} | {bound} | {targets[name]} |")
    if bounds:
        print("\nceilings: b/a ~ e / (a + e), decoding perfectly overlapped with a model that "
              "keeps every core busy; b/c <= a / c, the store cannot beat the bare forward")  # fmt: skip
    if args.json:
        payload = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                   "images_per_s": res, "ratios": ratios, "ceilings": bounds}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
