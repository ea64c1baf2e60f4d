"""Inputs shared by the battery's modules (a uniquely named module: ``conftest`` is not
importable by name when several test folders are on sys.path)."""

from __future__ import annotations

import shutil
from pathlib import Path


def tiny_run_config(tmp: Path, manifest: Path) -> dict:
    """A two-epoch image + text run small enough for the battery (seconds on one core)."""
    return {
        "name": "tiny",
        "runs_dir": str(tmp / "runs"),
        "data": {"manifest": str(manifest), "task": "normal-abnormal", "store": str(tmp / "store")},
        "image": {"encoder": "xrv-densenet121-nih", "offline_encoder": "efficientnet-lite0",
                  "input_size": 32, "views": "mean", "embed_batch_size": 16},
        "text": {"encoder": "biobert", "offline_encoder": "tfidf",
                 "sections": ["findings", "impression"], "offline_options": {"svd_dim": 4}},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [8]},
        "training": {"max_epochs": 2, "batch_size": 8, "early_stopping": {"patience": 2}},
        "evaluation": {"n_boot": 10},
    }


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run directory to break."""
    shutil.copytree(run, dest)
    return dest
