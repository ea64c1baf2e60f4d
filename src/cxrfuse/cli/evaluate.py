"""Evaluation verbs: ``evaluate`` (metrics, intervals, ablations), ``report`` (HTML, Markdown)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cxrfuse.cli import app, console, friendly_errors
from cxrfuse.cli.options import NoWaitOption


class Recalibrate(str, Enum):
    platt = "platt"
    isotonic = "isotonic"


class Shuffle(str, Enum):
    image = "image"
    text = "text"
    both = "both"


def _table(title: str, frame: Any) -> Table:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col))
    for _, row in frame.iterrows():
        table.add_row(*[str(v) for v in row])
    return table


def holding_the_lock(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` run holding the advisory lock of the run or experiment directory it writes
    (``files.folder_lock``): a second writer (``train``, ``experiment``, another ``evaluate``)
    waits for it, or with ``--no-wait`` stops naming the holder."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from cxrfuse.files import folder_lock, set_lock_wait
        from cxrfuse.rundir import RunDir

        set_lock_wait(not kwargs.get("no_wait", False))
        path = Path(kwargs["path"])
        if not path.is_dir():  # the command names what is missing
            return command(*args, **kwargs)
        what = "the run directory" if RunDir(path).exists() else "the experiment directory"
        with folder_lock(path, what):
            return command(*args, **kwargs)

    return wrapper


@app.command("evaluate")
@friendly_errors
@holding_the_lock
def evaluate_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_EXPERIMENT_DIR", help="A run directory or an experiment directory."
        ),
    ],
    threshold: Annotated[
        str | None,
        typer.Option(
            help="How to choose decision thresholds on val: f1, youden, 0.5 or a number "
            "(default: the run config's evaluation.threshold, else f1)."
        ),
    ] = None,
    n_boot: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Bootstrap resamples of the test studies (default: the run config's "
            "evaluation.n_boot, else 1000; 0 = no intervals).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap and shuffle seed.")] = 0,
    shuffle: Annotated[
        Shuffle | None,
        typer.Option(help="Bimodal sensitivity test: shuffle this modality across test studies."),
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Shuffles per modality.")] = 5,
    leakage: Annotated[
        bool,
        typer.Option("--leakage/--no-leakage", help="Run the text leakage probe for text models."),
    ] = True,
    on: Annotated[Path | None, typer.Option(help="External validation: score the run on this other manifest.")] = None,
    out: Annotated[Path | None, typer.Option(help="With --on: output folder (default RUN/external/<manifest stem>).")] = None,
    recalibrate: Annotated[Recalibrate | None, typer.Option(help="With --on: recalibrate on a patient-level part of the external set.")] = None,
    calibration_fraction: Annotated[float, typer.Option(min=0.01, max=0.99, help="With --recalibrate: fraction of external patients to fit on.")] = 0.2,
    align: Annotated[list[str] | None, typer.Option(help="With --on: RUN_LABEL=EXTERNAL_LABEL (or =!LABEL for its complement), over the built-in alignment; repeatable.")] = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Metrics with 95 % bootstrap intervals at val-chosen thresholds; for an experiment also the
    unimodal vs multimodal table, fused vs best-unimodal tests and complementarity.

    Writes metrics.json and plots/ per run (ablation.json with --shuffle), and evaluation.json,
    evaluation.csv and evaluation.md for an experiment. With --on, scores the run on another manifest
    (labels aligned across vocabularies, subgroups, optional recalibration) beside its internal
    test metrics: external.json, external.md, external_predictions.parquet and plots/.
    Example: `cxrfuse evaluate runs/exp/runs/multimodal-seed0 --n-boot 1000 --shuffle both`;
    `cxrfuse evaluate runs/iu/runs/image-seed0 --on nih.parquet --recalibrate platt`
    """
    from cxrfuse.evaluation import evaluate_path
    from cxrfuse.evaluation.alignment import parse_mapping

    done = evaluate_path(
        path, threshold, n_boot, seed, shuffle=shuffle.value if shuffle else None,
        repeats=repeats, leakage=leakage, on=on, out=out,
        recalibration=recalibrate.value if recalibrate else None,
        calibration_fraction=calibration_fraction, align=parse_mapping(align) if on else None,
    )  # fmt: skip
    if done.kind == "external":
        _print_external(done.result)
        return
    if done.kind == "run":
        _print_run(path, done.result)
        from cxrfuse.cli.train import after_evaluation  # model card + tracker run

        after_evaluation(path)
        return
    _print_experiment(path, done.result, done.shuffles)


