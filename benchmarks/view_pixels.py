"""Can the pixels tell a frontal from a lateral chest radiograph? A study of the simplest check.

Two scores of the 128-px image, each calling a film lateral below a threshold: ``mirror``, the
correlation of the image with its left-right mirror (a frontal film is close to symmetric about
its vertical midline: spine in the middle, a lung each side; a lateral is not); ``centre``,
how much brighter the middle tenth of the mid-chest column profile is than the darker of the
two side minima, in profile standard deviations (a frontal has the mediastinum between two
dark lungs; a lateral one lung field). Measured on every real frontal of ``../shared/data/nih-cxr14-sample``
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


def centre_score(pixels: np.ndarray) -> float:
    """Mediastinum between two dark lung fields: centre minus the darker side's minimum of
    the column profile of the middle 40 % of rows, in profile standard deviations."""
    x = pixels.astype(np.float64)
    h, w = x.shape
    profile = np.convolve(x[int(0.3 * h):int(0.7 * h)].mean(axis=0), np.ones(5) / 5, mode="same")
    left = profile[int(0.1 * w):int(0.45 * w)].min()
    right = profile[int(0.55 * w):int(0.9 * w)].min()
    centre = profile[int(0.45 * w):int(0.55 * w)].mean()
    return float((centre - max(left, right)) / (profile.std() or 1.0))


SCORES = {"mirror": mirror_score, "centre": centre_score}


def phantom_scores(n: int, out: Path) -> dict[str, dict[str, list[float]]]:
    from cxrfuse.data.iu_xray import ingest_iu_xray
    from cxrfuse.data.phantoms import make_phantoms

    manifest, _ = ingest_iu_xray()
    small = manifest.replace(df=manifest.df.head(n).reset_index(drop=True))
    phantoms = make_phantoms(small, out, progress=False)
    scores: dict[str, dict[str, list[float]]] = {k: {"frontal": [], "lateral": []} for k in SCORES}
    for views in phantoms.df["views"]:
        for v in views:
            kind = "lateral" if v["view"] == "LATERAL" else "frontal"
            pixels = decode_resized(v["path"], 128)
            for name, score in SCORES.items():
                scores[name][kind].append(score(pixels))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nih", type=Path, default=Path("../shared/data/nih-cxr14-sample"))
    parser.add_argument("--phantoms", type=int, default=100, help="phantom studies to draw")
    args = parser.parse_args()
    start = time.perf_counter()
    labels = pd.read_csv(args.nih / "labels.csv")
    real_pixels = [decode_resized(args.nih / "images" / name, 128) for name in labels["Image Index"]]
    with tempfile.TemporaryDirectory() as tmp:
        phantoms = phantom_scores(args.phantoms, Path(tmp))
    print(f"real NIH frontals: n = {len(real_pixels)} (views {labels['View Position'].value_counts().to_dict()})")
    for name, score in SCORES.items():
        real = np.array([score(p) for p in real_pixels])
        ph = {k: np.array(v) for k, v in phantoms[name].items()}
        print(f"[{name}] real frontals: min {real.min():.3f}, 1st pct {np.percentile(real, 1):.3f}, "
              f"median {np.median(real):.3f}, max {real.max():.3f}")
        for kind, s in ph.items():
            print(f"[{name}] phantom {kind}s: n = {len(s)}, min {s.min():.3f}, median "
                  f"{np.median(s):.3f}, max {s.max():.3f}")
        for share, thr in (("99 %", np.percentile(real, 1)), ("100 %", real.min())):
            print(f"[{name}] threshold keeping {share} of real frontals ({thr:.3f}): phantom "
                  f"laterals caught {(ph['lateral'] < thr).mean():.1%}, phantom frontals called "
                  f"lateral {(ph['frontal'] < thr).mean():.1%}")
    print(f"{platform.machine()}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
