"""View positions you can trust: the view kinds a run read in training, and the plausibility of
a study's view metadata at ingest.

* :func:`view_slots`: THE slot layout of a head's view fusion (:data:`ViewMode`), the one rule
  the embedding store, fine-tuning, explain and predict all use: ``frontal`` one slot, the
  first frontal view; ``concat`` two slots, the first frontal and the first lateral view;
  ``mean`` / ``attention`` every view, in the given order. A view of unknown position fills no
  ``frontal`` / ``concat`` slot, and a missing kind leaves its slot empty (zeros, mask False).
* :func:`read_view_counts`: the images a view fusion reads of each study, counted by kind
  (frontal, lateral, unknown). Training records it in ``run.json`` (``views``); predict
  warns about a view kind the run never read.
* :func:`implausible_views`: a study whose metadata says two or more frontal views of the same
  position and no lateral (a lateral marked PA, the common IU X-ray error), or whose image is
  named like a lateral but marked frontal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from cxrfuse.data.manifest import view_kind
from cxrfuse.problems import ConfigError
from cxrfuse.vocab import FRONTAL_VIEWS, LATERAL_VIEWS, VIEW_KINDS

ViewMode = Literal["frontal", "mean", "concat", "attention"]
"""How a head fuses a study's views (``image.views`` of a run config)."""
VIEW_MODES: tuple[str, ...] = ("frontal", "mean", "concat", "attention")

LATERAL_NAME = re.compile(r"(?:^|[^a-z])(?:lat|lateral|ll|rl)(?:[^a-z]|$)", re.IGNORECASE)
"""A file name or image id that says lateral (``1_lateral.png``, ``cxr-LL.dcm``, ``lat``)."""


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(VIEW_KINDS, 0)


def view_slots(positions: Sequence[str | None], view_fusion: str) -> list[int | None]:
    """Per head slot, the index into ``positions`` (a study's usable views, in order) of the
    view the slot reads, None for an empty slot (zeros, mask False).

    ``frontal``: ``[first frontal]``; ``concat``: ``[first frontal, first lateral]``; ``mean``
    and ``attention``: every view in the given order (``len(positions)`` slots; a batch pads
    them to its widest study). Views of unknown position fill no ``frontal`` / ``concat``
    slot, and no other view stands in for a missing one: the rule the heads were trained on.
    """

    def first(kinds: frozenset[str]) -> int | None:
        return next((i for i, p in enumerate(positions) if p in kinds), None)

    if view_fusion == "frontal":
        return [first(FRONTAL_VIEWS)]
    if view_fusion == "concat":
        return [first(FRONTAL_VIEWS), first(LATERAL_VIEWS)]
    if view_fusion in ("mean", "attention"):
        return list(range(len(positions)))
    raise ConfigError(f"image.views: {view_fusion!r} unknown; choose one of {', '.join(VIEW_MODES)}")


def read_views(views: Sequence[Mapping[str, Any]], view_fusion: str) -> list[str]:
    """The view positions a view fusion reads of one study's views (those with pixels)."""
    present = [str(v.get("view")) for v in views if v.get("path")]
    return [present[i] for i in view_slots(present, view_fusion) if i is not None]


def read_view_counts(studies: Iterable[Sequence[Mapping[str, Any]]], view_fusion: str) -> dict[str, int]:
    """How many images of each kind (frontal, lateral, unknown) ``view_fusion`` reads of these
    studies' views, plus ``studies`` (how many studies had any image read)."""
    counts = empty_counts()
    n = 0
    for views in studies:
        read = read_views(views, view_fusion)
        n += bool(read)
        for view in read:
            counts[view_kind(view)] += 1
    return {**counts, "studies": n}


def view_label(view: str | None) -> str:
    """A short label of a view position for messages: ``PA (frontal)``."""
    return f"{view} ({view_kind(view)})"


def implausible_views(views: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a study's view metadata cannot be right, or None.

    Two or more views all of one frontal position (PA+PA, AP+AP) with no lateral: a two-view
    chest study is a frontal and a lateral, so one of them is most likely a lateral marked
    frontal. Two or more views all lateral. A view marked frontal whose image id or file name
    says lateral."""
    positions = [str(v.get("view")) for v in views]
    named = [str(v.get("image_id") or "") + " " + str(v.get("path") or "").rsplit("/", 1)[-1]
             for v in views]  # fmt: skip
    for position, name in zip(positions, named):
        if position in FRONTAL_VIEWS and LATERAL_NAME.search(name.replace("_", " ")):
            return f"view {name.split()[0]!r} is marked {position} but named like a lateral"
    frontal = [p for p in positions if p in FRONTAL_VIEWS]
    if len(frontal) >= 2 and len(frontal) == len(positions) and len(set(frontal)) == 1:
        return (f"{len(frontal)} views all marked {frontal[0]} and none lateral (one is most "
                "likely a lateral marked frontal)")  # fmt: skip
    if len(positions) >= 2 and all(view_kind(p) == "lateral" for p in positions):
        return f"{len(positions)} views all marked lateral and none frontal"
    return None
