"""Memory and time of study assembly and of head training at MIMIC-CXR scale (issue 24),
as functions the scale benchmark (``benchmarks/scale.py``) imports and a script of its own.

* :func:`measure` trains the same head on the same random study tensors twice (batches of 64,
  the run config's default, unless told otherwise), each in a fresh process: once with ``train_run`` (Lightning, metrics per epoch, predictions, the run
  directory) and once with a plain PyTorch loop (shuffled index batches, Adam, the same
  loss, a validation loss per epoch, val + test probabilities at the end). Keys
  ``train_seconds``, ``loop_seconds``, ``train_ratio``, ``train_rss``, ``loop_rss``,
  ``train_rss_ratio`` (peak RSS in bytes of each process, the arrays included).
* :func:`measure_assembly` assembles study arrays (``store.assemble``) from a synthetic
  MIMIC-shaped manifest (1-4 views a study, 1.65 on average, one study with 12 views) and
  memory-mapped stores of random vectors (1024-d images in shards of 1,024 rows, 768-d
  reports), in a fresh process. Keys ``assembly_seconds`` (wall), ``assembly_cpu_seconds``,
  ``assembly_bytes`` (the arrays), ``assembly_peak_rss`` (peak RSS of the process during
  assembly), ``assembly_rss_before`` (RSS before, manifest and stores open),
  ``assembly_rss_ratio`` (the peak's growth over the arrays' bytes) and
  ``assembly_process_rss_ratio`` (the whole process's peak over the arrays' bytes).
* :func:`measure_bootstrap`: ``bootstrap_ci`` (1,000 replicates, 14 labels) on random test
  studies: ``bootstrap_seconds``, ``bootstrap_cpu_seconds``, ``bootstrap_rss_growth``.

    python benchmarks/_head_training.py --studies 10000 50000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGE_DIM, TEXT_DIM = 1024, 768


def _rss(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak (``VmHWM``) resident set of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Start the peak (VmHWM) afresh from the current RSS (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh spawned process and return its dict."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


# ---- head training ------------------------------------------------------------------------


def _arrays(n: int, seed: int = 0) -> Any:
    """Random study arrays shaped like MIMIC with ``mean`` views (one 1024-d image slot, a
    768-d report vector), 14 labels with a weak signal, 70/10/20 split."""
    import numpy as np

    from cxrfuse.store import StudyArrays

    rng = np.random.default_rng(seed)
    y = (rng.random((n, 14)) < 0.2).astype(np.float32)
    image = rng.standard_normal((n, 1, IMAGE_DIM), dtype=np.float32)
    image[:, 0, :14] += 0.5 * y
    text = rng.standard_normal((n, TEXT_DIM), dtype=np.float32)
    text[:, :14] += 0.5 * y
    split = rng.choice(np.array(["train", "val", "test"], dtype=object), size=n, p=[0.7, 0.1, 0.2])
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    return StudyArrays(ids, ids.copy(), split, y, [f"label{j}" for j in range(14)], image,
                       np.ones((n, 1), bool), text, np.ones(n, bool), images_kind="none")


def _config(epochs: int, batch_size: int) -> Any:
    from cxrfuse.config import RunConfig

    return RunConfig(name="head-overhead", model={"kind": "concat-mlp", "hidden": [256]},
                     image={"views": "mean"},
                     training={"max_epochs": epochs, "early_stopping": None,
                               "batch_size": batch_size, "accelerator": "cpu"})  # fmt: skip


def _train_child(n: int, epochs: int, batch_size: int, threads: int) -> dict[str, Any]:
    import torch

    from cxrfuse.training import StoredEmbeddings, train_run

    torch.set_num_threads(threads)
    config = _config(epochs, batch_size)
    arrays = _arrays(n)
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        train_run(config, progress=False, source=StoredEmbeddings(config, progress=False,
                                                                  arrays=arrays),
                  run_dir=Path(tmp) / "run")  # fmt: skip
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                "rss": _rss("VmHWM")}


def _loop_child(n: int, epochs: int, batch_size: int, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from cxrfuse.fusion import probabilities
    from cxrfuse.runtime import seed_everything
    from cxrfuse.training.runner import make_head, make_loss

    torch.set_num_threads(threads)
    config = _config(epochs, batch_size)
    arrays = _arrays(n)
    start, cpu = time.perf_counter(), time.process_time()
    seed_everything(config.seed)
    tensors = arrays.tensors()
    train = torch.as_tensor(arrays.indices("train"))
    val, test = arrays.indices("val"), arrays.indices("test")
    head = make_head(config, arrays.y.shape[1], image_dim=arrays.image_dim,
                     n_views=arrays.n_views, text_dim=arrays.text_dim)  # fmt: skip
    loss_fn = make_loss(config, arrays.y[train.numpy()])
    optimizer = torch.optim.Adam(head.parameters(), lr=config.training.lr)
    keys = ("image", "image_mask", "text", "text_mask")

    def batch(index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.index_select(0, index) for k, v in tensors.items()}

    for _ in range(epochs):
        head.train()
        order = train[torch.randperm(len(train))]
        for lo in range(0, len(order), batch_size):
            b = batch(order[lo:lo + batch_size])
            loss = loss_fn(head(**{k: b[k] for k in keys}), b["y"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            index = torch.as_tensor(val)
            for lo in range(0, len(index), 4096):
                b = batch(index[lo:lo + 4096])
                loss_fn(head(**{k: b[k] for k in keys}), b["y"])
    with torch.no_grad():
        index = torch.as_tensor(np.concatenate([val, test]))
        probs = [probabilities(head(**{k: v for k, v in batch(index[lo:lo + 4096]).items()
                                       if k in keys}), "sigmoid")
                 for lo in range(0, len(index), 4096)]  # fmt: skip
        torch.cat(probs)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "rss": _rss("VmHWM")}


def measure(n_studies: int, *, epochs: int = 5, batch_size: int = 64,
            threads: int = 1, repeats: int = 2) -> dict[str, Any]:  # fmt: skip
    """``train_run`` vs a plain PyTorch loop on the same random tensors (module docstring);
    each in its own fresh process, alternating (loop, train, loop, train, ...) ``repeats``
    times; the figures are each side's fastest run (on a shared 2-core machine one run of
    either can be 30 % slow), ``*_all`` every run's seconds."""
    loops, trains = [], []
    for _ in range(repeats):
        loops.append(_in_child(_loop_child, n_studies, epochs, batch_size, threads))
        trains.append(_in_child(_train_child, n_studies, epochs, batch_size, threads))
    loop = min(loops, key=lambda r: r["seconds"])
    train = min(trains, key=lambda r: r["seconds"])
    return {"studies": n_studies, "epochs": epochs, "batch_size": batch_size, "repeats": repeats,
            "train_seconds": round(train["seconds"], 2), "loop_seconds": round(loop["seconds"], 2),
            "train_seconds_all": [round(r["seconds"], 2) for r in trains],
            "loop_seconds_all": [round(r["seconds"], 2) for r in loops],
            "train_cpu_seconds": round(train["cpu"], 2), "loop_cpu_seconds": round(loop["cpu"], 2),
            "train_ratio": round(train["seconds"] / loop["seconds"], 3),
            "train_rss": max(r["rss"] for r in trains), "loop_rss": max(r["rss"] for r in loops),
            "train_rss_ratio": round(max(r["rss"] for r in trains) / max(r["rss"] for r in loops), 3)}  # fmt: skip


