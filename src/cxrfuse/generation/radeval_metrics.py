"""Metrics beyond pycocoevalcap through RadEval (PyPI ``radeval``, MIT): ``--metrics radeval:<names>``.

RadEval wraps RadGraph F1, CheXbert F1, BERTScore, RaTEScore, GREEN, RadCliQ and more behind
``RadEval(metrics=[...], per_sample=True)(refs=..., hyps=...)``, which returns per-report
scores; :class:`RadEvalMetrics` feeds it the same studies as the other metrics, and
:func:`~cxrfuse.generation.scoring.score_reports` averages the per-study scores with
bootstrap intervals and paired differences on the same replicates.

Before anything is scored, the package and every model the chosen metrics need are looked
for (the Hugging Face cache, RadGraph's own cache); whatever is missing is named in one
``error:`` line with where it was looked for, never a silent 0. RadEval is not a dependency
of cxrfuse: ``pip install radeval`` would change the project's numpy and pandas versions
(radeval 2.2.1 pulls numpy 1.26.4 and pandas 3.0.6), so install it in its own environment.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrfuse.problems import CxrfuseError

RRG = "StanfordAIMI/RRG_scorers"
RADGRAPH_CACHE = Path("~/.cache/radgraph/0.1.18").expanduser()
"""Where RadEval's bundled RadGraph unpacks its model archives (one folder per model type)."""
RADEVAL_MODELS: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    # metric: (model, Hugging Face repo, file in it | "radgraph:<type>" for RadGraph's cache)
    "bleu": (),
    "rouge": (),
    "bertscore": (("BERTScore encoder", "distilbert-base-uncased", "config.json"),),
    "radeval_bertscore": (("RadEval ModernBERT", "IAMJB/RadEvalModernBERT", "config.json"),),
    "f1chexbert": (("CheXbert", RRG, "chexbert.pth"), ("CheXbert backbone", "bert-base-uncased", "config.json")),
    "radgraph": (("RadGraph-XL", RRG, "radgraph:radgraph-xl"),),
    "ratescore": (("RaTE-NER", "Angelakeke/RaTE-NER-Deberta", "config.json"),
                  ("BioLORD", "FremyCompany/BioLORD-2023-C", "config.json")),
    "radcliq": (("RadGraph", RRG, "radgraph:radgraph"), ("RadCliQ BERTScore encoder", "distilroberta-base", "config.json"),
                ("CheXbert (SembScore)", RRG, "chexbert.pth")),
    "green": (("GREEN", "StanfordAIMI/GREEN-radllama2-7b", "config.json"),),
}
"""The models each supported RadEval metric loads (from RadEval's sources)."""


def hub_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE`` / ``HF_HOME`` honoured)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return home / "hub"


def _cached(repo: str, filename: str) -> tuple[bool, str]:
    """(whether the model file is on disk, where it was looked for)."""
    if filename.startswith("radgraph:"):
        folder = RADGRAPH_CACHE / filename.split(":", 1)[1]
        return folder.is_dir() and any(folder.iterdir()), str(folder)
    folder = hub_cache() / f"models--{repo.replace('/', '--')}"
    found = any(folder.glob(f"snapshots/*/{filename}")) if folder.is_dir() else False
    return found, str(folder)


def missing_models(names: Sequence[str]) -> list[str]:
    """``"<metric>: <model> (<repo>, looked for in <folder>)"`` for each model not on disk."""
    out = []
    for name in names:
        for model, repo, filename in RADEVAL_MODELS[name]:
            found, where = _cached(repo, filename or "config.json")
            if not found:
                out.append(f"{name}: {model} ({repo}; looked for in {where})")
    return out


class RadEvalMetrics:
    """Per-study scores of the chosen RadEval metrics (keys ``radeval:<key>``)."""

    def __init__(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in RADEVAL_MODELS]
        if unknown or not names:
            raise CxrfuseError(f"unknown RadEval metric(s) {unknown or names}; choose from {sorted(RADEVAL_MODELS)}")
        self.names = list(dict.fromkeys(names))
        problems = []
        if importlib.util.find_spec("radeval") is None:
            problems.append("the radeval package is not installed (pip install radeval, in an "
                            "environment of its own: it changes numpy and pandas)")
        problems += missing_models(self.names)
        if problems:
            raise CxrfuseError(f"radeval:{','.join(self.names)} cannot run here: "
                               + "; ".join(problems) + ". Download the models on a connected "
                               "machine (huggingface-cli download REPO) and copy the caches.")
        self.description = f"RadEval {_version()} ({', '.join(self.names)})"

    def score(self, hyps: list[str], refs: list[str]) -> dict[str, np.ndarray]:
        """Metric key -> per-study scores (only the keys RadEval returns per report)."""
        from radeval import RadEval

        result = RadEval(metrics=self.names, per_sample=True)(refs=refs, hyps=hyps)
        out = {}
        for key, values in result.items():
            if isinstance(values, (list, tuple, np.ndarray)) and len(values) == len(hyps):
                out[f"radeval:{key}"] = np.asarray(values, dtype=np.float64)
        if not out:
            raise CxrfuseError(f"RadEval returned no per-report scores for {self.names} "
                               f"(keys: {sorted(result)})")
        return out


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("radeval")
    except metadata.PackageNotFoundError:
        return "?"


def parse_metrics(spec: str) -> Any:
    """``radeval:<name>[,<name>...]`` -> :class:`RadEvalMetrics` (checked for its models)."""
    source, _, names = spec.partition(":")
    if source.strip().lower() != "radeval" or not names.strip():
        raise CxrfuseError(f"--metrics {spec!r}: expected radeval:<name>[,<name>...], names from "
                           f"{sorted(RADEVAL_MODELS)}")
    return RadEvalMetrics([n.strip().lower() for n in names.split(",") if n.strip()])


__all__ = ["RADEVAL_MODELS", "RadEvalMetrics", "hub_cache", "missing_models", "parse_metrics"]
