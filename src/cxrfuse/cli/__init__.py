"""The ``cxrfuse`` command line: one verb per pipeline stage, each a thin call into the library.

The Typer ``app`` and the shared helpers live here; each stage's verbs live in a module of
this package (``data``, ``embed``, ``train``, ...), imported at the bottom so that they
register themselves on ``app``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from cxrfuse.problems import CxrfuseError

console = Console()
err_console = Console(stderr=True)
app = typer.Typer(
    name="cxrfuse",
    help="Multimodal chest X-ray classification: fuse image and radiology-report embeddings.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Print cxrfuse errors (bad input, missing files) as one clear line and exit with code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CxrfuseError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from exc

    return wrapper  # type: ignore[return-value]


def csv_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None or empty -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main() -> None:  # pragma: no cover - entry point
    app()


# verb modules register themselves on ``app`` when imported (keep this list in pipeline order)
from cxrfuse.cli import data, embed, train, evaluate, explain, clip, generate, serve, demo  # noqa: F401, I001
