"""Evaluation: metrics with val-chosen thresholds and bootstrap intervals, modality ablations,
the leakage probe, plots, and the HTML/Markdown report.

Typical use::

    from cxrfuse.evaluation import evaluate_run, evaluate_experiment, write_report

    metrics = evaluate_run("runs/exp/runs/multimodal-seed0", threshold="f1", n_boot=1000)
    evaluate_experiment("runs/exp")            # summary.csv / summary.md, paired tests, Venn
    html_path, md_path = write_report("runs/exp")

The array-level functions (:func:`compute_metrics`, :func:`bootstrap_ci`, :func:`delong_test`,
:func:`shuffle_sensitivity`, ...) take plain NumPy arrays and work with any model.
"""

from cxrfuse.evaluation.ablation import (
    complementarity,
    leakage_probe,
    modality_table,
    shuffle_sensitivity,
)
from cxrfuse.evaluation.bootstrap import (
    bootstrap_ci,
    delong_test,
    paired_bootstrap,
    seed_summary,
)
from cxrfuse.evaluation.metrics import (
    calibration,
    choose_thresholds,
    compute_metrics,
)
from cxrfuse.evaluation.report import write_report
from cxrfuse.evaluation.run import evaluate_experiment, evaluate_run, shuffle_run

__all__ = [
    "bootstrap_ci",
    "calibration",
    "choose_thresholds",
    "complementarity",
    "compute_metrics",
    "delong_test",
    "evaluate_experiment",
    "evaluate_run",
    "leakage_probe",
    "modality_table",
    "paired_bootstrap",
    "seed_summary",
    "shuffle_run",
    "shuffle_sensitivity",
    "write_report",
]
