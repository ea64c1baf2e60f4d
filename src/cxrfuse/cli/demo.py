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
) -> None:
    """Run the embedded default end to end: bundled IU X-ray reports + phantom images.

    Example: `cxrfuse demo --out demo-output`
    """
    from cxrfuse.demo import run_demo

    report = run_demo(out, size=size, limit=limit, console=console)
    console.print(f"\nreport: [bold]{report}[/]")
