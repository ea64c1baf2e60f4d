"""Image-to-report and report-to-image retrieval Recall@K, with chance level beside it.

Recall@K counts a query as a hit when its own pair (the same study) is among the K most
similar items of the other modality. Chance is ``K / N`` for N candidates. Exact-pair recall
is conservative: two studies with the same report text (frequent for normal IU reports)
can never be told apart, so a model that ranks an identical report first still misses.
The *label ceiling* is the expected Recall@K of an oracle that knows every study's labels and
ranks first the candidates with the query's exact label set (at random among them): what a
model that sees nothing of a pair but its labels can reach (phantom images carry nothing
else).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrfuse.rundir import RunDir, layout
from cxrfuse.rundir.modelcard import write_model_card


def pair_ranks(similarity: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of the true pair for each image query and each text query.

    ``similarity[i, j]`` is image i against text j; the pair of row i is column i. Ties count
    against the model (the true pair is ranked after every item scoring as high).
    """
    s = torch.as_tensor(similarity, dtype=torch.float32)
    diag = s.diagonal()
    image_to_text = (s > diag[:, None]).sum(1) + ((s == diag[:, None]).sum(1) - 1)
    text_to_image = (s > diag[None, :]).sum(0) + ((s == diag[None, :]).sum(0) - 1)
    return image_to_text.numpy(), text_to_image.numpy()


def recall_at_k(similarity: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """``{"image_to_text": {k: recall}, "text_to_image": {...}, "chance": {k: K/N}, "n": N}``."""
    i2t, t2i = pair_ranks(similarity)
    n = len(i2t)
    return {
        "n": n,
        "image_to_text": {int(k): float((i2t < k).mean()) if n else float("nan") for k in ks},
        "text_to_image": {int(k): float((t2i < k).mean()) if n else float("nan") for k in ks},
        "chance": {int(k): min(1.0, k / n) if n else float("nan") for k in ks},
        "median_rank": {"image_to_text": float(np.median(i2t) + 1) if n else float("nan"),
                        "text_to_image": float(np.median(t2i) + 1) if n else float("nan")},
    }  # fmt: skip


def label_ceiling(labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Expected Recall@K of the label oracle (same keys as :func:`recall_at_k`).

    The oracle ranks first every candidate whose label set equals the query's (unknown labels
    count as absent); the true pair sits uniformly at random among those ``t + 1`` ties, so
    its expected Recall@K is ``min(1, K / (t + 1))``, exactly, in both directions.
    """
    y = torch.as_tensor(np.nan_to_num(np.asarray(labels, dtype=np.float64)) > 0,
                        dtype=torch.float64)  # fmt: skip
    n = len(y)
    counts = y.sum(1)
    hamming = counts[:, None] + counts[None, :] - 2 * (y @ y.T)  # labels on which two differ
    ties = ((hamming == 0).sum(1) - 1).numpy()  # other studies with the very same labels
    recall = {int(k): float(np.minimum(1.0, k / (ties + 1)).mean()) if n else float("nan")
              for k in ks}  # fmt: skip
    median = float(np.median((ties + 2) / 2)) if n else float("nan")  # expected rank, 1-based
    return {"n": n, "image_to_text": recall, "text_to_image": dict(recall),
            "chance": {int(k): min(1.0, k / n) if n else float("nan") for k in ks},
            "median_rank": {"image_to_text": median, "text_to_image": median}}  # fmt: skip


def retrieval_markdown(result: dict[str, Any], title: str = "Retrieval") -> str:
    """A Markdown table: Recall@K per direction with chance beside it."""
    ks = sorted(result["chance"])
    lines = [f"## {title} ({result['split']} split, N = {result['n']})", "",
             "| direction | " + " | ".join(f"R@{k}" for k in ks) + " | median rank |",
             "|---|" + "---:|" * (len(ks) + 1)]  # fmt: skip
    for key, name in (("image_to_text", "image -> report"), ("text_to_image", "report -> image")):
        cells = " | ".join(f"{result[key][k]:.3f}" for k in ks)
        lines.append(f"| {name} | {cells} | {result['median_rank'][key]:.0f} |")
    chance = " | ".join(f"{result['chance'][k]:.3f}" for k in ks)
    lines.append(f"| chance (K/N) | {chance} | {(result['n'] + 1) / 2:.0f} |")
    if result.get("label_ceiling"):
        ceiling = result["label_ceiling"]["image_to_text"]
        cells = " | ".join(f"{ceiling[k]:.3f}" for k in ks)
        lines.append(f"| label ceiling (oracle: same label set) | {cells} | "
                     f"{result['label_ceiling']['median_rank']['image_to_text']:.0f} |")  # fmt: skip
    lines += ["", ("Exact-pair recall: a study's own report must be retrieved; identical report "
              "texts of other studies count as misses.")]  # fmt: skip
    if result.get("synthetic"):
        lines.append("Images are synthetic phantoms drawn from the labels (reports are real).")
    return "\n".join(lines) + "\n"


def run_retrieval(run_dir: str | Path, split: str | None = None,
                  ks: Sequence[int] | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Recall@K both ways on a split of a trained CLIP run, with chance and the label ceiling;
    writes retrieval.json/.md there."""
    from cxrfuse.clip.embed import load_run
    
    run = load_run(run_dir, progress=progress)
    cfg = run.config.retrieval
    split = split or cfg.split
    ks = list(ks or cfg.ks)
    image, text, pairs = run.embed_split(split)
    result = {"split": split, **recall_at_k(image @ text.T, ks),
              "synthetic": run.synthetic, "images": run.manifest.images}  # fmt: skip
    if pairs.labels.size:
        result["label_ceiling"] = label_ceiling(pairs.labels, ks)
    out = Path(run_dir)
    RunDir(out).write_analysis(layout.RETRIEVAL, result, retrieval_markdown(result))
    write_model_card(out)  # the card shows the new figures
    return result
