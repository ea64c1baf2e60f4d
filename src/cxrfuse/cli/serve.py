"""Serving verb: ``serve`` (the HTTP API and web page of a trained run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import app, console, friendly_errors
from cxrfuse.cli.options import DeviceOption, device_name


@app.command("serve")
@friendly_errors
def serve_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory.")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (each loads the model once).")] = 1,
    device: DeviceOption = "auto",
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime: the run's model.onnx (`cxrfuse export RUN --to DIR --format onnx`) runs image encoder + head.")] = "torch",
) -> None:
    """Serve a run: the web page at /, GET /health, GET /v1/model (model card) and
    POST /v1/predict (multipart: images = PNG/JPEG/DICOM views, views, indication, comparison,
    report, explain) answering probabilities, thresholds, decisions, warnings, attribution,
    Grad-CAM overlays and a draft report.

    Example: `cxrfuse serve runs/iu-binary-views-mean-indication --port 8000` then open http://127.0.0.1:8000/
    """
    from cxrfuse.serve import serve

    device = device_name(device)
    console.print(f"serving [bold]{run_dir}[/] on http://{host}:{port}/ ({workers} worker(s), {device}, {backend})")
    serve(run_dir, host=host, port=port, workers=workers, device=device, backend=backend)
