"""Can the pixels tell a frontal from a lateral chest radiograph? A study of the simplest check.

A frontal (PA/AP) film is close to mirror-symmetric about its vertical midline (spine in the
middle, a lung each side); a lateral is not (spine at the back, one lung field). The score is
the correlation of the 128-px image with its left-right mirror image; the check calls a film
lateral below a threshold. Measured on every real frontal of ``../shared/data/nih-cxr14-sample``
(310 PA/AP films) and on phantom frontals and laterals (``cxrfuse.data.phantoms``; synthetic).
No real lateral is on this machine, so the check cannot be validated on laterals; the
thresholds that keep 99 % and 100 % of the real frontals are reported with the share of
phantom laterals they would catch.

    PYTHONPATH=src .venv/bin/python benchmarks/view_pixels.py [--nih ../shared/data/nih-cxr14-sample]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfuse.data.images import decode_resized


def mirror_score(pixels: np.ndarray) -> float:
    """Correlation of an image with its left-right mirror (1 = symmetric)."""
    x = pixels.astype(np.float64)
    a, b = x.ravel(), x[:, ::-1].ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / max(np.sqrt((a @ a) * (b @ b)), 1e-9))


def phantom_scores(n: int, out: Path) -> dict[str, list[float]]:
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.phantoms import make_phantoms

    manifest, _ = ingest_iu_xray()
    small = manifest.replace(df=manifest.df.head(n).reset_index(drop=True))
    phantoms = make_phantoms(small, out, progress=False)
    scores: dict[str, list[float]] = {"frontal": [], "lateral": []}
    for views in phantoms.df["views"]:
        for v in views:
            kind = "lateral" if v["view"] == "LATERAL" else "frontal"
            scores[kind].append(mirror_score(decode_resized(v["path"], 128)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nih", type=Path, default=Path("../shared/data/nih-cxr14-sample"))
    parser.add_argument("--phantoms", type=int, default=100, help="phantom studies to draw")
    args = parser.parse_args()
    start = time.perf_counter()
    labels = pd.read_csv(args.nih / "labels.csv")
    real = np.array([mirror_score(decode_resized(args.nih / "images" / name, 128))
                     for name in labels["Image Index"]])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ph = phantom_scores(args.phantoms, Path(tmp))
    print(f"real NIH frontals: n = {len(real)} (views {labels['View Position'].value_counts().to_dict()})")
    print(f"  mirror score: min {real.min():.3f}, 1st pct {np.percentile(real, 1):.3f}, "
          f"median {np.median(real):.3f}, max {real.max():.3f}")
    for kind in ("frontal", "lateral"):
        s = np.array(ph[kind])
        print(f"phantom {kind}s: n = {len(s)}, min {s.min():.3f}, median {np.median(s):.3f}, "
              f"max {s.max():.3f}")
    lat = np.array(ph["lateral"])
    for share, thr in (("99 %", np.percentile(real, 1)), ("100 %", real.min())):
        print(f"threshold keeping {share} of real frontals ({thr:.3f}): phantom laterals caught "
              f"{(lat < thr).mean():.1%}, phantom frontals called lateral "
              f"{(np.array(ph['frontal']) < thr).mean():.1%}")
    print(f"{platform.machine()}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
