"""Load on `cxrfuse serve` over loopback: requests/s and p50/p95 latency of POST /v1/predict
at 1, 4 and 16 concurrent clients (an async httpx loop, bounded in requests and time), the
errors, and the server's resident memory before and after 1,000 requests.

The server is the real thing: ``cxrfuse serve RUN --port P`` in its own process (one uvicorn
worker), so its RSS is measured alone (psutil). Each request uploads a phantom study (frontal
+ lateral PNG, views, indication) and gets probabilities, thresholds, decisions, warnings and
the retrieval draft; a last phase adds ``explain=true`` (Grad-CAM per view + attribution).

Without ``--run`` a small run is trained first in a temporary folder: 48 IU X-ray studies as
256-px phantoms, EfficientNet-Lite0 at 128 px (mean of views) + tf-idf indication, concat-MLP,
evaluated (val-chosen thresholds), with a retrieval generator (k = 3, medoid).

    .venv/bin/python benchmarks/serve_load.py                       # about 3-5 min on 2 cores
    .venv/bin/python benchmarks/serve_load.py --run runs/x --requests 200 --memory-requests 1000
    .venv/bin/python benchmarks/serve_load.py --backend torch,onnxruntime --clients 1,4 \
        --memory-requests 0 --explain-requests 0     # PyTorch vs onnxruntime in one run

``--real [DIR]`` trains the run on real radiographs instead: ``../shared/data/iu-nih-pairs``
(310 real NIH frontal films at 512 px paired with real IU reports, Kaggle IU layout; never in
the repository) ingested, split by patient, EfficientNet-Lite0 (ImageNet weights) at 224 px,
mean of views, MiniLM indication, concat-MLP [32], 10 epochs, evaluated; no draft generator.
Where the folder is absent the script says so and exits 0 without measuring.

    .venv/bin/python benchmarks/serve_load.py --real --backend torch,onnxruntime --clients 1,4 \
        --memory-requests 0 --explain-requests 0     # the RESULTS.md real-data row, ~6 min

``--backend onnxruntime`` serves the run with ``cxrfuse serve --backend onnxruntime``; the run's
``model.onnx`` is written into the run directory first when it has none (and its parity with
PyTorch on the run's test studies is printed). Backends are measured one after the other on the
same run, study and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil


def build_run(tmp: Path) -> tuple[Path, Path]:
    """A small finished run (and its manifest) as the module docstring describes."""
    from cxrfuse.config import validate_run
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits
    from cxrfuse.evaluation import evaluate_run
    from cxrfuse.generation.pipeline import generate_retrieval
    from cxrfuse.rundir import RunDir
    from cxrfuse.runtime import quiet_lightning
    from cxrfuse.training import train_run

    manifest, _ = ingest_iu_xray()
    df = manifest.df
    has_text = df["findings"].notna() & df["indication"].notna()
    pick = np.concatenate([np.flatnonzero((df["label_abnormal"] == k) & has_text)[:24]
                           for k in (0, 1)])  # fmt: skip
    small = manifest.replace(df=df.iloc[np.sort(pick)].reset_index(drop=True))
    small = assign_splits(small, (0.6, 0.2, 0.2), seed=0, task="normal-abnormal")
    make_phantoms(small, tmp / "phantoms", PhantomConfig(size=256, seed=0), progress=False)
    path = tmp / "phantoms" / "manifest.parquet"
    config = validate_run({
        "name": "load", "runs_dir": str(tmp / "runs"),
        "data": {"manifest": str(path), "task": "normal-abnormal", "store": str(tmp / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": 128, "views": "mean"},
        "text": {"encoder": "tfidf", "sections": ["indication"], "options": {"svd_dim": 16}},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [32]},
        "training": {"max_epochs": 5, "batch_size": 8},
        "evaluation": {"n_boot": 50},
    }, "serve_load")  # fmt: skip
    with quiet_lightning():
        run_dir = Path(train_run(config, progress=False))
    evaluate_run(run_dir, "f1", 50, 0)
    generate_retrieval(RunDir(run_dir).generation_dir("retrieval").path, manifest=path,
                       store=tmp / "store", image_encoder="efficientnet-lite0", input_size=128,
                       k=3, consensus="medoid",
                       score={"n_boot": 10, "n_boot_language": 5, "meteor": False},
                       progress=False)  # fmt: skip
    return run_dir, path


REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "iu-nih-pairs"


def build_real_run(tmp: Path, data: Path) -> tuple[Path, Path]:
    """A finished run on the real iu-nih-pairs radiographs (``--real``), as the module
    docstring describes."""
    from cxrfuse.config import validate_run
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.splits import assign_splits
    from cxrfuse.evaluation import evaluate_run
    from cxrfuse.runtime import quiet_lightning
    from cxrfuse.training import train_run

    manifest, _ = ingest_iu_xray(data, layout="kaggle")
    manifest = assign_splits(manifest, seed=0, task="normal-abnormal")
    path = manifest.save(tmp / "iu-nih-pairs.parquet")
    config = validate_run({
        "name": "load-real", "runs_dir": str(tmp / "runs"),
        "data": {"manifest": str(path), "task": "normal-abnormal", "store": str(tmp / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": 224, "views": "mean"},
        "text": {"encoder": "minilm", "sections": ["indication"]},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [32]},
        "training": {"max_epochs": 10, "batch_size": 32},
        "evaluation": {"n_boot": 200},
    }, "serve_load --real")  # fmt: skip
    with quiet_lightning():
        run_dir = Path(train_run(config, progress=False))
    evaluate_run(run_dir, "f1", 200, 0)
    return run_dir, path


def study_of(run_dir: Path) -> dict:
    """A test study of the run's manifest: its PA and lateral views (bytes; the first view when
    it has neither, e.g. frontal-only real data) and indication."""
    from cxrfuse.data import read_manifest
    from cxrfuse.rundir import RunDir

    df = read_manifest(RunDir(run_dir).info().manifest).df
    row = df[df["split"] == "test"].iloc[0]
    views = {v["view"]: v["path"] for v in row["views"] if v["path"]}
    chosen = {k: views[k] for k in ("PA", "LATERAL") if k in views} or dict([next(iter(views.items()))])
    return {"images": [(f"{k.lower()}.png", Path(v).read_bytes()) for k, v in chosen.items()],
            "views": list(chosen), "indication": str(row["indication"] or "")}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(run_dir: Path, port: int, threads: int, backend: str = "torch") -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-c", "from cxrfuse.cli import main; main()", "serve", str(run_dir),
           "--port", str(port), "--backend", backend]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
    proc.kill()
    raise SystemExit("the server did not answer /health within 120 s")


async def load(url: str, study: dict, clients: int, requests: int, time_limit: float,
               explain: bool = False) -> dict:  # fmt: skip
    """``requests`` POSTs shared by ``clients`` concurrent loops (stopping at ``time_limit``)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = requests
    start = time.perf_counter()
    data = {"views": study["views"], "indication": study["indication"],
            "explain": "true" if explain else "false"}  # fmt: skip
    files = [("images", (name, data, "image/png")) for name, data in study["images"]]

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() - start < time_limit:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                response = await http.post(url, data=data, files=files)
                ok = response.status_code == 200 and "probabilities" in response.json()
                key = None if ok else f"HTTP {response.status_code}"
            except httpx.HTTPError as err:
                key = type(err).__name__
            if key is None:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - start
    ms = sorted(1000 * x for x in latencies)
    pct = (lambda q: float(np.percentile(ms, q)) if ms else float("nan"))
    return {"clients": clients, "explain": explain, "requests": len(ms) + sum(errors.values()),
            "ok": len(ms), "errors": errors, "wall_s": round(wall, 2),
            "requests_per_s": round(len(ms) / wall, 2), "p50_ms": round(pct(50), 1),
            "p95_ms": round(pct(95), 1),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else None}  # fmt: skip


def rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 2**20


def ensure_onnx(run_dir: Path) -> dict:
    """Write ``model.onnx`` into the run when it has none; its parity with PyTorch."""
    from cxrfuse.inference.onnx_export import export_onnx, parity
    from cxrfuse.rundir import layout

    if not (run_dir / layout.ONNX_MODEL).is_file():
        export_onnx(run_dir, run_dir)
    return parity(run_dir)


def measure(run_dir: Path, study: dict, backend: str, args: argparse.Namespace) -> dict:
    """Warm-up, the concurrency levels, memory and explain phases against one server."""
    port = free_port()
    server = start_server(run_dir, port, args.threads, backend)
    proc = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}/v1/predict"
    try:
        warm = asyncio.run(load(url, study, 1, 10, 60))
        levels = [asyncio.run(load(url, study, c, args.requests, args.time_limit))
                  for c in args.clients]  # fmt: skip
        before = rss_mb(proc)
        samples = [before]
        memory_errors: dict[str, int] = {}
        done = 0
        t_mem = time.perf_counter()
        while done < args.memory_requests:
            batch = min(100, args.memory_requests - done)
            result = asyncio.run(load(url, study, 4, batch, 600))
            done += result["requests"]
            for k, v in result["errors"].items():
                memory_errors[k] = memory_errors.get(k, 0) + v
            samples.append(rss_mb(proc))
        memory = {"requests": done, "clients": 4, "errors": memory_errors,
                  "wall_s": round(time.perf_counter() - t_mem, 1),
                  "rss_before_mb": round(before, 1), "rss_after_mb": round(samples[-1], 1),
                  "rss_max_mb": round(max(samples), 1),
                  "rss_every_100_mb": [round(s, 1) for s in samples]}  # fmt: skip
        explain = (asyncio.run(load(url, study, 1, args.explain_requests, args.time_limit,
                                    explain=True)) if args.explain_requests else None)  # fmt: skip
    finally:
        server.terminate()
        server.wait(30)
    return {"backend": backend, "warmup": warm, "levels": levels, "memory": memory,
            "explain": explain}


