"""The options many verbs share, declared once: one flag name, one meaning, one help text.

``--device`` is ``auto`` everywhere (the first GPU if there is one, else the CPU);
``--precision`` is always the compute precision and ``--dtype`` always the storage dtype of
vectors (``embed``); ``--offline``, ``--no-wait``, ``--progress/--no-progress`` and ``--set``
(a config key) read the same in every verb. No heavy import here: ``--help`` stays fast.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer


class Precision(str, Enum):
    """Compute precision: ``auto`` = bfloat16 on a GPU, float32 on a CPU."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class StoreDtype(str, Enum):
    """Storage dtype of stored vectors."""

    float32 = "float32"
    float16 = "float16"


DEVICE_HELP = "Torch device: auto (the first GPU if there is one, else the CPU), cpu, cuda or cuda:N."

DeviceOption = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
PrecisionOption = Annotated[
    Precision,
    typer.Option("--precision", help="Compute precision: auto = bfloat16 on a GPU, float32 on a CPU."),
]
StoreDtypeOption = Annotated[StoreDtype, typer.Option("--dtype", help="Storage dtype of the vectors.")]
OfflineOption = Annotated[
    bool,
    typer.Option("--offline", help="Swap in each side's offline_encoder (efficientnet-lite, minilm, tfidf)."),
]
NoWaitOption = Annotated[
    bool,
    typer.Option("--no-wait", help="If another process is writing the folder this verb writes (a run, "
                 "experiment, store or generation directory), stop (exit 2, the holder named) "
                 "instead of waiting for it."),
]  # fmt: skip
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: key.path=value (value parsed as YAML); repeatable."),
]


def device_name(device: str) -> str:
    """``--device`` as the concrete torch device the library takes (``auto`` resolved; a
    ``cuda`` without a GPU is one ``error:`` line)."""
    from cxrfuse.problems import CxrfuseError
    from cxrfuse.runtime import resolve_device  # torch: only when a verb runs

    try:
        return str(resolve_device(device))
    except RuntimeError as err:  # torch.device("gpu")
        raise CxrfuseError(f"--device {device!r}: {err}; choose auto, cpu, cuda or cuda:N") from err