# ---- study assembly -----------------------------------------------------------------------


def _view_counts(n: int, rng: Any) -> Any:
    """Views per study like MIMIC-CXR (1.65 on average), one study with 12."""
    counts = rng.choice([1, 2, 3, 4], size=n, p=[0.45, 0.46, 0.08, 0.01])
    counts[n // 2] = 12
    return counts


def synthetic_stores(n: int, folder: Path, seed: int = 0) -> tuple[Any, Any, Any]:
    """A MIMIC-shaped manifest of ``n`` studies with a patient-level-looking split, and image
    and text stores of random vectors written like the store writes them (memory-mapped)."""
    import numpy as np

    from cxrfuse.data.manifest import Manifest
    from cxrfuse.store import ImageEmbeddings, TextEmbeddings

    rng = np.random.default_rng(seed)
    counts = _view_counts(n, rng)
    kinds = np.array(["PA", "LATERAL", "AP", "LL"], dtype=object)
    split = rng.choice(["train", "val", "test"], size=n, p=[0.7, 0.1, 0.2])
    label = rng.random(n) < 0.3
    records, image_rows = [], []
    for i in range(n):
        views = [{"image_id": f"d{i}-{k}", "path": None, "view": kinds[k % 4]}
                 for k in range(counts[i])]  # fmt: skip
        records.append({"study_id": f"s{i}", "patient_id": f"p{i // 3}", "views": views,
                        "split": split[i], "labels": {"Pneumonia": int(label[i])}})  # fmt: skip
        image_rows += [(f"s{i}", v["image_id"], v["view"]) for v in views]
    manifest = Manifest.from_records(records, dataset="mimic-cxr", labels=["Pneumonia"])
    del records
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, lo in enumerate(range(0, len(image_rows), 1024)):
        rows = min(1024, len(image_rows) - lo)
        path = folder / f"images-{k:05d}.npy"
        np.save(path, rng.standard_normal((rows, IMAGE_DIM), dtype=np.float32))
        shards.append(np.load(path, mmap_mode="r"))
    image = ImageEmbeddings(folder, shards, [r[1] for r in image_rows],
                            [r[0] for r in image_rows], [r[2] for r in image_rows],
                            {"dim": IMAGE_DIM, "dtype": "float32"})  # fmt: skip
    text_path = folder / "texts.npy"
    out = np.lib.format.open_memmap(text_path, mode="w+", dtype=np.float32, shape=(n, TEXT_DIM))
    for lo in range(0, n, 16_384):
        out[lo:lo + 16_384] = rng.standard_normal((min(16_384, n - lo), TEXT_DIM), dtype=np.float32)
    out.flush()
    del out
    text = TextEmbeddings(folder, np.load(text_path, mmap_mode="r"),
                          [f"s{i}" for i in range(n)], np.ones(n, bool), [""] * n)  # fmt: skip
    return manifest, image, text


def _assembly_child(n: int, views: str, folder: str) -> dict[str, Any]:
    import gc

    from cxrfuse.store import assemble

    manifest, image, text = synthetic_stores(n, Path(folder))
    gc.collect()
    for shard in image.shards:  # the writes above left pages resident: start from none
        _drop(shard)
    _drop(text.vectors)
    before = _rss()
    _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    arrays = assemble(manifest, "Pneumonia", image=image, views=views, text=text)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss("VmHWM")
    nbytes = sum(getattr(arrays, k).nbytes for k in ("image", "image_mask", "text", "text_mask", "y"))
    return {"assembly_studies": n, "assembly_views": views,
            "assembly_shape": list(arrays.image.shape),
            "assembly_seconds": round(seconds, 2), "assembly_cpu_seconds": round(cpu, 2),
            "assembly_bytes": int(nbytes), "assembly_peak_rss": peak,
            "assembly_rss_before": before,
            "assembly_rss_ratio": round((peak - before) / nbytes, 3),
            "assembly_process_rss_ratio": round(peak / nbytes, 3)}  # fmt: skip


def _drop(array: Any) -> None:
    import mmap

    mapped = getattr(array, "_mmap", None)
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)


