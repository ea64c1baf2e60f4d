"""``cxrfuse demo``: the embedded default, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import app, console, friendly_errors


@app.command("demo")
@friendly_errors
def demo_cmd(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-output"),
    size: Annotated[int, typer.Option(help="Phantom image side in pixels.")] = 256,
    limit: Annotated[int, typer.Option(help="Use only the first N studies (0 = all 3,955).")] = 0,
    input_size: Annotated[int, typer.Option(help="Image encoder input size in pixels.")] = 128,
    max_epochs: Annotated[int, typer.Option(help="Training epochs at most (early stopping).")] = 40,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 1000,
    meteor: Annotated[bool, typer.Option("--meteor/--no-meteor",
                                         help="Score generated reports with METEOR (Java).")] = True,
) -> None:
    """Run the embedded default end to end: bundled IU X-ray reports + phantom images ->
    embeddings -> image, text and fused models for two text choices -> evaluation -> report
    generation by retrieval, scored beside its baselines -> report.

    Example: `cxrfuse demo --out demo-output` (a rerun reuses everything already computed)
    """
    from cxrfuse.demo import run_demo

    report = run_demo(out, size=size, limit=limit, input_size=input_size, max_epochs=max_epochs,
                      n_boot=n_boot, meteor=meteor, console=console)
    console.print(f"\nreport: [bold]{report}[/]")
