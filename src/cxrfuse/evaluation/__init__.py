"""Evaluation: metrics with val-chosen thresholds and bootstrap intervals, modality ablations,
the leakage probe and plots. (The HTML/Markdown report is :mod:`cxrfuse.reporting`.)

Typical use::

    from cxrfuse.evaluation import evaluate_run, evaluate_experiment

    metrics = evaluate_run("runs/exp/runs/multimodal-seed0", threshold="f1", n_boot=1000)
    evaluate_experiment("runs/exp")            # evaluation.csv / .md, paired tests, Venn
    evaluate_external("runs/exp/runs/image-seed0", "nih.parquet")   # another manifest, aligned

The array-level functions (:func:`compute_metrics`, :func:`bootstrap_ci`, :func:`delong_test`,
:func:`shuffle_sensitivity`, :func:`baselines`, :func:`run_verdicts`, ...) take plain NumPy
arrays and work with any model.
"""

from cxrfuse.evaluation.ablation import (
    complementarity,
    format_table,
    format_value,
    leakage_probe,
    modality_name,
    modality_table,
    shuffle_sensitivity,
)
from cxrfuse.evaluation.alignment import align_labels
from cxrfuse.evaluation.backbones import compare_backbones
from cxrfuse.evaluation.bootstrap import (
    bootstrap_ci,
    delong_test,
    paired_bootstrap,
    seed_summary,
)
from cxrfuse.evaluation.dispatch import Evaluation, evaluate_path
from cxrfuse.evaluation.experiment import evaluate_experiment
from cxrfuse.evaluation.external import evaluate_external
from cxrfuse.evaluation.metrics import (
    HEADLINE,
    calibration,
    choose_thresholds,
    compute_metrics,
)
from cxrfuse.evaluation.run import evaluate_run, shuffle_run
from cxrfuse.evaluation.subgroups import subgroup_metrics
from cxrfuse.evaluation.verdicts import (
    baselines,
    experiment_conclusion,
    paired_verdict,
    run_conclusion,
    run_verdicts,
)

__all__ = [
    "HEADLINE",
    "Evaluation",
    "align_labels",
    "baselines",
    "bootstrap_ci",
    "calibration",
    "choose_thresholds",
    "compare_backbones",
    "complementarity",
    "compute_metrics",
    "delong_test",
    "evaluate_experiment",
    "evaluate_external",
    "evaluate_path",
    "evaluate_run",
    "experiment_conclusion",
    "format_table",
    "format_value",
    "leakage_probe",
    "modality_name",
    "modality_table",
    "paired_bootstrap",
    "paired_verdict",
    "run_conclusion",
    "run_verdicts",
    "seed_summary",
    "shuffle_run",
    "shuffle_sensitivity",
    "subgroup_metrics",
]
