"""The run-directory contract: typed models of what a run or experiment directory holds, and
the only code that knows its file names (``docs/rundir.md`` describes the contract).

Every other package asks this one::

    from cxrfuse.rundir import RunDir

    run = RunDir("runs/iu-exp/runs/multimodal-seed0")
    info = run.require(["head", "finetune"])       # run.json, checked: kind and status
    sidecar = run.sidecar()                         # model.json: how to rebuild the model
    frame = run.predictions(info.labels)            # predictions.parquet, checked
"""

from cxrfuse.rundir import layout
from cxrfuse.rundir.dirs import ExperimentDir, RunDir, is_run_dir
from cxrfuse.rundir.folders import ExternalDir, GenerationDir, p_column, y_column
from cxrfuse.rundir.models import (
    CLIP_FORMAT,
    CLIP_TASK,
    HEAD_FORMAT,
    ClipFacts,
    ClipSidecar,
    Environment,
    FinetuneFacts,
    FitFacts,
    HeadSidecar,
    HeadSpec,
    ImageSide,
    LoraRunInfo,
    Metrics,
    RunInfo,
    RunKind,
    TextSide,
    TextState,
    Verdict,
)

__all__ = [
    "CLIP_FORMAT",
    "CLIP_TASK",
    "HEAD_FORMAT",
    "ClipFacts",
    "ClipSidecar",
    "Environment",
    "ExperimentDir",
    "ExternalDir",
    "FinetuneFacts",
    "FitFacts",
    "GenerationDir",
    "HeadSidecar",
    "HeadSpec",
    "ImageSide",
    "LoraRunInfo",
    "Metrics",
    "RunDir",
    "RunInfo",
    "RunKind",
    "TextSide",
    "TextState",
    "Verdict",
    "is_run_dir",
    "layout",
    "p_column",
    "y_column",
]
