"""onnxruntime as a prediction backend: a session on a run's ``model.onnx`` (written by
:mod:`cxrfuse.inference.onnx_export`), which runs the image encoder and the head of one study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import layout

BACKENDS = ("torch", "onnxruntime")


class OnnxBackend:
    """An onnxruntime session on a run's ``model.onnx`` (CPU; as many threads as torch uses,
    e.g. ``OMP_NUM_THREADS``, unless ``threads`` says)."""

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover - a pinned dependency
            raise CxrfuseError("the onnxruntime backend needs onnxruntime: "
                               "pip install onnxruntime") from err  # fmt: skip
        self.path = Path(run_dir) / layout.ONNX_MODEL
        if not self.path.is_file():
            raise DataError(f"{self.path}: no ONNX model; write it with `cxrfuse export "
                            f"{run_dir} --to DIR --format onnx` and serve DIR")  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # as torch would
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])  # fmt: skip
        except Exception as err:  # onnxruntime raises its own kinds (InvalidProtobuf, Fail, ...)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"{self.path}: onnxruntime cannot load it ({first}); export it again "
                            "with `cxrfuse export RUN --to DIR --format onnx`") from err  # fmt: skip
        wanted = {"pixels", "image_mask", "text", "text_mask"}
        self.inputs = [i.name for i in self.session.get_inputs()]
        if not set(self.inputs) <= wanted or len(self.session.get_outputs()) != 2:
            raise DataError(f"{self.path}: not a cxrfuse served-path graph (inputs "
                            f"{', '.join(self.inputs)}); export it again with `cxrfuse export "
                            "RUN --to DIR --format onnx`")  # fmt: skip

    def run(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (1, n_labels), view embeddings (1, W, F)) of one study's inputs."""
        feed = {}
        for name in self.inputs:
            value = inputs[name]
            value = value.numpy() if torch.is_tensor(value) else np.asarray(value)
            feed[name] = value.astype(np.bool_ if name.endswith("mask") else np.float32)
        probs, views = self.session.run(None, feed)
        return probs, views
