"""Figures without global state: every plot draws on a :class:`matplotlib.figure.Figure` made
here, which needs no backend and no ``pyplot`` (so importing cxrfuse never changes a
user's matplotlib backend, and drawing never opens a window).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """A figure that renders to files (``figsize`` and other :class:`Figure` arguments);
    matplotlib loads on the first figure, not when a module that draws is imported."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically (PNG unless the suffix says otherwise), creating
    folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # (files is the same layer)
    try:  # a full disk leaves no half-written picture, and the error names it
        fig.savefig(tmp, dpi=dpi, format=path.suffix[1:].lower() or "png")
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path
