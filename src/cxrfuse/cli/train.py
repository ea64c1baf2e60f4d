"""Training verbs: ``train`` (one run), ``experiment`` (a grid of runs), ``predict`` (one study)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrfuse.cli import app, console, err_console, friendly_errors
from cxrfuse.cli.options import NoWaitOption, OfflineOption, ProgressOption, SetOption
from cxrfuse.problems import ConfigError, CxrfuseError, DataError

RunsDirOption = Annotated[Path | None, typer.Option(help="Write runs under this folder instead of runs_dir.")]
EvaluateOption = Annotated[
    bool, typer.Option("--evaluate/--no-evaluate", help="Write metrics.json (cxrfuse evaluate) after each run.")
]
TrackingOption = Annotated[
    str | None,
    typer.Option("--tracking", metavar="mlflow|tensorboard|csv|none",
                 help="Log params, per-epoch metrics, test metrics and artifacts to this tracker "
                 "(sets tracking.kind; MLflow: $MLFLOW_TRACKING_URI or mlruns.db beside the runs dir)."),
]


def tracking_override(tracking: str | None) -> list[str]:
    """``--tracking KIND`` as a ``--set`` override (validated with the config, naming the key)."""
    return [] if tracking is None else [f"tracking.kind={tracking}"]


def _evaluate(run_dir: Path) -> None:
    """Write metrics.json for a finished run; a problem is reported, never fatal to training."""
    from cxrfuse.evaluation import evaluate_run
    from cxrfuse.rundir import RunDir

    run = RunDir(run_dir)
    config = run.run_config()
    try:
        evaluate_run(run, config.evaluation.threshold, config.evaluation.n_boot, config.seed)
    except CxrfuseError as err:
        err_console.print(f"[yellow]evaluation of {run_dir} failed:[/] {err}")
        return
    console.print(f"  metrics: [bold]{run.metrics_path}[/]")
    after_evaluation(run_dir)


def after_evaluation(run_dir: Path) -> None:
    """The model card, then the tracker run's test metrics, verdicts and artifacts (head and
    fine-tune runs with metrics.json; anything else is left alone)."""
    from cxrfuse.rundir import RunDir, layout
    from cxrfuse.rundir.modelcard import write_model_card

    run = RunDir(run_dir)
    try:
        if run.info().kind not in ("head", "finetune") or not run.has_metrics():
            return
    except CxrfuseError:
        return

    try:
        write_model_card(run_dir)
    except CxrfuseError as err:
        err_console.print(f"[yellow]model card of {run_dir} not written:[/] {err}")
    if not (run.path / layout.TRACKING).is_file():
        return  # not tracked: no need to import training (Lightning) after an evaluation
    from cxrfuse.training import log_evaluation

    try:
        logged = log_evaluation(run_dir)
    except Exception as err:  # noqa: BLE001 - a tracker problem must not lose the run
        err_console.print(f"[yellow]tracking of {run_dir}'s evaluation failed:[/] "
                          f"{type(err).__name__}: {err}")
        return
    if logged:
        console.print(f"  tracked ({logged['kind']}): {logged['metrics']} test metric(s), "
                      f"{logged['verdicts']} verdict(s), {len(logged['artifacts'])} artifact(s)")


@app.command("train")
@friendly_errors
def train_cmd(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML).")],
    set_: SetOption = None,
    offline: OfflineOption = False,
    runs_dir: RunsDirOption = None,
    evaluate: EvaluateOption = True,
    progress: ProgressOption = True,
    tracking: TrackingOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Train one fusion head on cached embeddings (embedding what the store lacks) and write
    runs/NAME/: config.yaml, run.json, epochs.csv, plots/, predictions.parquet, model.safetensors
    with its model.json sidecar, and metrics.json (evaluation).

    Example: `cxrfuse train configs/iu-binary-views-mean-indication.yaml --offline --set training.max_epochs=10`
    """
    from cxrfuse.config import apply_offline, load_run_config
    from cxrfuse.files import set_lock_wait
    from cxrfuse.rundir import RunDir
    from cxrfuse.training import train_run

    set_lock_wait(not no_wait)
    config = load_run_config(config_path, [*(set_ or []), *tracking_override(tracking)])
    if offline:
        config = apply_offline(config)
    if runs_dir is not None:
        config = config.model_copy(update={"runs_dir": str(runs_dir)})
    console.print(f"training [bold]{config.name}[/] ({'+'.join(config.model.modalities)}, "
                  f"task {config.data.task}) -> {config.run_dir}")
    try:
        run_dir = train_run(config, progress=progress)
    except CxrfuseError:
        raise
    except Exception as err:
        raise CxrfuseError(f"run {config.name} failed ({type(err).__name__}: {err}); "
                           f"details in {RunDir(config.run_dir).info_path}") from err
    info = RunDir(run_dir).info()
    fit = info.fit
    best = "-" if fit is None or fit.best_val_loss is None else f"{fit.best_val_loss:.4f}"
    console.print(f"finished in {info.timing_s or float('nan'):.1f} s; best epoch "
                  f"{None if fit is None else fit.best_epoch} (val loss {best}) "
                  f"-> [bold]{run_dir}[/]")
    if evaluate:
        _evaluate(run_dir)


