"""``python sweep_probe.py LOG -- CLI ARGS``: runs the `cxrfuse` CLI with the data path
instrumented, for tests that kill a sweep: every manifest the process reads (its study ids) and
every image the store decodes is appended to LOG as one JSON line, flushed at once (a SIGKILL
loses nothing), tagged with the run being trained by the sweep at that moment (``trial-NNN``,
``best``; ``null`` outside a training: the sweep's own read of the full manifest, the final
evaluation)."""

from __future__ import annotations

import json
import sys
from typing import Any


def main(log_path: str, args: list[str]) -> None:
    import cxrfuse.data.manifest as manifest_module
    from cxrfuse import data
    from cxrfuse.data import images

    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole process)
    current: dict[str, Any] = {"run": None}

    def record(kind: str, values: list[str]) -> None:
        log.write(json.dumps({"run": current["run"], "kind": kind, "values": values}) + "\n")
        log.flush()

    original_read, original_decode = manifest_module.read_manifest, images.decode_resized

    def read_manifest(path: Any, *a: Any, **k: Any) -> Any:
        m = original_read(path, *a, **k)
        record("studies", [str(s) for s in m.df["study_id"]])
        return m

    def decode_resized(path: Any, *a: Any, **k: Any) -> Any:
        record("image", [str(path)])
        return original_decode(path, *a, **k)

    # patched where they are defined, before any module that binds them is imported
    manifest_module.read_manifest = data.read_manifest = read_manifest  # type: ignore[assignment]
    images.decode_resized = decode_resized  # type: ignore[assignment]
    from cxrfuse.training import sweep

    original_train = sweep.train_run

    def train_run(config: Any, *a: Any, **k: Any) -> Any:
        current["run"] = config.name
        try:
            return original_train(config, *a, **k)
        finally:
            current["run"] = None

    sweep.train_run = train_run  # type: ignore[assignment]
    from cxrfuse.cli import app

    app(args, prog_name="cxrfuse")


if __name__ == "__main__":
    split = sys.argv.index("--")
    main(sys.argv[1], sys.argv[split + 1 :])
