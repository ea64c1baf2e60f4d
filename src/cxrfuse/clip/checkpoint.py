"""CLIP weights on disk without pickles, and the model rebuilt from them.

A trained CLIP run directory holds ``model.safetensors`` (every weight of both towers, the
projections and the temperature), ``model.json`` (the sidecar: encoder names, input size,
pooling, text settings, projection size, temperature) and ``text_model/`` (the transformer's
``config.json`` and tokenizer files, JSON/text only). :func:`load_clip_model` rebuilds the
model from these alone: the image encoder from the registry with random init, the
transformer from its config, then the saved weights; no hub, no training code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from cxrfuse.clip.model import ClipModel, Temperature
from cxrfuse.encoders import create_image_encoder
from cxrfuse.files import atomic_path
from cxrfuse.problems import DataError
from cxrfuse.rundir import ClipSidecar, RunDir


def save_clip_model(model: ClipModel, tokenizer: Any, run: RunDir, sidecar: dict[str, Any]
                    ) -> Path:  # fmt: skip
    """Write weights, sidecar and the text model's config and tokenizer into the run."""
    run.path.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.weights_path) as tmp:
        save_model(model, str(tmp))
    folder = run.text_model_dir
    model.text_model.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    temperature = model.temperature
    run.write_sidecar(ClipSidecar(**{
        **sidecar,
        "image": {**sidecar.get("image", {}), "dim": model.image_encoder.feature_dim,
                  "input_size": model.image_encoder.spec.input_size},
        "text": {**sidecar.get("text", {}), "pooling": model.pooling, "folder": folder.name,
                 "dim": int(model.text_model.config.hidden_size)},
        "projection_dim": model.projection_dim,
        "temperature": {"learn": temperature.learn, "min": temperature.low,
                        "max": temperature.high, "value": float(temperature())},
    }))  # fmt: skip
    return run.weights_path


def load_clip_model(run_dir: str | Path | RunDir, device: str = "cpu"
                    ) -> tuple[ClipModel, Any, dict]:  # fmt: skip
    """(model in eval mode, tokenizer, sidecar) of a CLIP run directory."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    sidecar = run.clip_sidecar().model_dump()
    image = create_image_encoder(
        sidecar["image"]["encoder"], weights="none", input_size=sidecar["image"]["input_size"]
    )
    folder = run.inside(sidecar["text"]["folder"], "text.folder")
    text_model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    t = sidecar["temperature"]
    model = ClipModel(
        image, text_model, pooling=sidecar["text"]["pooling"],
        projection_dim=int(sidecar["projection_dim"]),
        temperature=Temperature(min(max(t["value"], t["min"]), t["max"]), t["learn"], t["min"],
                                t["max"]),
    )  # fmt: skip
    missing, unexpected = load_model(model, str(run.weights_path), strict=False)
    if missing or unexpected:
        raise DataError(
            f"{run.weights_path} does not fit the model of {run.sidecar_path} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device).eval(), tokenizer, sidecar