@app.command("experiment")
@friendly_errors
def experiment_cmd(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Experiment config (YAML): base + grid + seeds.")],
    set_: SetOption = None,
    offline: OfflineOption = False,
    runs_dir: RunsDirOption = None,
    evaluate: EvaluateOption = True,
    progress: ProgressOption = True,
    tracking: TrackingOption = None,
    no_wait: NoWaitOption = False,
) -> None:
    """Run every grid point x seed of an experiment (finished runs are skipped, a failed run is
    recorded and the grid goes on) and write summary.csv / summary.md (mean ± sd over seeds).

    Example: `cxrfuse experiment configs/mimic-pneumonia-grid.yaml --offline --set seeds=[0,1,2]`
    """
    from cxrfuse.config import apply_offline_experiment, load_experiment_config
    from cxrfuse.files import set_lock_wait
    from cxrfuse.rundir import ExperimentDir, RunDir
    from cxrfuse.training import train_experiment

    set_lock_wait(not no_wait)
    overrides = [*(set_ or []), *(f"base.{o}" for o in tracking_override(tracking))]
    experiment = load_experiment_config(config_path, overrides)
    if offline:
        experiment = apply_offline_experiment(experiment)
    if runs_dir is not None:
        experiment = experiment.model_copy(update={"runs_dir": str(runs_dir)})
    n = len(experiment.expand(str(config_path)))
    console.print(f"experiment [bold]{experiment.name}[/]: {n} run(s) -> {experiment.experiment_dir}")
    out = train_experiment(experiment, progress=progress, after_run=_evaluate if evaluate else None,
                           console=console)
    exp = ExperimentDir(out)
    console.print(exp.summary_md.read_text(), soft_wrap=True, highlight=False)
    console.print(f"wrote [bold]{exp.summary_csv}[/] and {exp.summary_md}")
    runs = experiment.expand(str(config_path))
    failed = [c.name for c in runs if RunDir(c.run_dir).status() != "finished"]
    if failed and len(failed) == len(runs):
        raise CxrfuseError(f"experiment {experiment.name}: all {len(runs)} run(s) failed "
                           f"(errors in {exp.summary_csv} and each run's run.json)")
    if failed:
        err_console.print(f"[yellow]warning:[/] {len(failed)} of {len(runs)} run(s) failed: "
                          f"{', '.join(failed)} (errors in {exp.summary_csv})")


