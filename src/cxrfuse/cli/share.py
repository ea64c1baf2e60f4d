"""``cxrfuse export``: a run as a self-contained folder with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import app, console, friendly_errors


@app.command("export")
@friendly_errors
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished head or fine-tune run directory.")],
    to: Annotated[Path, typer.Option("--to", metavar="DIR", help="A new (or empty) folder to write.")],
) -> None:
    """Write a self-contained copy of a run that `cxrfuse predict DIR` loads like the run:
    model.safetensors (+ encoder.safetensors), model.json, the fitted text state, config.yaml,
    run.json, metrics.json, the model card README.md (refreshed) and export.json (sha256 of
    each file). Per-study predictions (patient ids), epochs and plots stay with the run.

    Example: `cxrfuse export runs/iu-binary-views-mean-indication --to shared/iu-model`
    """
    from cxrfuse.rundir.modelcard import export_run

    out = export_run(run_dir, to)
    files = sorted(p.name for p in out.iterdir())
    console.print(f"exported {run_dir} -> [bold]{out}[/] ({', '.join(files)})")
