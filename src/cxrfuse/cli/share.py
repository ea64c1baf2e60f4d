"""``cxrfuse export``: a run as a self-contained folder with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import app, console, friendly_errors
from cxrfuse.problems import ConfigError


@app.command("export")
@friendly_errors
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished head or fine-tune run directory.")],
    to: Annotated[Path, typer.Option("--to", metavar="DIR", help="A new (or empty) folder to write.")],
    format: Annotated[str, typer.Option("--format", help="run: the run's files; onnx: also model.onnx (image encoder + head as one graph) checked against PyTorch on the run's test studies (onnx_parity.json).")] = "run",
) -> None:
    """Write a self-contained copy of a run that `cxrfuse predict DIR` loads like the run:
    model.safetensors (+ encoder.safetensors), model.json, the fitted text state, config.yaml,
    run.json, metrics.json, the model card README.md (refreshed) and export.json (sha256 of
    each file). Per-study predictions (patient ids), epochs and plots stay with the run.

    With `--format onnx` the folder also holds model.onnx (image encoder + head; the text
    encoder, decoding and thresholds stay in Python) and onnx_parity.json, for
    `predict/serve --backend onnxruntime`.

    Example: `cxrfuse export runs/iu-binary-views-mean-indication --to shared/iu-model`
    """
    from cxrfuse.rundir.modelcard import export_run

    if format not in ("run", "onnx"):
        raise ConfigError(f"--format {format!r}: give run or onnx")
    if format == "onnx":
        from cxrfuse.inference.onnx_export import export_onnx_folder

        check = export_onnx_folder(run_dir, to)
        console.print(f"ONNX parity on {check['studies']} {check['split']} studies: max |Δp| = "
                      f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.0e}, "
                      f"{'passed' if check['passed'] else 'FAILED'}); in Python: {check['in_python']}")
        out = to
    else:
        out = export_run(run_dir, to)
    files = sorted(p.name for p in out.iterdir())
    console.print(f"exported {run_dir} -> [bold]{out}[/] ({', '.join(files)})")
