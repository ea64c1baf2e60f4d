"""A trained head or fine-tune run opened for use: the head rebuilt from ``model.json`` and
``model.safetensors``, its encoders rebuilt as the sidecar names them (the fine-tuned image
encoder from ``encoder.safetensors``; a fitted tf-idf from its stored state), and the
run's stored study arrays. No training code path, no pickles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrfuse.config import RunConfig
from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.encoders import (
    ImageEncoder,
    TextEncoder,
    TfidfEncoder,
    create_image_encoder,
    create_text_encoder,
)
from cxrfuse.encoders.hub import STATE_DICT_SUFFIXES
from cxrfuse.encoders.registry import get_image_encoder_spec, list_text_encoders
from cxrfuse.encoders.surgery import adapt_to_grayscale
from cxrfuse.fusion import INPUT_KEYS, FusionHead, build_head, head_probabilities
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import HeadSidecar, RunDir, RunInfo
from cxrfuse.store import StudyArrays, assemble, load_image_embeddings, load_text_embeddings
from cxrfuse.store.integrity import digest_file

HEAD_KINDS = ("head", "finetune")


def build_head_from(sidecar: HeadSidecar, run: RunDir) -> FusionHead:
    """The head of ``model.json`` with the weights of ``model.safetensors``, eval mode, CPU."""
    try:
        kwargs = {k: v for k, v in sidecar.head.kwargs.items() if k != "kind"}
        head = build_head(sidecar.head.kind, **kwargs)
    except (TypeError, ValueError) as err:
        raise DataError(f"{run.sidecar_path}: field 'head' cannot rebuild a fusion head "
                        f"({err})") from err  # fmt: skip
    try:
        head.load_state_dict(run.read_weights())
    except RuntimeError as err:
        raise DataError(f"{run.weights_path}: does not hold the weights of "
                        f"{run.sidecar_path} ({err})") from err  # fmt: skip
    return head.eval()


def load_finetuned_encoder(run_dir: str | Path | RunDir, device: str | torch.device = "cpu"
                           ) -> ImageEncoder:  # fmt: skip
    """The fine-tuned image encoder of a run directory, in eval mode.

    Rebuilt from ``model.json`` (encoder name, input size, grayscale) with random weights and
    then loaded from the encoder weights file the sidecar names (inside the run directory),
    so no download is needed.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    image = run.sidecar().image
    if image is None or not image.finetuned:
        raise DataError(f"{run.sidecar_path}: the image encoder of this run was not fine-tuned "
                        "(it used stored embeddings); build it with "
                        "cxrfuse.encoders.create_image_encoder")  # fmt: skip
    encoder = create_image_encoder(image.encoder, weights="none", input_size=image.input_size,
                                   fit=image.fit)  # fmt: skip
    if image.grayscale:
        adapt_to_grayscale(encoder)
    state = run.read_weights(image.file or run.encoder_weights_path.name,
                             what="image.file (the fine-tuned encoder)")  # fmt: skip
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise DataError(f"{run.encoder_weights_path} does not fit {image.encoder}: {err}") from err
    encoder.weights = str(run.encoder_weights_path)
    return encoder.to(device).eval()


