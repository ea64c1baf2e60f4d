"""``cxrfuse sweep``: an Optuna search on train/val, the best config retrained and evaluated
once on test, and a report of the search beside that one test figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import app, console, friendly_errors
from cxrfuse.cli.options import OfflineOption, ProgressOption, SetOption
from cxrfuse.cli.train import RunsDirOption, TrackingOption, _evaluate, tracking_override


@app.command("sweep")
@friendly_errors
def sweep_cmd(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML) the search starts from.")],
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials that must finish (complete or pruned); a rerun resumes.")] = 8,
    space: Annotated[Path | None, typer.Option("--space", metavar="SPACE.yaml", help="Search space: dotted key -> {type, low, high, log, choices}; default: the training mode's (configs/sweep/*.yaml).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Sweep folder (default: <runs_dir>/<name>-sweep).")] = None,
    set_: SetOption = None,
    offline: OfflineOption = False,
    runs_dir: RunsDirOption = None,
    tracking: TrackingOption = None,
    progress: ProgressOption = False,
) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning on the validation loss per epoch)
    on train/val only: the trials read a manifest without its test rows. The study lives in
    SWEEP/study.db (SQLite), so a killed sweep resumes with the trials it finished. The best
    trial's config is retrained as SWEEP/best, evaluated once on test, and SWEEP/report.html
    shows the search beside that one test figure.

    Example: `cxrfuse sweep configs/iu-binary-views-mean-indication.yaml --offline --trials 8 --space configs/sweep/head.yaml`
    """
    from cxrfuse.config import apply_offline, load_run_config
    from cxrfuse.reporting.sweep import write_sweep_report
    from cxrfuse.training.sweep import load_space, record_test_look, run_sweep

    config = load_run_config(config_path, [*(set_ or []), *tracking_override(tracking)])
    if offline:
        config = apply_offline(config)
    if runs_dir is not None:
        config = config.model_copy(update={"runs_dir": str(runs_dir)})
    search = load_space(space, config)
    sweep_dir = out or Path(config.runs_dir) / f"{config.name}-sweep"
    console.print(f"sweep [bold]{config.name}[/]: {trials} trial(s) over "
                  f"{', '.join(search.params)} -> {sweep_dir}")
    result = run_sweep(config, search, trials, sweep_dir, progress=progress,
                       say=lambda text: console.print(f"  {text}"))
    best = result["best"]
    console.print(f"best trial {best['number']}: val loss {best['val_loss']:.4f}; "
                  + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in best["params"].items()))
    best_run = Path(result["best_run"])
    from cxrfuse.rundir import RunDir

    if not RunDir(best_run).has_metrics():  # the one look at the test split
        _evaluate(best_run)
        looks = record_test_look(sweep_dir)
        if len(looks) > 1:
            console.print(f"[yellow]warning:[/] this sweep has now read the test split "
                          f"{len(looks)} times (a new best after more trials)")
    html, _ = write_sweep_report(sweep_dir)
    console.print(f"report: [bold]{html}[/] (the test figure is one look after a search of "
                  f"{result['trials_requested']} trial(s) on validation)")
