"""Process-wide facts and switches in one place: seeding, the device, the environment a result
came from, the clock, and Lightning's chatter.

* :func:`seed_everything`: the one seeding helper of every training pipeline (Python, NumPy,
  torch and DataLoader workers, through Lightning's implementation).
* :func:`resolve_device`: ``"auto"`` means the first GPU, else the CPU.
* :func:`environment_info`: what run.json, metrics and stores record about the machine.
* :func:`quiet_lightning`: Lightning's banners and known-harmless warnings off inside a block.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import platform
import sys
import warnings
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

import torch

from cxrfuse.problems import CxrfuseError

PACKAGES = ("cxrfuse", "numpy", "pandas", "scikit-learn", "scipy", "torch", "torchvision",
            "transformers", "sentence-transformers", "torchxrayvision", "safetensors",
            "lightning", "matplotlib", "pillow")  # fmt: skip
"""Packages whose versions the environment records (results can change with them)."""

LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                     "lightning_fabric")  # fmt: skip
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*The number of training batches.*is smaller than the logging interval.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*You called `self.log\(.*` but have no logger configured.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and make DataLoader workers derive their seeds from it."""
    import lightning.pytorch as pl

    pl.seed_everything(int(seed), workers=True, verbose=False)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None: the first GPU if there is one, else the CPU; otherwise as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CxrfuseError("device 'cuda' was asked for but torch sees no GPU; use --device cpu")
    return resolved


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where a package is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment_info(device: str | None = None) -> dict[str, Any]:
    """Python, torch, cxrfuse, platform, device (the first GPU, else "cpu"), torch's CPU
    threads and the versions of :data:`PACKAGES`."""
    if device is None:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    versions = package_versions()
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cxrfuse": versions.get("cxrfuse") or "unknown",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "packages": versions,
    }


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info banners and known-harmless warnings off, only inside this block."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
