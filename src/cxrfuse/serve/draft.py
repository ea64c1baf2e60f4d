"""A draft report for an uploaded study, from the report generator stored with the run.

The hook is the retrieval generator (``cxrfuse generate retrieval``) whose generation directory
sits in the run (``RUN/generation/NAME``) or in the run's experiment
(``EXPERIMENT/generation/NAME``): when it searched the image space of the run's own image
encoder (no CLIP run, no indication term), the upload's mean view embedding is searched
against the run's training studies with the generator's ``k`` and consensus, so the draft is
the report that generator would have written. Other generators (VLM, LoRA, CLIP retrieval)
need their own models and are not served; :meth:`Drafter.from_run` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cxrfuse.generation.baselines import manifest_reports
from cxrfuse.generation.retrieval import SearchSpace, choose_reports, unit_rows
from cxrfuse.inference import LoadedRun
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import ExperimentDir, GenerationDir, layout


def generation_dirs(run: LoadedRun) -> list[GenerationDir]:
    """Generation directories of the run, then of its experiment (when it is in one)."""
    found = run.run.generation_dirs()
    if run.run_dir.parent.name == layout.RUNS:
        found += ExperimentDir(run.run_dir.parent.parent).generation_dirs()
    return found


@dataclass
class Drafter:
    """Retrieval from the run's training studies, as the stored generator was configured."""

    generator: str
    k: int
    consensus: str
    bank_ids: list[str]
    bank: np.ndarray
    texts: dict[str, str]

    @classmethod
    def from_run(cls, run: LoadedRun) -> tuple[Drafter | None, str | None]:
        """(drafter, None), or (None, why no draft can be served)."""
        dirs = generation_dirs(run)
        if not dirs:
            return None, ("no report generator is stored with this run (write one with "
                          "`cxrfuse generate retrieval --out RUN/generation/retrieval`)")  # fmt: skip
        image = run.sidecar.image
        reasons = []
        for gen in dirs:
            try:
                settings = gen.settings()
            except CxrfuseError as err:
                reasons.append(str(err))
                continue
            if settings.get("kind") != "retrieval" or settings.get("clip_run"):
                reasons.append(f"{gen.name}: a {settings.get('kind')} generator needs its own model")
            elif settings.get("indication_encoder"):
                reasons.append(f"{gen.name}: searches image + indication space")
            elif image is None or image.finetuned or settings.get("image_encoder") != image.encoder:
                reasons.append(f"{gen.name}: searched {settings.get('image_encoder')} embeddings, "
                               "not this run's image encoder")  # fmt: skip
            else:
                try:
                    return cls.of(run, settings), None
                except CxrfuseError as err:
                    reasons.append(f"{gen.name}: {err}")
        return None, "no stored generator can draft for an upload: " + "; ".join(reasons)

    @classmethod
    def of(cls, run: LoadedRun, settings: dict[str, Any]) -> Drafter:
        arrays = run.arrays()
        if arrays.image is None or arrays.image_mask is None:
            raise CxrfuseError("the run's stores hold no image embeddings")
        texts = manifest_reports(run.manifest(), ["train"])
        ids = [str(s) for s in arrays.study_ids]
        rows = [i for i in arrays.indices("train") if ids[i] in texts and arrays.image_mask[i].any()]
        if not rows:
            raise CxrfuseError("no training study has an image and report text")
        mean = np.empty((len(rows), arrays.image_dim), dtype=np.float32)
        for lo in range(0, len(rows), 4096):  # blocks: attention views are padded per block
            block = rows[lo:lo + 4096]
            image, mask = np.asarray(arrays.image[block], np.float32), arrays.image_mask[block]
            mean[lo:lo + len(block)] = (image * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return cls(str(settings.get("generator", "retrieval")), int(settings.get("k", 1)),
                   str(settings.get("consensus", "top1")), [ids[i] for i in rows],
                   unit_rows(mean), texts)  # fmt: skip

    def draft(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """The draft for one study's view embeddings (1, V, D) and mask (1, V)."""
        views = image[0][mask[0]].numpy()
        query = unit_rows(views.mean(axis=0, keepdims=True))
        space = SearchSpace(["upload"], query, self.bank_ids, self.bank, "upload")
        row = choose_reports(space, self.texts, self.k, self.consensus).iloc[0]  # type: ignore[arg-type]
        return {"text": str(row["generated"]), "generator": self.generator,
                "source_study_id": str(row["source_study_id"]),
                "similarity": float(row["similarity"]),
                "note": "retrieved from the run's training reports; a draft for a reader to "
                        "correct, not a finding"}  # fmt: skip
