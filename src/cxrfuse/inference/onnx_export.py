"""The served path of a run as one ONNX graph, and onnxruntime as a prediction backend.

The graph takes what the Python side prepares for one study and returns its probabilities:

* ``pixels`` (1, W, C, S, S) float: the decoded, resized, normalised views in the head's W
  slots (zeros in an empty slot), ``image_mask`` (1, W) bool: which slots hold a view;
* ``text`` (1, D) float and ``text_mask`` (1,) bool: the report embedding;
* out: ``probabilities`` (1, n_labels) and ``image`` (1, W, F), the view embeddings (zeros in
  empty slots, as the PyTorch path puts them) for attribution and the page.

What stays in Python: reading and decoding the files (DICOM/PNG/JPEG), view positions and slot
placement, resizing and normalisation, the report's sections, label masking and the text
encoder (MiniLM or the fitted tf-idf), thresholds, decisions, warnings and Grad-CAM (PyTorch).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrfuse.fusion import probabilities
from cxrfuse.inference.predict import Predictor, study_text
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import layout

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ServedPath(nn.Module):
    """Image encoder (when the run reads images) + fusion head + output activation."""

    def __init__(self, encoder: nn.Module | None, head: nn.Module, output: str) -> None:
        super().__init__()
        self.encoder, self.head, self.output = encoder, head, output

    def forward(self, pixels: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        inputs: dict[str, torch.Tensor] = {}
        views = torch.zeros((1, 1, 1))
        if self.encoder is not None and pixels is not None and image_mask is not None:
            b, w = pixels.shape[0], pixels.shape[1]
            feats = self.encoder(pixels.reshape((b * w, *pixels.shape[2:]))).float()
            views = feats.reshape((b, w, feats.shape[-1])) * image_mask.unsqueeze(-1).float()
            inputs |= {"image": views, "image_mask": image_mask}
        if text is not None and text_mask is not None:
            inputs |= {"text": text, "text_mask": text_mask}
        return probabilities(self.head(**inputs), self.output), views


def _example(predictor: Any) -> dict[str, torch.Tensor]:
    """Zero inputs of the right shapes (two slots for a multi-view head) for tracing."""
    out: dict[str, torch.Tensor] = {}
    spec = predictor.run.sidecar.image
    if predictor.image_encoder is not None and spec is not None:
        size = predictor.image_encoder.spec.input_size
        channels = int(predictor.image_encoder.preprocess(np.zeros((size, size), np.uint8)).shape[0])
        width = int(spec.n_views) if spec.views in ("frontal", "concat") else 2
        out["pixels"] = torch.zeros((1, max(width, 1), channels, size, size))
        out["image_mask"] = torch.ones((1, max(width, 1)), dtype=torch.bool)
    text = predictor.run.sidecar.text
    if text is not None:
        out["text"] = torch.zeros((1, int(text.dim)))
        out["text_mask"] = torch.ones((1,), dtype=torch.bool)
    return out


def export_onnx(run_dir: str | Path, dest: str | Path) -> Path:
    """Write ``dest/model.onnx``: the run's image encoder and head as one graph."""
    predictor = Predictor(run_dir)
    model = ServedPath(predictor.image_encoder, predictor.run.head, predictor.run.output).eval()
    example = _example(predictor)
    names = list(example)
    dynamic = {"pixels": {1: "slots"}, "image_mask": {1: "slots"}, "image": {1: "slots"}}
    path = Path(dest) / layout.ONNX_MODEL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes
            torch.onnx.export(model, (), str(path), kwargs=example, input_names=names,
                              output_names=["probabilities", "image"], opset_version=OPSET,
                              dynamic_axes={k: v for k, v in dynamic.items()
                                            if k in names or k == "image"},
                              dynamo=False)  # fmt: skip
    except Exception as err:  # the exporter raises many kinds; name the run
        raise CxrfuseError(f"{run_dir}: the ONNX export failed ({type(err).__name__}: {err})") from err
    return path


def test_studies(predictor: Any, split: str = "test") -> list[dict[str, Any]]:
    """The run's ``split`` studies from its manifest: view paths and positions, report text."""
    from cxrfuse.vocab import REPORT_SECTIONS

    df = predictor.run.manifest().df
    out = []
    for _, row in df[df["split"] == split].iterrows():
        paths = [v["path"] for v in row["views"] if v["path"]]
        views = [v["view"] for v in row["views"] if v["path"]]
        report = "\n".join(f"{s.upper()}: {row[s]}" for s in REPORT_SECTIONS
                           if isinstance(row.get(s), str) and row[s].strip())  # fmt: skip
        if paths or not predictor.reads_images:
            out.append({"study_id": str(row["study_id"]), "images": paths, "views": views,
                        "report": study_text(report or None)})  # fmt: skip
    return out


def parity(run_dir: str | Path, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """max |Δp| between the PyTorch and the onnxruntime backends on the run's ``split``
    studies, each read from its files through :class:`~cxrfuse.inference.Predictor`."""
    torch_predictor = Predictor(run_dir)
    onnx_predictor = Predictor(torch_predictor.run, backend="onnxruntime")
    studies = test_studies(torch_predictor, split)[:limit]
    if not studies:
        raise DataError(f"{run_dir}: no {split} study with images in the run's manifest")
    worst, worst_study, seconds = 0.0, None, {"torch": 0.0, "onnxruntime": 0.0}
    for study in studies:
        answers = []
        for name, predictor in (("torch", torch_predictor), ("onnxruntime", onnx_predictor)):
            start = time.perf_counter()
            answers.append(predictor.predict(study["images"], report=study["report"],
                                             views=study["views"] or None).probabilities)
            seconds[name] += time.perf_counter() - start
        delta = max(abs(answers[0][k] - answers[1][k]) for k in answers[0])
        if delta >= worst:
            worst, worst_study = delta, study["study_id"]
    return {"split": split, "studies": len(studies), "max_abs_diff": worst,
            "worst_study": worst_study, "tolerance": PARITY_TOLERANCE,
            "passed": worst <= PARITY_TOLERANCE, "opset": OPSET,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "in_python": "file decoding, view placement, resizing and normalisation, report "
                         "sections, label masking, the text encoder, thresholds, warnings, "
                         "Grad-CAM"}  # fmt: skip


def export_onnx_folder(run_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """``cxrfuse export RUN --to DEST --format onnx``: the run's export folder plus
    ``model.onnx``, its parity on the run's test studies (``onnx_parity.json``, also returned)
    and both files' sha256 in ``export.json``. Parity above the tolerance raises (the files
    stay, to be inspected)."""
    from cxrfuse.files import write_json
    from cxrfuse.rundir.modelcard import _sha256, export_run

    out = export_run(run_dir, dest)
    export_onnx(out, out)
    check = parity(out)
    write_json(out / layout.ONNX_PARITY, check, indent=2)
    info_path = out / layout.EXPORT_INFO
    info = json.loads(info_path.read_text())
    for name in (layout.ONNX_MODEL, layout.ONNX_PARITY):
        info["files"][name] = _sha256(out / name)
    write_json(info_path, info, indent=2)
    if not check["passed"]:
        raise CxrfuseError(f"{out / layout.ONNX_MODEL}: differs from PyTorch by "
                           f"{check['max_abs_diff']:.2e} > {check['tolerance']:.0e} on "
                           f"study {check['worst_study']}")  # fmt: skip
    return check
