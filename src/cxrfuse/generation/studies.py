"""Which studies a vision-language model sees, which of their views, and their images.

A study is used when at least one of its views has an image file on disk; the others are
skipped and counted with the reason (``no image path`` / ``image file missing``), never
dropped silently. Of a study's views at most ``max_views`` are shown, chosen so that a frontal
and a lateral view come first when the study has both, and always shown in the order
frontal, lateral, unknown position (the order :func:`order_views` defines).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from cxrfuse.data import Manifest
from cxrfuse.data.images import decode_resized, gray8
from cxrfuse.generation.prompts import report_target
from cxrfuse.problems import DataError
from cxrfuse.vocab import FRONTAL_VIEWS, LATERAL_VIEWS, SPLITS


def view_rank(view: str) -> int:
    """0 for frontal views, 1 for lateral ones, 2 for unknown positions."""
    return 0 if view in FRONTAL_VIEWS else 1 if view in LATERAL_VIEWS else 2


def order_views(views: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``views`` sorted frontal, lateral, unknown; the manifest order within each group."""
    return sorted(views, key=lambda v: view_rank(v["view"]))  # sorted() is stable


def choose_views(views: Sequence[dict[str, Any]], max_views: int | None) -> list[dict[str, Any]]:
    """At most ``max_views`` views: the first frontal and the first lateral before any other."""
    ordered = order_views(views)
    if max_views is None or len(ordered) <= max_views:
        return ordered
    firsts = [next((v for v in ordered if view_rank(v["view"]) == r), None) for r in (0, 1)]
    picked = [v for v in firsts if v is not None]
    picked += [v for v in ordered if all(v is not p for p in picked)]
    return order_views(picked[:max_views])


@dataclass(frozen=True)
class Study:
    """One study as the generator sees it."""

    study_id: str
    split: str | None
    views: tuple[tuple[str, str], ...]  # (view position, image path), in prompt order
    indication: str | None
    reference: str  # findings + impression: the fine-tuning target and the scoring reference


@dataclass
class Selection:
    """The studies chosen for a run and those skipped, with why."""

    studies: list[Study]
    skipped: dict[str, str] = field(default_factory=dict)  # study_id -> reason

    def skipped_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.skipped.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts


def _splits(split: str | Sequence[str] | None) -> list[str] | None:
    if split is None or split == "all":
        return None
    names = [split] if isinstance(split, str) else list(split)
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split(s) {unknown}; choose from {list(SPLITS)} or 'all'")
    return names


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def select_studies(
    manifest: Manifest,
    split: str | Sequence[str] | None = "test",
    *,
    limit: int | None = None,
    max_views: int | None = 2,
    require_reference: bool = False,
) -> Selection:
    """The manifest's studies of ``split`` (a name, a list, or ``"all"``) that have an image.

    ``limit`` keeps the first N usable studies in manifest order. ``require_reference``
    also skips studies without findings or impression text (fine-tuning needs a target).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    names = _splits(split)
    df = manifest.df
    if names is not None:
        if df["split"].isna().all():
            raise DataError("the manifest has no split column values; run `cxrfuse split` first")
        df = df[df["split"].isin(names)]
    selection = Selection(studies=[])
    for row in df.to_dict("records"):
        sid = str(row["study_id"])
        with_path = [v for v in row["views"] if v.get("path")]
        on_disk = [v for v in with_path if Path(v["path"]).is_file()]
        if not on_disk:
            selection.skipped[sid] = "image file missing" if with_path else "no image path"
            continue
        reference = report_target(row)
        if require_reference and not reference:
            selection.skipped[sid] = "no findings or impression"
            continue
        if limit is not None and len(selection.studies) >= limit:
            continue
        chosen = choose_views(on_disk, max_views)
        selection.studies.append(
            Study(
                study_id=sid,
                split=row["split"] if isinstance(row["split"], str) else None,
                views=tuple((v["view"], str(v["path"])) for v in chosen),
                indication=_text(row.get("indication")),
                reference=reference,
            )
        )
    return selection


def batches_by_view_count(
    studies: Sequence[Study], batch_size: int, *, generator: torch.Generator | None = None
) -> list[list[Study]]:
    """Batches whose studies all show the same number of images.

    Llama-3.2-Vision lets the text before the first image (the turn header) attend to every
    image slot of its row, padding slots included, so a one-view study batched with two-view
    studies would get a slightly different answer than alone. Batching by view count keeps
    batched and unbatched output identical. Without ``generator`` the manifest order is kept
    within each group; with it the studies are shuffled within groups and the batches are
    shuffled too (training).
    """
    groups: dict[int, list[Study]] = {}
    for study in studies:
        groups.setdefault(len(study.views), []).append(study)
    batches: list[list[Study]] = []
    for count in sorted(groups):
        group = groups[count]
        if generator is not None:
            group = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def load_image(path: str | Path, image_size: int | None = None) -> Image.Image:
    """An image file as an RGB PIL image of its 8-bit gray pixels.

    ``image_size`` takes the central square resized to that many pixels (the embedding
    store's decoding); ``None`` keeps the whole image and leaves resizing to the processor.
    """
    try:
        if image_size is not None:
            gray = Image.fromarray(decode_resized(path, image_size), mode="L")
        else:
            with Image.open(path) as img:
                img.load()
                gray = gray8(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    return gray.convert("RGB")


def load_views(study: Study, image_size: int | None = None) -> list[tuple[str, Image.Image]]:
    """``[(view position, image), ...]`` of ``study``, in prompt order."""
    return [(view, load_image(path, image_size)) for view, path in study.views]


def findings_for(findings: Mapping[str, Sequence[str]] | None, study_id: str) -> list[str] | None:
    """The classifier findings of one study; None when no findings were passed at all.

    A study missing from a given ``findings`` mapping is an error: the two-stage prompt
    would otherwise silently claim the classifier found nothing.
    """
    if findings is None:
        return None
    if study_id not in findings:
        raise DataError(
            f"study {study_id!r} has no entry in the classifier findings "
            f"({len(findings)} studies given); pass an empty list for a study with no findings"
        )
    value = findings[study_id]
    if isinstance(value, str):
        return [value]
    if isinstance(value, np.ndarray | pd.Series):
        value = value.tolist()
    return [str(v) for v in value]
