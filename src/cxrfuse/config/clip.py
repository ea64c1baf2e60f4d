"""The CLIP run config (YAML, validated by pydantic; unknown keys are rejected, naming the key).

Sections mirror the run config of ``cxrfuse train`` (``data``, ``image``, ``text``, ``model``,
``training``) and add what only a contrastive model has: the temperature, and the
after-training analyses ``probe``, ``zero_shot`` and ``retrieval``. Defaults are the design of
design 002 (ViT-B/16 + BERT uncased, 512-d projections, InfoNCE with temperature 0.1, AdamW
1e-5); ``offline_encoder`` names the substitutes that load without a model hub
(``--offline`` or ``offline: true`` swaps them in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from cxrfuse.config.common import (
    MAX_SEED,
    Strict,
    check_folder_name,
    parse_override,
    read_yaml_config,
    set_dotted,
    validate_config,
)
from cxrfuse.config.run import TrackingConfig
from cxrfuse.text import TextConfig
from cxrfuse.vocab import IMAGE_DESCRIBING_SECTIONS, Section


class ClipDataConfig(Strict):
    """Which studies and images are paired."""

    manifest: Path = Path("demo-output/phantoms/manifest.parquet")
    task: str | None = Field(
        "multilabel",
        description="task or label whose names are masked (when text.mask_labels) and which "
        "the probe and zero-shot classify; null = the whole label vocabulary",
    )
    view: Literal["frontal", "first"] = Field(
        "frontal", description="frontal: the first frontal view (else the first view); "
        "first: the first view whatever its position"
    )
    limit: int | None = Field(None, ge=1, description="use at most this many studies per split")
    cache_images: bool = Field(True, description="decode and resize every image once, in memory")


FreezeBlocks = Annotated[int, Field(ge=0)] | Literal["all"]


class ClipImageConfig(Strict):
    """The image tower: any registered image encoder, trained end to end or locked."""

    encoder: str = "vit-b-16"
    offline_encoder: str = "efficientnet-lite0"
    weights: str = "default"
    input_size: int | None = Field(None, ge=16, description="default: the encoder's own size")
    freeze_blocks: FreezeBlocks = Field(
        0, description="freeze the first N blocks (block 1 = the stem / patch embedding); "
        "'all' locks the tower: its features are computed once and only the projection trains"
    )


class ClipTextConfig(TextConfig):
    """The text tower (any BERT-family or sentence model) and the report text it reads.

    The report text is the paired *training signal* of contrastive pre-training, not a
    diagnosis input: findings + impression by default, unmasked, because zero-shot prompts
    need the finding words the reports use. Mask or change sections as for any model.
    """

    sections: list[Section] = Field(default_factory=lambda: list(IMAGE_DESCRIBING_SECTIONS))
    mask_labels: bool = False
    encoder: str = Field(
        "bert-base-uncased", description="registered name (biobert, bert-base-uncased, minilm, "
        "...), a Hugging Face hub id or a local model folder"
    )
    offline_encoder: str = "minilm"
    weights: Literal["default", "none"] = "default"
    pooling: Literal["cls", "mean"] | None = Field(None, description="default: the encoder's")
    max_length: int = Field(128, ge=8, le=4096, description="tokens; longer reports truncated")
    freeze_blocks: FreezeBlocks = Field(
        0, description="freeze the first N blocks (block 1 = the token embeddings); 'all' "
        "locks the tower: its features are computed once and only the projection trains"
    )

    def text_config(self) -> TextConfig:
        """The report-text part, as the text pipeline takes it."""
        return TextConfig(**self.model_dump(include=set(TextConfig.model_fields)))


class TemperatureConfig(Strict):
    """InfoNCE temperature: fixed (design 002: 0.1) or learned on a log scale, clamped."""

    init: float = Field(0.1, gt=0.0)
    learn: bool = False
    min: float = Field(0.01, gt=0.0)
    max: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _in_range(self) -> TemperatureConfig:
        if not self.min <= self.init <= self.max:
            raise ValueError(f"init {self.init} must lie in [min {self.min}, max {self.max}]")
        return self


class ClipModelConfig(Strict):
    projection_dim: int = Field(512, ge=2)
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)


class ClipTrainingConfig(Strict):
    optimizer: Literal["adamw"] = "adamw"
    lr: float = Field(1e-5, gt=0.0, description="learning rate of the two encoders")
    head_lr: float = Field(1e-3, gt=0.0, description="projections and temperature")
    weight_decay: float = Field(0.01, ge=0.0)
    batch_size: int = Field(32, ge=2)
    max_epochs: int = Field(30, ge=1)
    schedule: Literal["cosine", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    gradient_clip: float | None = Field(1.0, gt=0.0)
    keep: Literal["best", "last"] = Field(
        "best", description="save the weights of the epoch with the lowest val loss, or the last"
    )
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    accelerator: str = "cpu"
    devices: int | str = 1
    num_workers: int = Field(0, ge=0)
    progress: bool = True


class ProbeConfig(Strict):
    """Linear probing (design 002): frozen 512 + 512 embeddings -> MLP 2 x 512, vs unimodal."""

    task: str | None = Field(None, description="default: data.task")
    text_sections: list[Section] | None = (
        Field(None, description="report sections embedded for the probe; default: the "
              "training text (findings/impression carry the labels: see the text-only row)")
    )
    hidden: list[int] = Field(default_factory=lambda: [512, 512])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(100, ge=1)
    patience: int = Field(10, ge=1)
    threshold: str = Field("f1", description="f1 | youden | a number; chosen on val")
    n_boot: int = Field(1000, ge=0)


DEFAULT_POSITIVE = ["findings suggest {label}.", "{label}."]
DEFAULT_NEGATIVE = ["no {label}.", "no evidence of {label}."]
DEFAULT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "abnormal": {
        "positive": ["abnormal chest radiograph.", "findings suggest disease."],
        "negative": ["normal chest radiograph.", "no acute cardiopulmonary abnormality."],
    },
}


class LabelPrompts(Strict):
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class ZeroShotConfig(Strict):
    """Prompts per label; ``{label}`` in a template becomes the lower-cased label name."""

    task: str | None = Field(None, description="default: data.task")
    positive: list[str] = Field(default_factory=lambda: list(DEFAULT_POSITIVE), min_length=1)
    negative: list[str] = Field(default_factory=lambda: list(DEFAULT_NEGATIVE), min_length=1)
    prompts: dict[str, LabelPrompts] = Field(
        default_factory=lambda: {k: LabelPrompts(**v) for k, v in DEFAULT_PROMPTS.items()},
        description="per-label prompts that replace the templates",
    )
    prefix: str = Field("", description="put before every prompt, e.g. 'IMPRESSION: '")

    def label_prompts(self, label: str) -> LabelPrompts:
        """The positive and negative prompts of one label."""
        if label in self.prompts:
            chosen = self.prompts[label]
        else:
            name = label.lower()
            chosen = LabelPrompts(
                positive=[t.format(label=name) for t in self.positive],
                negative=[t.format(label=name) for t in self.negative],
            )
        return LabelPrompts(
            positive=[self.prefix + p for p in chosen.positive],
            negative=[self.prefix + p for p in chosen.negative],
        )


class RetrievalConfig(Strict):
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], min_length=1)
    split: Literal["train", "val", "test"] = "test"


class ClipConfig(Strict):
    """A contrastive image-report run: ``<runs_dir>/<name>/``."""

    name: str = "iu-clip"
    runs_dir: Path = Path("runs")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    offline: bool = Field(False, description="use image/text offline_encoder substitutes")
    data: ClipDataConfig = Field(default_factory=ClipDataConfig)
    image: ClipImageConfig = Field(default_factory=ClipImageConfig)
    text: ClipTextConfig = Field(default_factory=ClipTextConfig)
    model: ClipModelConfig = Field(default_factory=ClipModelConfig)
    training: ClipTrainingConfig = Field(default_factory=ClipTrainingConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    zero_shot: ZeroShotConfig = Field(default_factory=ZeroShotConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_folder_name(value, "CLIP run")

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name

    def to_yaml(self) -> str:
        """The resolved config as YAML (paths as strings)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @property
    def image_encoder(self) -> str:
        """The image encoder actually used (the offline substitute when ``offline``)."""
        return self.image.offline_encoder if self.offline else self.image.encoder

    @property
    def text_encoder(self) -> str:
        """The text encoder actually used (the offline substitute when ``offline``)."""
        return self.text.offline_encoder if self.offline else self.text.encoder


# ----------------------------------------------------------------------------- loading


def validate_clip_config(raw: dict[str, Any], source: str = "config") -> ClipConfig:
    """Validate a mapping; a :class:`ConfigError` names ``source``, each key path and the problem."""
    return validate_config(ClipConfig, raw, source)


def load_clip_config(path: str | Path, overrides: list[str] | None = None) -> ClipConfig:
    """Read a YAML CLIP config, apply ``--set key.path=value`` overrides (YAML values), validate."""
    raw = read_yaml_config(Path(path))
    for item in overrides or []:
        set_dotted(raw, *parse_override(item))
    return validate_clip_config(raw, source=str(path))