@app.command("predict")
@friendly_errors
def predict_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory.")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="Image file (PNG, JPEG or DICOM, told apart by content); frontal first, then lateral. Repeatable.")] = None,
    view: Annotated[list[str] | None, typer.Option("--view", help="View position of each --image (PA, AP, LATERAL; L or LL = lateral), one per --image; '' leaves one out. Default: the DICOM header's, else the upload order (the first image without one is frontal, the next lateral; said in the warnings).")] = None,
    report: Annotated[Path | None, typer.Option(help="Report text file with section headings (INDICATION:, FINDINGS:, ...).")] = None,
    indication: Annotated[str | None, typer.Option(help="The indication, instead of (or beside) --report.")] = None,
    image_weights: Annotated[Path | None, typer.Option(help="Image-encoder weights file, for a run trained with local weights (a model file never names one itself).")] = None,
    backend: Annotated[str, typer.Option(help="torch, or onnxruntime: the run's model.onnx (`cxrfuse export RUN --to DIR --format onnx`) runs image encoder + head.")] = "torch",
    explain: Annotated[Path | None, typer.Option("--explain", help="Also write Grad-CAM overlays (one PNG per view and label, fixed colour scale) and the image vs report attribution into this folder; a failure of either is a warning, never a lost prediction.")] = None,
    fhir: Annotated[Path | None, typer.Option("--fhir", metavar="OUT.json", help="Also write the answer as a FHIR R4 Bundle: a DiagnosticReport, one Observation per label, a Device for the run (docs/dicom.md).")] = None,
    sr: Annotated[Path | None, typer.Option("--sr", help="Also write the result as a DICOM Structured Report (TID 1500 measurement report, Comprehensive SR) to this .dcm file (docs/dicom.md).")] = None,
    overlays: Annotated[Path | None, typer.Option("--overlays", help="Also write the Grad-CAM overlays as DICOM Secondary Capture images (burned-in map and colour bar, referencing their source image) into this folder.")] = None,
    draft_sr: Annotated[bool, typer.Option("--draft-sr", help="With --sr: also write the run's draft report (retrieval generator) as a separate SR marked as an unverified machine draft, next to OUT (OUT-draft.dcm).")] = False,
) -> None:
    """One study's probabilities, the run's val-chosen thresholds, the decisions at them and
    the warnings a reader must see (synthetic training images, text the model was not trained
    on, unusual views), as JSON.

    Example: `cxrfuse predict runs/iu-binary-views-mean-indication --image 1_frontal.dcm --image 1_lateral.png --indication "Chest pain"`
    """
    from cxrfuse.inference import Predictor, StudyImage

    text = None
    if report is not None:
        from cxrfuse.inference import MAX_TEXT_CHARS, check_text_length

        if not report.is_file():
            raise DataError(f"{report}: no such report file")
        if report.stat().st_size > 4 * MAX_TEXT_CHARS:  # UTF-8: at most 4 bytes a character
            raise DataError(f"{report}: {report.stat().st_size:,} bytes, over the limit of "
                            f"{MAX_TEXT_CHARS:,} characters for a report; give the study's "
                            "report alone")  # fmt: skip
        try:
            text = report.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{report}: not UTF-8 text (byte {err.start}: {err.reason}); "
                            "save the report as UTF-8") from err
        check_text_length(str(report), report=text)
    if sr is not None and sr.suffix.lower() != ".dcm":
        raise ConfigError(f"--sr {sr}: give a file name ending in .dcm")
    if draft_sr and sr is None:
        raise ConfigError("--draft-sr needs --sr OUT.dcm")
    images = [StudyImage.from_path(p) for p in image or []]
    predictor = Predictor(run_dir, image_weights=image_weights, backend=backend)
    if sr is not None or overlays is not None:
        answer = _predict_dicom(predictor, run_dir, images, text, indication, view, explain, sr,
                                overlays, draft_sr)  # fmt: skip
        _write_fhir(fhir, answer, run_dir)
        return
    if explain is None:
        result = predictor.predict(images, report=text, indication=indication, views=view or None)
        _write_fhir(fhir, result, run_dir)
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from cxrfuse.serve.service import Service, write_overlays

    answer = Service(run_dir, predictor=predictor).analyse(
        images, report=text, indication=indication, views=view or None, explain=True, draft=False)
    write_overlays(answer, explain)
    _write_fhir(fhir, answer, run_dir)
    typer.echo(json.dumps(answer, indent=2))


def _write_fhir(path: Path | None, answer: Any, run_dir: Path) -> None:
    """``predict --fhir``: the answer as a FHIR R4 Bundle."""
    if path is not None:
        from cxrfuse.interop.fhir import write_fhir

        write_fhir(answer, path, run=run_dir)
        err_console.print(f"FHIR R4 bundle written to {path}")


def _predict_dicom(predictor, run_dir: Path, images: list, text: str | None,
                   indication: str | None, view: list[str] | None, explain: Path | None,
                   sr: Path | None, overlays: Path | None, draft_sr: bool) -> dict:  # fmt: skip
    """``predict --sr/--overlays``: the answer as JSON, then its DICOM objects written (the
    JSON is printed first, so a failed write loses no prediction)."""
    from cxrfuse.interop import object_kind, write_dicom
    from cxrfuse.serve.service import Service, write_overlays

    answer, objs = Service(run_dir, predictor=predictor).analyse_dicom(
        images, report=text, indication=indication, views=view or None,
        explain=overlays is not None or explain is not None, draft=draft_sr)  # fmt: skip
    if explain is not None:
        write_overlays(answer, explain)
    else:
        for overlay in answer.get("overlays") or []:
            overlay.pop("png_base64", None)
    written: list[str] = []
    kinds = [object_kind(ds) for ds in objs]
    if "sr" not in kinds:
        typer.echo(json.dumps(answer, indent=2))
        raise CxrfuseError("no DICOM object written: " + (answer["warnings"] or ["?"])[-1])
    if sr is not None:
        written += map(str, write_dicom([objs[kinds.index("sr")]], sr))
        if draft_sr and "draft" in kinds:
            draft_path = sr.with_name(f"{sr.stem}-draft.dcm")
            written += map(str, write_dicom([objs[kinds.index("draft")]], draft_path))
    if overlays is not None:
        written += map(str, write_dicom([d for d, k in zip(objs, kinds) if k == "overlay"],
                                        overlays))  # fmt: skip
    answer["dicom_files"] = written
    typer.echo(json.dumps(answer, indent=2))
    return answer

