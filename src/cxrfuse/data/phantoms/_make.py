"""The phantom driver: :func:`make_phantoms` renders every study of a manifest (resumable,
optionally in worker processes) and writes the phantom manifest."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrfuse.data.manifest import Manifest
from cxrfuse.data.phantoms._cases import PhantomConfig, drawn_labels, study_rng
from cxrfuse.data.phantoms._render import render_phantom
from cxrfuse.data.phantoms._write import image_path, mask_path, write_png
from cxrfuse.files import write_text
from cxrfuse.problems import DataError

PHANTOM_VIEWS = {"frontal": "PA", "lateral": "LATERAL"}
"""Phantom view name -> manifest view position."""
SYNTHETIC_NOTE = (
    "The image pixels of this manifest are synthetic phantoms drawn by cxrfuse.data.phantoms "
    "from the labels; they are not radiographs of the patients. Reports and labels are real."
)
CONFIG_FILE = "phantoms.json"


def _render_study(
    job: tuple[str, dict[str, float], str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], int]:
    """Render and write one study's missing files; return its views and files written."""
    study_id, labels, out, config_dict = job
    config, out_dir = PhantomConfig(**config_dict), Path(out)
    views, written = [], 0
    for view in ["frontal", "lateral"] if config.lateral else ["frontal"]:
        img_file = image_path(out_dir, study_id, view)
        mask_files = {
            name: mask_path(out_dir, study_id, view, name) for name in drawn_labels(labels)
        }
        if not img_file.exists() or not all(f.exists() for f in mask_files.values()):
            image, masks = render_phantom(
                labels, view=view, rng=study_rng(config, study_id), config=config
            )
            for file, array in [(img_file, image), *((mask_files[n], m) for n, m in masks.items())]:
                if not file.exists():
                    write_png(array, file, config.compress_level)
                    written += 1
        views.append(
            {
                "image_id": f"{study_id}-phantom-{view}",
                "path": str(img_file.resolve()),
                "view": PHANTOM_VIEWS[view],
            }
        )
    return views, written


def _check_config(out_dir: Path, config: PhantomConfig) -> None:
    """Refuse to mix phantoms of different configs in one folder (files would be skipped)."""
    path = out_dir / CONFIG_FILE
    wanted = config.model_dump()
    if path.exists():
        found = json.loads(path.read_text())
        if found != wanted:
            raise DataError(
                f"{out_dir}: holds phantoms made with config {found}, not {wanted}; "
                "use another output folder or delete this one"
            )
    else:
        write_text(path, json.dumps(wanted, indent=2) + "\n")


def make_phantoms(
    manifest: Manifest,
    out_dir: str | Path,
    config: PhantomConfig | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Manifest:
    """Draw phantom images for every study of ``manifest`` and return the phantom manifest.

    Writes ``out_dir/images/{study}_{frontal|lateral}.png``, lesion masks under
    ``out_dir/masks/`` and ``out_dir/manifest.parquet``. Every study (also one without images)
    gets phantom views that replace its own; reports and labels are kept. Files that exist
    are not rewritten, so an interrupted run resumes, and a rerun gives identical bytes.
    """
    config = config or PhantomConfig()
    out_dir = Path(out_dir).resolve()
    for sub in ("images", "masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    jobs = [
        (sid, labels, str(out_dir), config.model_dump()) for sid, labels in _study_labels(manifest)
    ]
    bar = tqdm(total=len(jobs), desc="phantoms", unit="study", disable=not progress)
    results = []
    with bar, _executor(workers) as pool:
        for result in (
            pool.map(_render_study, jobs, chunksize=16) if pool else map(_render_study, jobs)
        ):
            results.append(result)
            bar.update()
    df = manifest.df.copy()
    df["views"] = [views for views, _ in results]
    info = {
        **manifest.info,
        "phantoms": {
            "config": config.model_dump(),
            "out_dir": str(out_dir),
            "synthetic": True,
            "note": SYNTHETIC_NOTE,
            "mask_pattern": "masks/{study}_{frontal|lateral}_{label slug}.png",
        },
    }
    phantom = manifest.replace(df=df, images="phantom", info=info)
    phantom.save(out_dir / "manifest.parquet")
    written = sum(n for _, n in results)
    if progress:
        tqdm.write(f"phantoms: {written} file(s) written, {len(jobs)} studies in {out_dir}")
    return phantom


def _study_labels(manifest: Manifest) -> list[tuple[str, dict[str, float]]]:
    columns = manifest.label_columns
    values = (
        manifest.df[columns].to_numpy(dtype=np.float64) if columns else np.zeros((len(manifest), 0))
    )
    return [
        (str(sid), {name: float(x) for name, x in zip(manifest.labels, row)})
        for sid, row in zip(manifest.df["study_id"], values)
    ]


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _executor(workers: int) -> ProcessPoolExecutor | _NoPool:
    return ProcessPoolExecutor(max_workers=workers) if workers > 1 else _NoPool()
