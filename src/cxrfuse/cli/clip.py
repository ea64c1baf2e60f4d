"""CLIP verbs: ``cxrfuse clip train | probe | zero-shot | retrieve`` (design 002). Report
generation by retrieval from a CLIP run is ``cxrfuse generate retrieval --clip RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import app, console, friendly_errors
from cxrfuse.cli.options import OfflineOption, ProgressOption, SetOption

clip_app = typer.Typer(
    help="CLIP-style contrastive image-report model: train, linear probe, zero-shot, retrieval "
    "(report generation from it: `cxrfuse generate retrieval --clip RUN`).",
    no_args_is_help=True,
)
app.add_typer(clip_app, name="clip")

RunDir = Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A `cxrfuse clip train` run.")]
Split = Annotated[str | None, typer.Option(help="train, val or test (default: from the config).")]


@clip_app.command("train")
@friendly_errors
def clip_train_cmd(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="CLIP config (YAML).")],
    set_: SetOption = None,
    offline: OfflineOption = False,
    progress: ProgressOption = True,
    tracking: Annotated[str | None, typer.Option(
        "--tracking", metavar="mlflow|tensorboard|csv|none",
        help="Log params and every epoch's metrics to this tracker (sets tracking.kind).")] = None,
) -> None:
    """Train the image and text towers with symmetric InfoNCE and write runs/NAME/
    (config.yaml, run.json, epochs.csv, plots/curves.png, model.safetensors + model.json).

    Example: `cxrfuse clip train configs/iu-clip-vit-bert.yaml --offline --set training.max_epochs=5`
    """
    from cxrfuse.clip.train import train_clip
    from cxrfuse.config.clip import load_clip_config

    overrides = list(set_ or [])
    if offline:
        overrides.append("offline=true")
    if not progress:
        overrides.append("training.progress=false")
    if tracking is not None:
        overrides.append(f"tracking.kind={tracking}")
    config = load_clip_config(config_path, overrides)
    run_dir = train_clip(config)
    from cxrfuse.rundir import RunDir

    facts = RunDir(run_dir).info().clip
    assert facts is not None and facts.val_loss and facts.val_r5_image_to_text
    loss, r5 = facts.val_loss, facts.val_r5_image_to_text
    console.print(f"wrote [bold]{run_dir}[/]: val InfoNCE {loss['before']:.3f} -> "
                  f"{loss['after']:.3f}, val R@5 image->report {r5['before']:.3f} -> "
                  f"{r5['after']:.3f}")


@clip_app.command("probe")
@friendly_errors
def clip_probe_cmd(
    run_dir: RunDir,
    task: Annotated[str | None, typer.Option(help="Task or label (default: probe.task).")] = None,
    n_boot: Annotated[int | None, typer.Option(help="Bootstrap resamples (default: config).")] = None,
    progress: ProgressOption = True,
) -> None:
    """Linear probing: frozen CLIP image + report embeddings -> 2 x 512 MLP, with image-only and
    report-only baselines; thresholds on val, metrics on test (probe.json, probe.md).

    Example: `cxrfuse clip probe runs/iu-clip-vit-bert`
    """
    from cxrfuse.clip.probe import probe_markdown, run_probe

    result = run_probe(run_dir, task=task, progress=progress, n_boot=n_boot)
    console.print(probe_markdown(result), markup=False, highlight=False)


@clip_app.command("zero-shot")
@friendly_errors
def clip_zero_shot_cmd(
    run_dir: RunDir,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    task: Annotated[str | None, typer.Option(help="Task or label (default: zero_shot.task).")] = None,
    progress: ProgressOption = True,
) -> None:
    """Zero-shot classification from positive and negative prompts per label (AUROC per label;
    zero_shot.json, zero_shot.md).

    Example: `cxrfuse clip zero-shot runs/iu-clip-vit-bert --task multilabel`
    """
    from cxrfuse.clip.zero_shot import run_zero_shot, zero_shot_markdown

    result = run_zero_shot(run_dir, split=split, task=task, progress=progress)
    console.print(zero_shot_markdown(result), markup=False, highlight=False)


@clip_app.command("retrieve")
@friendly_errors
def clip_retrieve_cmd(run_dir: RunDir, split: Split = None, progress: ProgressOption = True) -> None:
    """Image-to-report and report-to-image Recall@1/5/10 with chance level beside it
    (retrieval.json, retrieval.md).

    Example: `cxrfuse clip retrieve runs/iu-clip-vit-bert --split test`
    """
    from cxrfuse.clip.retrieval import retrieval_markdown, run_retrieval

    result = run_retrieval(run_dir, split=split, progress=progress)
    console.print(retrieval_markdown(result), markup=False, highlight=False)
