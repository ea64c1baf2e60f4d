"""``cxrfuse evaluate PATH`` as one library call: a run, an experiment or (``on=``) external
validation, chosen from what PATH holds; the CLI only prints what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cxrfuse.evaluation.experiment import evaluate_experiment
from cxrfuse.evaluation.external import evaluate_external
from cxrfuse.evaluation.metrics import parse_threshold
from cxrfuse.evaluation.run import evaluate_run, shuffle_run
from cxrfuse.problems import CxrfuseError
from cxrfuse.rundir import ExperimentDir, RunDir

SHUFFLE_CHOICES = {"image": ("image",), "text": ("text",), "both": ("image", "text")}
"""``--shuffle`` values and the modalities each shuffles."""


@dataclass
class Evaluation:
    """What :func:`evaluate_path` did: ``kind`` (run, experiment or external), the stage's
    result and, for an experiment with ``shuffle``, each shuffled run's ablation."""

    kind: Literal["run", "experiment", "external"]
    result: dict[str, Any]
    shuffles: dict[Path, dict[str, Any]] = field(default_factory=dict)


def shuffle_modalities(shuffle: str | None) -> list[str]:
    """``None`` / image / text / both as the modalities to shuffle."""
    if shuffle is None:
        return []
    if shuffle not in SHUFFLE_CHOICES:
        raise CxrfuseError(f"shuffle {shuffle!r}: choose {', '.join(SHUFFLE_CHOICES)}")
    return list(SHUFFLE_CHOICES[shuffle])


def evaluate_path(
    path: str | Path,
    threshold: str | float | None = None,
    n_boot: int | None = None,
    seed: int = 0,
    *,
    shuffle: str | None = None,
    repeats: int = 5,
    leakage: bool = True,
    on: str | Path | None = None,
    out: str | Path | None = None,
    recalibration: str | None = None,
    calibration_fraction: float = 0.2,
    align: dict[str, str] | None = None,
) -> Evaluation:
    """Evaluate a run directory or an experiment directory (or, with ``on``, a run on another
    manifest); a bad threshold fails before any work."""
    path = Path(path)
    if on is not None:
        if not RunDir(path).exists():
            raise CxrfuseError(f"{path}: --on needs a run directory (with run.json)")
        result = evaluate_external(path, on, out, align=align, recalibration=recalibration,
                                   calibration_fraction=calibration_fraction, n_boot=n_boot,
                                   seed=seed)  # fmt: skip
        return Evaluation("external", result)
    if threshold is not None:
        parse_threshold(str(threshold))
    modalities = shuffle_modalities(shuffle)
    if RunDir(path).exists():
        result = evaluate_run(path, threshold, n_boot, seed, leakage=leakage, shuffle=modalities,
                              repeats=repeats)  # fmt: skip
        return Evaluation("run", result)
    result = evaluate_experiment(path, threshold, n_boot, seed, leakage=leakage)
    shuffles: dict[Path, dict[str, Any]] = {}
    if modalities:
        targets = [d.path for d in ExperimentDir(path).run_dirs()
                   if d.status() == "finished" and set(modalities) <= set(d.info().modalities)]  # fmt: skip
        if not targets:
            raise CxrfuseError(f"no finished run uses all of {modalities}; nothing to shuffle")
        for run_dir in targets:
            shuffles[run_dir] = shuffle_run(run_dir, modalities, repeats=repeats, seed=seed)
    return Evaluation("experiment", result, shuffles)

