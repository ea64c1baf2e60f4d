"""How often the IU X-ray (OpenI) view sources disagree, and which one the ingest trusts.

Sources on this machine (all bundled with torchxrayvision): the DICOM header table
``nlmcxr_dicom_metadata.csv.gz`` (View Position, Acquisition Device Processing Code), the
pixel-derived view of one image per study ``nlmcxr_tsne_pa.csv.gz`` (a t-SNE of the images,
PA or L) and the image file naming (``IM-0001-1001``: the last four digits are the series and
instance number, not a view). The Kaggle ``indiana_projections.csv`` of the real images is not
on this machine (``../shared/data/iu-nih-pairs`` imitates its layout with NIH frontals), so it
is not measured here. The pixel-derived view is the reference where present; each other
source is scored against it.

    PYTHONPATH=src .venv/bin/python benchmarks/view_sources.py
"""

from __future__ import annotations

import platform
import re
import time
from collections import Counter

from cxrfuse.data.iu_xray import (
    PROCESSING_CODE_VIEWS,
    bundled_dicom_metadata,
    bundled_pixel_views,
    bundled_reports,
    dicom_views,
    ingest_iu_xray,
    iter_openi_reports,
    pixel_views,
)
from cxrfuse.data.manifest import view_kind
from cxrfuse.problems import ProblemLog


def _key(image_id: str) -> str:
    return re.sub(r"^CXR(\d+)_\d+_IM", r"CXR\1_IM", image_id)


def agreement(pairs: list[tuple[str, str]]) -> str:
    """``agree / n (share)`` of (source kind, reference kind) pairs where the source has a kind."""
    known = [(s, r) for s, r in pairs if s != "unknown"]
    same = sum(s == r for s, r in known)
    return f"{same} / {len(known)} ({same / max(len(known), 1):.1%})"


def main() -> None:
    start = time.perf_counter()
    header = dicom_views(bundled_dicom_metadata())
    pixels = pixel_views(bundled_pixel_views())
    reports = list(iter_openi_reports(bundled_reports(), ProblemLog()))
    images = [i for r in reports for i in r.image_ids]
    print(f"{len(reports)} reports, {len(images)} images; DICOM rows {len(header)}, "
          f"pixel-derived views {len(pixels)}")
    ref = {i: view_kind(pixels[i]) for i in images if i in pixels}
    rows = []
    for name, kind_of in (
        ("DICOM View Position", lambda m: view_kind(m["header_view"])),
        ("DICOM processing code", lambda m: view_kind(m["code_view"])),
    ):
        pairs = [(kind_of(header.get(_key(i), {"header_view": None, "code_view": None})), r)
                 for i, r in ref.items()]  # fmt: skip
        rows.append((name, agreement(pairs)))
    suffix = [("frontal" if i[-4] == "1" else "lateral" if i[-4] == "2" else "unknown", r)
              for i, r in ref.items()]  # fmt: skip
    rows.append(("file name (-1xxx frontal, -2xxx lateral)", agreement(suffix)))
    print("\nagreement with the pixel-derived view (images where both have a kind):")
    for name, text in rows:
        print(f"  {name:42s} {text}")
    print("\nprocessing code -> pixel-derived view (lateral / frontal):")
    codes = _codes()
    for code, view in PROCESSING_CODE_VIEWS.items():
        kinds = Counter(r for i, r in ref.items() if codes.get(_key(i)) == code)
        print(f"  {code:>6} says {view:8s} pixels: {kinds['lateral']} lateral, {kinds['frontal']} frontal")
    header_pa = Counter(ref[i] for i in ref if header.get(_key(i), {}).get("header_view") == "PA")
    print(f"\nheader says PA: pixels say lateral for {header_pa['lateral']} of "
          f"{sum(header_pa.values())}")
    header_lat = Counter(ref[i] for i in ref if view_kind(header.get(_key(i), {}).get("header_view")) == "lateral")
    print(f"header says lateral: pixels say frontal for {header_lat['frontal']} of {sum(header_lat.values())}")

    two = [r for r in reports if len(r.image_ids) == 2]
    pa_pa = sum(all(header.get(_key(i), {}).get("header_view") == "PA" for i in r.image_ids) for r in two)
    manifest, problems = ingest_iu_xray()
    after = Counter(tuple(sorted(v["view"] for v in vs))
                    for vs in manifest.df["views"] if len(vs) == 2)  # fmt: skip
    print(f"\ntwo-view studies: {len(two)}; PA+PA by the DICOM header: {pa_pa}; after the "
          f"ingest's source preference: PA+PA {after[('PA', 'PA')]}, "
          f"lateral+lateral {sum(n for k, n in after.items() if all(view_kind(v) == 'lateral' for v in k))}")
    print("ingest problems:", problems.counts())
    print(f"\n{platform.machine()}, {time.perf_counter() - start:.1f} s")


def _codes() -> dict[str, str]:
    """``image_id -> Acquisition Device Processing Code`` of the DICOM header table."""
    import pandas as pd

    table = pd.read_csv(bundled_dicom_metadata(), dtype=str,
                        usecols=["imageid", "Acquisition Device Processing Code"])  # fmt: skip
    return dict(zip(table["imageid"], table["Acquisition Device Processing Code"].fillna("")))


if __name__ == "__main__":
    main()