def _print_run(path: Path, result: dict[str, Any]) -> None:
    from cxrfuse.reporting.runs import headline_table, per_label_table
    from cxrfuse.rundir import RunDir

    run = RunDir(path)
    console.print(_table(f"{result['run']}: test metrics (val-chosen thresholds, 95 % CI) "
                         "beside the trivial rules", headline_table(result)))  # fmt: skip
    if len(result["labels"]) > 1:
        console.print(_table("per label (test)", per_label_table(result)))
    _print_shuffle(path, result.get("shuffle", {}))
    leak = result.get("leakage") or {}
    if leak.get("warning"):
        console.print(f"[bold red]leakage:[/] {leak['warning']}", markup=True)
    elif leak.get("note"):
        console.print(f"leakage probe: {leak['note']}", markup=False)
    _print_verdicts(result["test"]["verdicts"])
    console.print(f"wrote [bold]{run.metrics_path}[/] and plots in {run.plots_dir}")


def _print_experiment(path: Path, result: dict[str, Any], shuffles: dict[Path, Any]) -> None:
    import pandas as pd

    from cxrfuse.evaluation.ablation import format_table
    from cxrfuse.rundir import ExperimentDir

    for comp in result["settings"]:
        console.print(
            _table(
                f"setting {comp['setting']}: unimodal vs multimodal (test)",
                format_table(pd.DataFrame(comp["modality_table"])),
            )
        )
    for run_result in result["runs"]:
        _print_verdicts(run_result.get("verdicts", []), run_result["run"])
    console.print(f"[bold]conclusion:[/] {escape(result['conclusion'])}")
    for run_dir, shuffled in shuffles.items():
        _print_shuffle(run_dir, shuffled)
    exp = ExperimentDir(path)
    console.print(f"wrote [bold]{exp.evaluation_md}[/], {exp.evaluation_csv.name} and "
                  f"{exp.evaluation_path.name}")


def _print_external(result: dict[str, Any]) -> None:
    from cxrfuse.evaluation.external import alignment_frame, side_by_side_frame

    console.print(_table("label alignment", alignment_frame(result["alignment"])))
    console.print(_table(f"{result['run']}: internal test vs external ({result['dataset']}, "
                         f"{result['studies']['scored']} studies)", side_by_side_frame(result["side_by_side"])))
    if "recalibration" in result:
        from cxrfuse.evaluation.external import recalibration_frame

        console.print(_table(f"{result['recalibration']['method']} recalibration (held-out part)",
                             recalibration_frame(result["recalibration"])))
    unmatched = result["alignment"]["unmatched_run"] + result["alignment"]["unmatched_target"]
    if unmatched:
        console.print(f"not scored (no counterpart): {', '.join(unmatched)}")
    from cxrfuse.evaluation.external import overlap_message

    overlap = overlap_message(result["image_overlap"])
    console.print(f"[bold red]{overlap}[/]" if result["image_overlap"].get("found") else overlap,
                  highlight=False)
    console.print(f"wrote [bold]{result['out']}[/] (external.json, external.md, plots)")


def _print_verdicts(verdicts: list[dict[str, Any]], run: str = "") -> None:
    """Each verdict as a red line (what the report shows as a banner)."""
    for v in verdicts:
        where = f"{run}: " if run else ""
        console.print(f"[bold red]{v['kind']}:[/] {escape(where + v['message'])}")


def _print_shuffle(run_dir: Path, results: dict[str, Any]) -> None:
    for modality, res in results.items():
        drop = res["drop"]["auroc"]
        console.print(
            f"{run_dir.name}: shuffling {modality} drops AUROC by {drop['mean']:.3f}"
            f" (range {drop['min']:.3f} to {drop['max']:.3f} over {res['repeats']} shuffles"
            + (f"; 95 % CI [{drop['low']:.3f}, {drop['high']:.3f}]"
               if drop.get("low") is not None else "")
            + {"evidence": "): the model uses it", "against": "): it does better without it",
               "unclear": "): too few studies to tell", "none": "): the model ignores it"}.get(drop.get("status"), ")")
        )


@app.command("report")
@friendly_errors
def report_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_OR_EXPERIMENT_DIR",
            help="A run, experiment or `cxrfuse clip train` run directory.",
        ),
    ],
) -> None:
    """Write report.html (self-contained, images embedded) and report.md into the directory.

    Evaluates first (default settings) when there are no metrics yet; a CLIP run reports its
    training and whichever of retrieve / zero-shot / probe have run.
    Example: `cxrfuse report runs/demo-experiment`
    """
    from cxrfuse.reporting import write_report

    html_path, md_path = write_report(path)
    console.print(f"wrote [bold]{html_path}[/] and {md_path}")
    from cxrfuse.cli.train import after_evaluation  # model card + tracker run (report.html)

    after_evaluation(path)