@dataclass
class LoadedRun:
    """A trained run: ``head`` (eval mode, CPU), ``sidecar``, ``config`` and ``info``."""

    run: RunDir
    head: FusionHead
    sidecar: HeadSidecar
    config: RunConfig
    info: RunInfo
    _arrays: StudyArrays | None = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @property
    def labels(self) -> list[str]:
        return list(self.sidecar.labels)

    @property
    def output(self) -> str:
        return self.sidecar.output

    def predict_proba(self, inputs: dict[str, Any]) -> np.ndarray:
        """Positive-class probabilities (n, n_labels) for inputs keyed image, image_mask,
        text, text_mask (NumPy arrays or tensors)."""
        probs = head_probabilities(self.head, self.output,
                                   {k: v for k, v in inputs.items() if k in INPUT_KEYS})  # fmt: skip
        return probs.numpy()

    def manifest(self) -> Manifest:
        """The manifest the run was trained on."""
        return read_manifest(self.info.manifest or self.config.data.manifest)

    def arrays(self) -> StudyArrays:
        """The run's study arrays, from the stores recorded in run.json."""
        if self._arrays is None:
            stores = self.info.stores
            image = load_image_embeddings(stores["image"]) if stores.get("image") else None
            text = load_text_embeddings(stores["text"]) if stores.get("text") else None
            self._arrays = assemble(self.manifest(), self.config.data.task, image=image,
                                    views=self.config.image.views, text=text)  # fmt: skip
        return self._arrays

    def split_inputs(self, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(inputs, y) of one split, in the order of its rows in predictions.parquet."""
        arrays = self.arrays()
        rows = arrays.indices(split)
        inputs = {k: getattr(arrays, k)[rows] for k in INPUT_KEYS if getattr(arrays, k) is not None}
        return inputs, arrays.y[rows]

    def split_study_ids(self, split: str) -> list[str]:
        arrays = self.arrays()
        return [str(s) for s in arrays.study_ids[arrays.indices(split)]]

    def image_encoder(self, device: str | torch.device = "cpu",
                      weights: str | Path | None = None) -> ImageEncoder:  # fmt: skip
        """The run's image encoder: the fine-tuned one, else the one the sidecar names.

        ``weights`` (a file the user gives) replaces the sidecar's ``image.weights``; from the
        sidecar itself only registry names and files inside the run directory are read."""
        image = self.sidecar.image
        if image is None:
            raise CxrfuseError(f"{self.run_dir}: this run reads {self.info.modalities} only; "
                               "it has no image encoder")  # fmt: skip
        if image.finetuned:
            return load_finetuned_encoder(self.run, device=device)
        if weights is None:
            weights = self._sidecar_weights(image.weights, "image.weights",
                                            get_image_encoder_spec(image.encoder).weight_names())
        return create_image_encoder(image.encoder, weights=weights, input_size=image.input_size,
                                    device=device, fit=image.fit)  # fmt: skip

    def _sidecar_weights(self, value: str, what: str, names: tuple[str, ...] = ()) -> str:
        """Weights a sidecar names: a registry name (or a hub id) as it is; a local path only
        inside the run directory (a model file never makes cxrfuse read elsewhere)."""
        if value in ("default", "none", *names):
            return value
        path = Path(value).expanduser()
        looks_local = (path.is_absolute() or value.startswith((".", "~")) or path.exists()
                       or path.suffix in STATE_DICT_SUFFIXES or "\\" in value)
        if not looks_local:
            return value  # a hub id such as org/model
        return str(self.run.inside(value, what))

    def text_encoder(self) -> TextEncoder:
        """The run's text encoder: its fitted state when it was fitted on the training split."""
        text = self.sidecar.text
        if text is None:
            raise CxrfuseError(f"{self.run_dir}: this run reads {self.info.modalities} only; "
                               "it has no text encoder")  # fmt: skip
        if text.state is not None:
            payload, arrays = self.run.read_text_state(text.state)
            try:
                return TfidfEncoder.from_state(payload, arrays)
            except CxrfuseError as err:
                raise DataError(f"{self.run.sidecar_path}: text.state: {err}") from err
        weights = self._sidecar_weights(text.weights, "text.weights")
        name = text.encoder  # a registry name, a hub id, or a model folder inside the run
        if name not in list_text_encoders():
            name = self._sidecar_weights(name, "text.encoder")
        encoder = create_text_encoder(name, weights=weights, **text.options)
        if getattr(encoder, "requires_fit", False):
            raise CxrfuseError(f"{self.run_dir}: text encoder {text.encoder!r} must be fitted "
                               "but the run stored no fitted state; retrain the run")  # fmt: skip
        return encoder


def verify_run_files(run: RunDir, info: RunInfo) -> None:
    """Check the weights and sidecars against the digests ``run.json`` recorded when the run
    was trained (runs of earlier versions record none)."""
    for name, expected in info.digests.items():
        path = run.path / Path(name).name  # a bare file name: nothing outside the run
        if not path.is_file():
            raise DataError(f"{path}: missing (run.json records its digest); restore it or "
                            "train the run again")  # fmt: skip
        if digest_file(path) != expected:
            raise DataError(f"{path}: its bytes differ from the digest run.json recorded when "
                            "the run was trained (damaged or replaced); restore it or train "
                            "the run again")  # fmt: skip


def load_run(run_dir: str | Path | RunDir) -> LoadedRun:
    """A finished head or fine-tune run directory's head, sidecar, config and run.json."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    info = run.require(HEAD_KINDS, action="loading the trained head")
    verify_run_files(run, info)
    sidecar = run.sidecar()
    return LoadedRun(run, build_head_from(sidecar, run), sidecar, run.run_config(), info)
