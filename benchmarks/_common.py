"""What the benchmark scripts share: phantom data sets, device sync, the machine line.

Imported by its siblings as ``from _common import ...``: a script's own folder is the first
entry of ``sys.path`` when Python runs it (``python benchmarks/NAME.py``), so no script puts
folders on the path itself. Heavy imports (torch, cxrfuse) stay inside the functions, so a
script that only times imports (``startup.py``) pays for none of them.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def phantom_manifest(folder: Path, records: Iterable[Mapping[str, Any]], labels: list[str], *,
                     size: int, dataset: str = "iu-xray", progress: bool = False) -> Any:
    """The phantom :class:`~cxrfuse.data.Manifest` of ``records`` drawn into ``folder`` at
    ``size`` px, on every core (files already there are reused)."""  # fmt: skip
    from cxrfuse.data import Manifest
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms

    manifest = Manifest.from_records(list(records), dataset=dataset, labels=labels)
    return make_phantoms(manifest, folder, PhantomConfig(size=size), progress=progress,
                         workers=os.cpu_count() or 1)  # fmt: skip


def image_paths(manifest: Any) -> list[str]:
    """Every view's image path of a manifest, study by study."""
    return [v["path"] for views in manifest.df["views"] for v in views]


def sync(device: Any) -> None:
    """Wait for the device's queued work (timings of CUDA kernels)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def machine_line() -> str:
    """``x86_64, 2 cores, load average 1.9 (1 min), python 3.x``: which machine measured."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} (1 min), "
            f"python {platform.python_version()}")  # fmt: skip
