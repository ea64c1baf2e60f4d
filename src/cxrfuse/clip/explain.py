"""Grad-CAM on the CLIP image tower (design 002): where the image matched a label's prompts.

The zero-shot score of a label is ``sigmoid((cos(image, positive) - cos(image, negative)) /
T)`` (:mod:`cxrfuse.clip.zero_shot`). :class:`ZeroShotHead` computes its logit from the image
tower's features, as a one-view, image-only fusion head, so the explanation machinery of
:mod:`cxrfuse.explain` (pytorch-grad-cam methods, overlays, the pointing game on phantoms)
runs on a CLIP run unchanged: ``cxrfuse explain RUNS/<clip run> [--score]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrfuse.clip.embed import load_run
from cxrfuse.clip.zero_shot import prompt_embeddings
from cxrfuse.data.manifest import Manifest
from cxrfuse.explain import Explainer
from cxrfuse.fusion import FusionHead


class ZeroShotHead(FusionHead):
    """Per label, the zero-shot logit ``(z . (pos - neg)) / T`` of the projected image ``z``.

    ``directions`` (L, P) are the unit positive minus unit negative prompt embeddings.
    """

    def __init__(self, projection: nn.Linear, directions: torch.Tensor, temperature: float):
        super().__init__(modalities=["image"], n_outputs=len(directions),
                         image_dim=projection.in_features, view_fusion="frontal", n_views=1)  # fmt: skip
        self.projection = projection
        self.register_buffer("directions", directions.detach().float().clone())
        self.temperature = float(temperature)

    def forward(
        self,
        image: torch.Tensor | None,
        image_mask: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pooled = self.modality_vectors(image, image_mask, None, None)["image"]
        z = F.normalize(self.projection(pooled).float(), dim=-1)
        return z @ self.directions.T / self.temperature


def clip_explainer(
    run_dir: str | Path, task: str | None = None, device: str = "cpu"
) -> tuple[Explainer, Manifest]:
    """An :class:`Explainer` of the zero-shot scores of a CLIP run (labels of ``task``, by
    default the run's zero-shot task), and the run's manifest."""
    run = load_run(run_dir, progress=False)
    config = run.config.zero_shot
    labels = run.manifest.task_labels(task or config.task or run.config.data.task)
    prompts = prompt_embeddings(run, labels, config)
    directions = torch.stack([prompts[label]["pos"] - prompts[label]["neg"] for label in labels])
    head = ZeroShotHead(run.model.image_projection, directions, float(run.model.temperature()))
    explainer = Explainer(run.model.image_encoder, head, labels, output="sigmoid", device=device)
    return explainer, run.manifest