def _test_auroc(run_dir: Path) -> dict | None:
    """The built run's test AUROC and its interval (what the served model is worth)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return {"value": metrics["test"]["macro"]["auroc"], "ci": metrics["ci"].get("macro/auroc"),
            "n": metrics["test"]["n"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: train a small one)")
    parser.add_argument("--requests", type=int, default=120, help="requests per concurrency level")
    parser.add_argument("--time-limit", type=float, default=90.0, help="seconds per level, at most")
    parser.add_argument("--memory-requests", type=int, default=1000)
    parser.add_argument("--explain-requests", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--backend", default="torch",
                        help="comma-separated: torch, onnxruntime (measured one after the other)")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--real", type=Path, nargs="?", const=REAL_DATA, default=None,
                        metavar="DIR", help="train the run on real radiographs (default DIR: "
                        "../shared/data/iu-nih-pairs) instead of phantoms")  # fmt: skip
    args = parser.parse_args()
    if args.real is not None and args.run is not None:
        parser.error("give --run or --real, not both")
    if args.real is not None and not (args.real / "indiana_reports.csv").is_file():
        print(f"skipped: {args.real.resolve()} is absent (the real iu-nih-pairs radiographs are "
              "not in the repository); nothing measured")
        return
    args.clients = [int(c) for c in args.clients.split(",")]
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.real is not None:
            run_dir = build_real_run(Path(tmp), args.real)[0]
        else:
            run_dir = args.run or build_run(Path(tmp))[0]
        built = time.perf_counter() - t0
        study = study_of(run_dir)
        quality = _test_auroc(run_dir)
        onnx = ensure_onnx(run_dir) if "onnxruntime" in backends else None
        measured = [measure(run_dir, study, backend, args) for backend in backends]
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                         f"{os.getloadavg()[0]:.1f}", "python": platform.python_version(),
              "run": (str(args.run) if args.run is not None else
                      f"real radiographs ({args.real}, built)" if args.real is not None else
                      "small phantom run (built)"),
              "test_auroc": quality,
              "build_s": round(built, 1), "server_torch_threads": args.threads,
              "onnx_parity": onnx, "backends": measured,
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    print("\n| backend | clients | requests | errors | requests/s | p50 ms | p95 ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for m in measured:
        for r in [*m["levels"], *([m["explain"]] if m["explain"] else [])]:
            name = f"{r['clients']}{' (explain)' if r['explain'] else ''}"
            print(f"| {m['backend']} | {name} | {r['requests']} | {sum(r['errors'].values())} "
                  f"| {r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} |")
    if len(measured) == 2:
        for a, b in zip(measured[0]["levels"], measured[1]["levels"]):
            print(f"{b['clients']} client(s): {measured[1]['backend']} / {measured[0]['backend']}"
                  f" = {b['requests_per_s'] / max(a['requests_per_s'], 1e-9):.2f}x requests/s")


if __name__ == "__main__":
    main()
