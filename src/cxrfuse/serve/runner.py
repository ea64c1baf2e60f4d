"""Running the app under uvicorn: each worker process builds the app once (the model loaded
once per worker), from the run directory and device passed in the environment."""

from __future__ import annotations

import os
from pathlib import Path

from cxrfuse.inference import load_run
from cxrfuse.serve.app import BACKEND_ENV, DEVICE_ENV, RUN_ENV


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          device: str = "cpu", log_level: str = "info", backend: str = "torch") -> None:  # fmt: skip
    """Serve ``run_dir`` until interrupted (checked to load before any worker starts)."""
    import uvicorn

    loaded = load_run(run_dir)  # a bad run directory fails here with one clear error
    if backend != "torch":
        from cxrfuse.inference.onnx_backend import OnnxBackend

        OnnxBackend(loaded.run_dir)  # so does a missing model.onnx
    os.environ[RUN_ENV] = str(Path(run_dir).resolve())
    os.environ[DEVICE_ENV] = device
    os.environ[BACKEND_ENV] = backend
    uvicorn.run("cxrfuse.serve.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, access_log=True)