def measure_assembly(n_studies: int, *, views: str = "mean",
                     folder: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Study assembly of ``n_studies`` synthetic MIMIC-shaped studies (module docstring), in
    a fresh process; the stores go to ``folder`` (a temporary folder by default)."""
    if folder is not None:
        return _in_child(_assembly_child, n_studies, views, str(folder))
    with tempfile.TemporaryDirectory(prefix="cxrfuse-assembly-") as tmp:
        return _in_child(_assembly_child, n_studies, views, tmp)


# ---- bootstrap intervals ------------------------------------------------------------------


def _bootstrap_child(n: int, n_labels: int, n_boot: int) -> dict[str, Any]:
    import numpy as np

    from cxrfuse.evaluation.bootstrap import bootstrap_ci

    rng = np.random.default_rng(0)
    y = (rng.random((n, n_labels)) < 0.2).astype(float)
    p = 1 / (1 + np.exp(-(1.5 * y - 0.7 + rng.normal(size=(n, n_labels)))))  # all distinct
    before = _rss()
    _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    bootstrap_ci(y, p, 0.5, n_boot=n_boot, seed=0)
    return {"bootstrap_studies": n, "bootstrap_labels": n_labels, "bootstrap_replicates": n_boot,
            "bootstrap_seconds": round(time.perf_counter() - start, 2),
            "bootstrap_cpu_seconds": round(time.process_time() - cpu, 2),
            "bootstrap_rss_growth": _rss("VmHWM") - before}  # fmt: skip


def measure_bootstrap(n_studies: int, *, n_labels: int = 14, n_boot: int = 1000) -> dict[str, Any]:
    """``bootstrap_ci`` on ``n_studies`` random test studies x ``n_labels`` labels, in a fresh
    process: wall and CPU seconds and the peak RSS growth during the call (bytes)."""
    return _in_child(_bootstrap_child, n_studies, n_labels, n_boot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[10_000])
    parser.add_argument("--only", choices=["assembly", "training", "bootstrap"])
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--views", nargs="+", default=["mean"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="64: RunConfig's default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for n in args.studies:
        if args.only in (None, "assembly"):
            for views in args.views:
                results.append(measure_assembly(n, views=views))
                print(json.dumps(results[-1]), flush=True)
        if args.only in (None, "training"):
            results.append(measure(n, epochs=args.epochs, batch_size=args.batch_size))
            print(json.dumps(results[-1]), flush=True)
        if args.only in (None, "bootstrap"):
            results.append(measure_bootstrap(n, n_boot=args.replicates))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
