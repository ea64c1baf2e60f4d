"""CLIP weights on disk without pickles, and the model rebuilt from them.

A trained CLIP run directory holds ``model.safetensors`` (every weight of both towers, the
projections and the temperature), ``model.json`` (the sidecar: encoder names, input size,
pooling, text settings, projection size, temperature) and ``text_model/`` (the transformer's
``config.json`` and tokenizer files, JSON/text only). :func:`load_clip_model` rebuilds the
model from these alone: the image encoder from the registry with random init, the
transformer from its config, then the saved weights; no hub, no training code path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from cxrfuse.clip.model import ClipModel, Temperature
from cxrfuse.encoders.registry import create_image_encoder
from cxrfuse.problems import CxrfuseError

FORMAT = "cxrfuse-clip/1"
WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
TEXT_FOLDER = "text_model"


def save_clip_model(
    model: ClipModel, tokenizer: Any, run_dir: Path, sidecar: dict[str, Any]
) -> Path:
    """Write weights, sidecar and the text model's config and tokenizer into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, str(run_dir / WEIGHTS_FILE))
    folder = run_dir / TEXT_FOLDER
    model.text_model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    temperature = model.temperature
    full = {
        "format": FORMAT,
        **sidecar,
        "image": {**sidecar.get("image", {}), "dim": model.image_encoder.feature_dim,
                  "input_size": model.image_encoder.spec.input_size},
        "text": {**sidecar.get("text", {}), "pooling": model.pooling, "folder": TEXT_FOLDER,
                 "dim": int(model.text_model.config.hidden_size)},
        "projection_dim": model.projection_dim,
        "temperature": {"learn": temperature.learn, "min": temperature.low,
                        "max": temperature.high, "value": float(temperature())},
    }
    (run_dir / SIDECAR_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return run_dir / WEIGHTS_FILE


CLIP_TASK = "clip"  # the ``task`` of a CLIP run's run.json


def is_clip_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a `cxrfuse clip train` run (False when run.json is unreadable)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("task") == CLIP_TASK
    except (OSError, ValueError, AttributeError):
        return False


def read_sidecar(run_dir: Path) -> dict[str, Any]:
    """The ``model.json`` of a CLIP run; clear errors when missing or of another format."""
    path = Path(run_dir) / SIDECAR_FILE
    if not path.is_file():
        raise CxrfuseError(f"{path}: no model sidecar; is {run_dir} a finished `cxrfuse clip "
                           "train` run?")  # fmt: skip
    sidecar = json.loads(path.read_text())
    if sidecar.get("format") != FORMAT:
        raise CxrfuseError(f"{path}: format {sidecar.get('format')!r}, expected {FORMAT!r}")
    return sidecar


def load_clip_model(run_dir: str | Path, device: str = "cpu") -> tuple[ClipModel, Any, dict]:
    """(model in eval mode, tokenizer, sidecar) of a CLIP run directory."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    run_dir = Path(run_dir)
    sidecar = read_sidecar(run_dir)
    image = create_image_encoder(
        sidecar["image"]["encoder"], weights="none", input_size=sidecar["image"]["input_size"]
    )
    folder = run_dir / sidecar["text"]["folder"]
    text_model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    t = sidecar["temperature"]
    model = ClipModel(
        image, text_model, pooling=sidecar["text"]["pooling"],
        projection_dim=int(sidecar["projection_dim"]),
        temperature=Temperature(min(max(t["value"], t["min"]), t["max"]), t["learn"], t["min"],
                                t["max"]),
    )  # fmt: skip
    missing, unexpected = load_model(model, str(run_dir / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise CxrfuseError(
            f"{run_dir / WEIGHTS_FILE} does not fit the model of {SIDECAR_FILE} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), tokenizer, sidecar
