"""Design 001's table: test metrics per task and backbone of an experiment grid."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cxrfuse.files import write_text
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import DataError
from cxrfuse.rundir import ExperimentDir


def compare_backbones(
    experiment_dir: str | Path,
    metrics: Sequence[str] = ("auroc", "f1", "accuracy"),
    *,
    backbone_key: str = "image.encoder",
    task_key: str = "data.task",
) -> pd.DataFrame:
    """Design 001's table: test metrics per task (rows) and backbone (columns) of a grid.

    Reads the experiment's ``summary.csv`` (finished runs; mean over seeds) and writes
    ``backbones.csv`` (long form: task, backbone, metric, mean, sd, n_seeds),
    ``backbones.md`` (one task x backbone table per metric, best backbone per task in bold) and
    ``plots/backbones_<metric>.png`` (grouped bars). Returns the long table.
    """
    exp = ExperimentDir(experiment_dir)
    folder, path = exp.path, exp.summary_csv
    if not path.is_file():
        raise DataError(f"{path}: no such file; run `cxrfuse experiment` on the grid first")
    table = pd.read_csv(path)
    missing = [k for k in (backbone_key, task_key) if k not in table.columns]
    if missing:
        raise DataError(f"{path}: the grid has no {missing} column(s); compare_backbones needs a "
                        f"grid over {backbone_key} and {task_key}")
    done = table[table["status"] == "finished"]
    if done.empty:
        raise DataError(f"{path}: no finished run to compare")
    rows = []
    for (task, backbone), part in done.groupby([task_key, backbone_key], sort=False):
        for metric in metrics:
            values = part[f"test_{metric}"].astype(float)
            rows.append({"task": task, "backbone": backbone, "metric": metric,
                         "mean": values.mean(), "sd": values.std(ddof=1) if len(values) > 1 else 0.0,
                         "n_seeds": len(values)})
    long = pd.DataFrame(rows)
    long.to_csv(exp.backbones_csv, index=False)
    lines = [f"# Backbone comparison: {folder.name}", "",
             (f"Test metrics (threshold 0.5) per task and backbone, mean over seeds; "
             f"{len(done)} finished run(s) of {len(table)}. Best backbone per task in bold."), ""]
    for metric in metrics:
        wide = long[long["metric"] == metric].pivot(index="task", columns="backbone", values="mean")
        shown = wide.map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        for task, row in wide.iterrows():
            if row.notna().any():
                best = row.idxmax()
                shown.loc[task, best] = f"**{row[best]:.3f}**"
        lines += [f"## {metric}", "", shown.reset_index().to_markdown(index=False), ""]
        fig = new_figure(figsize=(max(6, 1.2 * len(wide)), 4))
        ax = wide.plot.bar(ax=fig.subplots(), rot=30)
        ax.set_ylabel(f"test {metric}")
        ax.set_ylim(0, 1)
        ax.set_title(f"{folder.name}: test {metric} per task and backbone")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, exp.plots_dir / f"backbones_{metric}.png")
    write_text(exp.backbones_md, "\n".join(lines))
    return long
