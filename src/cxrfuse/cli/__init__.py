"""The ``cxrfuse`` command line: one verb per pipeline stage, each a thin call into the library.

The Typer ``app`` and the shared helpers live here; each stage's verbs live in a module of
this package (``data``, ``embed``, ``train``, ...), imported at the bottom so that they
register themselves on ``app``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from cxrfuse.problems import CxrfuseError, describe_os_fault, os_fault

console = Console()
err_console = Console(stderr=True)

PIPELINE: dict[str, tuple[str, ...]] = {
    "1. Data": ("ingest", "split", "phantoms", "stats"),
    "2. Embeddings": ("embed", "encoders"),
    "3. Training": ("train", "experiment", "sweep"),
    "4. Evaluation and explanations": ("evaluate", "report", "explain", "attribute"),
    "5. Using a run": ("predict", "serve", "export", "pacs"),
    "6. CLIP and report generation": ("clip", "generate"),
    "7. End to end": ("demo",),
}
"""``cxrfuse --help``: the verbs' panels and order, in pipeline order (a verb not named here is
listed first, in Typer's default panel; ``sweep`` and ``export`` come from another branch)."""
_ORDER = [verb for verbs in PIPELINE.values() for verb in verbs]


class _PipelineGroup(typer.core.TyperGroup):
    """Lists the verbs in :data:`PIPELINE` order (Typer lists commands before groups), each in
    its panel unless its decorator names one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        panel_of = {verb: panel for panel, verbs in PIPELINE.items() for verb in verbs}
        for name, command in self.commands.items():
            if name in panel_of and not isinstance(getattr(command, "rich_help_panel", None), str):
                command.rich_help_panel = panel_of[name]  # type: ignore[attr-defined]

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {verb: i for i, verb in enumerate(_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, -1), names.index(n)))


app = typer.Typer(
    name="cxrfuse",
    cls=_PipelineGroup,
    help="Multimodal chest X-ray classification: fuse image and radiology-report embeddings.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])
DEBUG_ENV = "CXRFUSE_DEBUG"


_options = {"debug": False}


def debug_enabled() -> bool:
    """True after ``cxrfuse --debug ...`` (or with ``CXRFUSE_DEBUG=1``): show tracebacks."""
    return _options["debug"] or os.environ.get(DEBUG_ENV, "") not in ("", "0")


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error "
                                        "instead of the one `error:` line.")] = False,
) -> None:
    """Multimodal chest X-ray classification: fuse image and radiology-report embeddings."""
    _options["debug"] = debug  # set on every invocation (in-process runners reuse the app)
    log_friendly_progress(sys.stderr)


LOG_PROGRESS = {
    "TQDM_MININTERVAL": "15",
    "TQDM_ASCII": " 123456789#",  # plain characters (a string: tqdm reads the variable as one)
    "TQDM_BAR_FORMAT": "{l_bar}{bar:20}{r_bar}\n",
}
"""tqdm defaults (its ``TQDM_*`` environment variables) when progress goes to a log file."""


def log_friendly_progress(stream: Any) -> bool:
    """Progress bars written to a file or a pipe (a job's log) become one plain line every 15
    seconds instead of carriage-return redraws; a terminal keeps live bars, and ``TQDM_*``
    variables a user set win. True when the log defaults were applied."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return False
    for name, value in LOG_PROGRESS.items():
        os.environ.setdefault(name, value)
    return True


def print_error(message: str) -> None:
    """The one ``error:`` line a user sees."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False,
                      markup=True)


SIGTERM_EXIT = 128 + 15
"""Exit status of a verb stopped by SIGTERM while Lightning trained (the shell's convention)."""


def friendly_errors(func: F) -> F:
    """The CLI's one error path: a cxrfuse error (bad input, missing files, bad config) or an
    OS fault (full disk, permission, read-only, file limit: the path and cause named) is one
    ``error:`` line and exit code 2; any other exception one ``error:`` line naming its type and
    exit code 1; a SIGTERM caught by Lightning's trainer exit code 143; ``--debug`` shows the
    traceback instead."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except SystemExit as exc:
            # Lightning turns a SIGTERM during training into SIGTERMException, a SystemExit
            # with no code: it would end the process with status 0 as if it had finished
            if type(exc).__name__ != "SIGTERMException":
                raise
            print_error("stopped by SIGTERM during training; what finished is kept: rerun the "
                        "same command to go on")
            raise typer.Exit(SIGTERM_EXIT) from exc
        except Exception as exc:
            if debug_enabled():
                raise
            fault = os_fault(exc)
            if fault is not None:  # a full disk, a read-only folder, a file limit
                print_error(_escape(describe_os_fault(fault)))
                raise typer.Exit(2) from exc
            if isinstance(exc, CxrfuseError):
                print_error(_escape(str(exc)))
                raise typer.Exit(2) from exc
            # a bug or an unforeseen input: still one line without --debug
            print_error(_escape(f"unexpected {type(exc).__name__}: {exc} "
                                "(rerun with `cxrfuse --debug ...` for the traceback)"))
            raise typer.Exit(1) from exc

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    """Rich markup in a message (``[x]`` in a file name) printed as it is."""
    from rich.markup import escape

    return escape(text)


def csv_list(value: str | None) -> list[str] | None:
    """``"a, b,c"`` -> ``["a", "b", "c"]``; None or empty -> None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main() -> None:  # pragma: no cover - entry point
    app()


# verb modules register themselves on ``app`` when imported (keep this list in pipeline order)
from cxrfuse.cli import data, embed, train, sweep, evaluate, explain, clip, generate, serve, share, demo  # noqa: F401, I001
from cxrfuse.cli import pacs  # noqa: F401
