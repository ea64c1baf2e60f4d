"""Explanation verbs: ``explain`` (CAM overlays, pointing-game scores) and ``attribute``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrfuse.cli import app, console, csv_list, err_console, friendly_errors
from cxrfuse.cli.options import DeviceOption, ProgressOption, device_name
from cxrfuse.problems import CxrfuseError

if TYPE_CHECKING:
    from cxrfuse.explain.attribution import Removal

RunDirArgument = Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory.")]
SplitOption = Annotated[str, typer.Option(help="Split to explain or attribute (train, val, test).")]
OutOption = Annotated[Path | None, typer.Option("--out", help="Output folder (default: in RUN_DIR).")]
RemovalOption = Annotated[
    str,
    typer.Option(
        help="How a modality is removed: mean (its training-mean vector) or zeros (mask False)."
    ),
]


@app.command("explain")
@friendly_errors
def explain_cmd(
    run_dir: RunDirArgument,
    study: Annotated[
        list[str] | None, typer.Option("--study", help="Study id to explain; repeatable.")
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Label(s) to explain, comma-separated (default: all).")
    ] = None,
    method: Annotated[
        str, typer.Option(help="CAM method: gradcam, gradcam++, hirescam, xgradcam, layercam, "
                          "eigencam, eigengradcam, scorecam, ablationcam, random, ...")
    ] = "gradcam",
    split: SplitOption = "test",
    limit: Annotated[int, typer.Option(help="Studies of --split to draw (0 = all).")] = 20,
    score: Annotated[
        bool, typer.Option("--score", help="Phantom runs: pointing game and deletion curve.")
    ] = False,
    score_limit: Annotated[
        int, typer.Option(help="Positive studies to score (0 = all of --split).")
    ] = 0,
    attribution: Annotated[
        bool, typer.Option("--attribution", help="Also write the modality attribution.")
    ] = False,
    removal: RemovalOption = "mean",
    out: OutOption = None,
    device: DeviceOption = "auto",
    progress: ProgressOption = True,
) -> None:
    """Grad-CAM (or another pytorch-grad-cam method) through the fused classifier: one overlay
    PNG per view and label (the view beside its map) in RUN_DIR/explain/METHOD/, with index.csv.
    The report embedding is held fixed; the image branch is differentiated. On a CLIP run
    (`cxrfuse clip train`) each label's zero-shot score is mapped on the image tower.

    Example: `cxrfuse explain runs/phantom-fused --study CXR1 --label Cardiomegaly --method gradcam++`

    Example: `cxrfuse explain runs/phantom-fused --split test --limit 50 --score`
    """
    from cxrfuse.explain.runs import attribute_run, explain_run
    from cxrfuse.rundir import RunDir, layout

    device = device_name(device)
    explainer = None
    if RunDir(run_dir).kind() == "clip":  # a CLIP run explains its zero-shot scores
        from cxrfuse.clip.explain import clip_explainer

        explainer = clip_explainer(run_dir, device=device)
    result = explain_run(
        run_dir, studies=study or None, split=split, limit=limit or None, labels=csv_list(label),
        method=method, out_dir=out, score=score, score_limit=score_limit or None, device=device,
        progress=progress, explainer=explainer,
    )  # fmt: skip
    console.print(f"{len(result.maps)} map(s): [bold]{result.out_dir}[/] (index.csv)")
    for warning in result.warnings or []:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if result.scores is not None and result.score_files:
        from cxrfuse.explain.scoring import markdown_table

        console.print(markdown_table(result.scores.summary), highlight=False)
        console.print(f"scores (synthetic phantoms): [bold]{result.score_files['table']}[/]")
    if attribution:
        paths = attribute_run(run_dir, split=split, removal=_removal(removal),
                              out_dir=(out / layout.ATTRIBUTION) if out else None)  # fmt: skip
        console.print(paths["markdown"].read_text(), highlight=False)


@app.command("attribute")
@friendly_errors
def attribute_cmd(
    run_dir: RunDirArgument,
    split: SplitOption = "test",
    removal: RemovalOption = "mean",
    out: OutOption = None,
) -> None:
    """Modality attribution of a fused run: per prediction, how much the image and how much the
    report moved the probability (leave-one-modality-out and two-player Shapley), aggregated
    per label as a table and bar plot in RUN_DIR/attribution/.

    Example: `cxrfuse attribute runs/iu-binary-fused --split test --removal mean`
    """
    from cxrfuse.explain.runs import attribute_run

    paths = attribute_run(run_dir, split=split, removal=_removal(removal), out_dir=out)
    console.print(paths["markdown"].read_text(), highlight=False)
    console.print(f"attribution: [bold]{paths['table'].parent}[/]")


def _removal(value: str) -> Removal:
    if value not in ("mean", "zeros"):
        raise CxrfuseError(f"--removal {value!r}: choose mean or zeros")
    return value  # type: ignore[return-value]
