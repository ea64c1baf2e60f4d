"""``cxrfuse pacs``: answer the studies of a DICOMweb PACS with a run (QIDO, WADO, STOW)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfuse.cli import _escape, app, console, err_console, friendly_errors


@app.command("pacs")
@friendly_errors
def pacs_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run directory (or an exported run) that reads images.")],
    url: Annotated[str, typer.Option("--url", help="The DICOMweb root of the PACS (QIDO-RS, WADO-RS and STOW-RS below it), e.g. Orthanc's http://127.0.0.1:8042/dicom-web.")],
    study: Annotated[str | None, typer.Option("--study", metavar="UID", help="Answer this StudyInstanceUID only.")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="DATE", help="Studies of this date (YYYY-MM-DD) or later.")] = None,
    date: Annotated[str | None, typer.Option("--date", metavar="DATE", help="Studies of this one date (YYYY-MM-DD).")] = None,
    modality: Annotated[str, typer.Option("--modality", help="Comma-separated modalities of the image series read (and of the studies searched).")] = "CR,DX",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Answer at most this many studies (oldest first).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for each answer of the server before the study counts as failed.")] = 30.0,
    overlays: Annotated[bool, typer.Option("--overlays", help="Also store Grad-CAM overlays of each image (secondary captures referencing it).")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="Also store the run's draft report as a separate SR marked as a machine draft.")] = False,
    redo: Annotated[bool, typer.Option("--redo", help="Answer studies that already hold this run's SR again (adds a new SR; nothing is deleted).")] = False,
) -> None:
    """Find studies in a PACS over DICOMweb (QIDO-RS), retrieve their radiographs (WADO-RS),
    predict them with RUN and store a DICOM Structured Report (TID 1500, one finding per label
    with probability, val-chosen threshold and decision) back into each study (STOW-RS).

    Resumable: a study that already holds this run's SR is skipped, so a second run does no
    work. A study that fails (no image instances, a server error or timeout, a transfer
    syntax no installed decoder reads) is one `error:` line naming it and the next goes on;
    the summary counts answered / skipped / failed and the exit code is 2 if any failed.

    Example: `cxrfuse pacs runs/iu-binary-views-mean/runs/image-seed0 --url http://127.0.0.1:8042/dicom-web --since 2024-01-01 --modality CR,DX`
    """
    from tqdm.auto import tqdm

    from cxrfuse.interop.pacs import StudyOutcome, answer_studies

    def report(outcome: StudyOutcome) -> None:
        """One line per study: above a live bar on a terminal, a plain line in a log."""
        prefix = "error" if outcome.status == "failed" else outcome.status
        line = f"{prefix}: study {outcome.study_uid}: {outcome.message}"
        stream = _stderr()
        if stream.isatty():
            tqdm.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    run: object = run_dir
    if overlays or draft:  # Grad-CAM and the draft report come from the serving stage
        from cxrfuse.serve import Service

        run = Service(run_dir)
    summary = answer_studies(run, url, study=study, since=since, date=date,
                             modalities=modality, limit=limit, timeout=timeout,
                             overlays=overlays, draft=draft, resume=not redo,
                             on_outcome=report)  # fmt: skip
    style = "red" if summary.failed else "green"
    console.print(f"[{style}]{_escape(summary.line())}[/]", highlight=False, soft_wrap=True)
    if summary.failed:
        err_console.print(f"{len(summary.failed)} stud{'y' if len(summary.failed) == 1 else 'ies'} "
                          "failed (listed above); a rerun retries them and skips the answered "
                          "ones", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _stderr():  # the stream tqdm writes above its bar
    import sys

    return sys.stderr
