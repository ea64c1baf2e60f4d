"""Typed models of what a run directory's JSON files hold (pydantic; unknown keys rejected).

* :class:`RunInfo` (``run.json``): kind (``head``, ``finetune``, ``clip``), status
  (``running``, ``finished``, ``failed``), timings, data counts, stores, fit facts,
  environment, and the kind's own facts (:class:`FinetuneFacts`, :class:`ClipFacts`).
* :class:`HeadSidecar` (``model.json`` of head and fine-tune runs): how to rebuild the head,
  the image side (encoder, views, whether it was fine-tuned) and the text side (encoder, text
  configuration, fitted state files), and the decision thresholds with how they were chosen.
* :class:`ClipSidecar` (``model.json`` of CLIP runs).
* :class:`Metrics` (``metrics.json``): the evaluation of a run.
* :class:`Environment`: the machine and package versions a result came from.

Files written by earlier cxrfuse versions (no ``kind`` in run.json) are read through
:meth:`RunInfo.from_legacy`, which infers the kind.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RunKind = Literal["head", "finetune", "clip"]
RunStatus = Literal["running", "finished", "failed"]
HEAD_FORMAT = "cxrfuse-head/1"
CLIP_FORMAT = "cxrfuse-clip/1"
CLIP_TASK = "clip"
"""The ``task`` CLIP runs record (they learn an image-report space, not a label task)."""

KIND_VERBS: dict[str, str] = {
    "head": "cxrfuse evaluate / report / explain / attribute / predict",
    "finetune": "cxrfuse evaluate / report / explain / attribute / predict",
    "clip": "cxrfuse clip retrieve / zero-shot / probe, cxrfuse generate retrieval, "
    "cxrfuse explain, cxrfuse report",
}
"""What a user can run on each kind of run directory (for errors that refuse a kind)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Open(BaseModel):
    """A model that keeps fields it does not know (written by a newer analysis)."""

    model_config = ConfigDict(extra="allow")


class Environment(_Open):
    """Where a result came from."""

    python: str | None = None
    torch: str | None = None
    cxrfuse: str | None = None
    platform: str | None = None
    machine: str | None = None
    device: str | None = None
    cpu_threads: int | None = None
    packages: dict[str, str | None] = Field(default_factory=dict)


class FitFacts(_Model):
    """What early stopping did."""

    epochs_run: int
    best_epoch: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False


class FinetuneFacts(_Model):
    """What a fine-tuning run trained."""

    trainable_parameters: int
    frozen: list[str] = Field(default_factory=list)
    image_lr: float
    augment: str | None = None
    unreadable_views: list[str] = Field(default_factory=list)
    n_unreadable_views: int = 0


class ClipFacts(_Model):
    """What a CLIP run learned and kept."""

    encoders: dict[str, str] = Field(default_factory=dict)
    locked: dict[str, bool] = Field(default_factory=dict)
    precision: str | None = None
    kept_epoch: int | None = None
    val_loss: dict[str, float | None] | None = None
    val_r5_image_to_text: dict[str, float | None] | None = None
    dropped: dict[str, Any] = Field(default_factory=dict)
    truncated_train_texts: float | None = None


class RunInfo(_Model):
    """``run.json``."""

    name: str
    kind: RunKind
    status: RunStatus
    started: str | None = None
    finished: str | None = None
    seed: int | None = None
    task: str | None = None
    labels: list[str] = Field(default_factory=list)
    output: str | None = None
    modalities: list[str] = Field(default_factory=list)
    images: str | None = None
    manifest: str | None = None
    stores: dict[str, str | None] = Field(default_factory=dict)
    n: dict[str, int] = Field(default_factory=dict)
    n_train_before_subsample: int | None = None
    missing: dict[str, int] = Field(default_factory=dict)
    views: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Per split, the images the head's view fusion read, by kind (frontal, lateral, unknown)
    and the studies with any image read; empty for a run of an earlier version or without
    images (its training views are unknown, not guessed)."""
    fit: FitFacts | None = None
    finetune: FinetuneFacts | None = None
    clip: ClipFacts | None = None
    digests: dict[str, str] = Field(default_factory=dict)
    """SHA-256 of the weights and fitted text state ``predict`` reads (file name -> digest),
    recorded when training ends and checked when the run is loaded; empty for earlier runs."""
    environment: Environment = Field(default_factory=Environment)
    timing_s: float | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def finished_ok(self) -> bool:
        return self.status == "finished"

    @classmethod
    def from_legacy(cls, raw: dict[str, Any]) -> RunInfo:
        """A run.json of an earlier version (no ``kind``; CLIP facts at the top level)."""
        raw = dict(raw)
        if raw.get("task") == CLIP_TASK:
            raw["kind"] = "clip"
            facts = {k: raw.pop(k) for k in list(raw) if k in ClipFacts.model_fields}
            raw["clip"] = facts
        else:
            raw["kind"] = "finetune" if raw.get("finetune") else "head"
        return cls.model_validate(raw)


class HeadSpec(_Model):
    """How to rebuild a fusion head: :func:`cxrfuse.fusion.build_head` ``(kind, **kwargs)``."""

    kind: str
    kwargs: dict[str, Any]


class ImageSide(_Model):
    """The image side of a trained head."""

    encoder: str
    weights: str
    views: str
    input_size: int
    dim: int
    n_views: int = 1
    finetuned: bool = False
    grayscale: bool = False
    channels: int | None = None
    freeze: list[str] = Field(default_factory=list)
    file: str | None = None
    """The fine-tuned encoder's weights, a file inside the run directory."""
    fit: Literal["crop", "pad"] = "crop"
    """How a view became the model's square: ``crop`` (central square; every run written
    before the option) or ``pad`` (letterboxed, nothing dropped)."""


class TextState(_Model):
    """Files (inside the run directory) of a text encoder fitted on the training split."""

    json_file: str = Field(alias="json")
    tensors: str

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TextSide(_Model):
    """The text side of a trained head: which encoder read which text."""

    encoder: str
    weights: str
    options: dict[str, Any] = Field(default_factory=dict)
    text_config: dict[str, Any]
    mask_labels_for: list[str] = Field(default_factory=list)
    dim: int
    state: TextState | None = None


class HeadSidecar(_Model):
    """``model.json`` of a head or fine-tune run: enough to rebuild the model for prediction
    without the training code path or pickles."""

    format: Literal["cxrfuse-head/1"] = HEAD_FORMAT
    head: HeadSpec
    labels: list[str]
    task: str
    output: Literal["sigmoid", "softmax"]
    image: ImageSide | None = None
    text: TextSide | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    threshold_method: str | None = None
    """How :attr:`thresholds` were chosen (``f1``, ``youden`` or a number), on the val split."""

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("image", "text") if getattr(self, m) is not None]


class ClipSidecar(_Open):
    """``model.json`` of a CLIP run: towers, projection, temperature."""

    format: Literal["cxrfuse-clip/1"] = CLIP_FORMAT
    image: dict[str, Any]
    text: dict[str, Any]
    projection_dim: int
    temperature: dict[str, Any]
    labels: list[str] = Field(default_factory=list)
    task: str | None = None
    images: str | None = None


VerdictKind = Literal["chance", "trivial", "constant", "small_val"]


class Verdict(_Model):
    """A condition that holds for a run's test predictions (``metrics.json`` ``test.verdicts``):
    ``chance`` (AUROC interval includes 0.5), ``trivial`` (F1 not above always-positive's
    beyond its interval), ``constant`` (predictions barely vary, or the best epoch was the
    first), ``small_val`` (threshold chosen on fewer than 10 val studies of a class).
    ``label`` None: the whole model."""

    label: str | None = None
    kind: VerdictKind
    message: str


class TestMetrics(_Open):
    """``metrics.json`` ``test``: headline metrics (macro over labels), the per-label tables,
    the trivial baselines per label and the verdicts (None in files written before verdicts
    existed)."""

    __test__ = False  # not a pytest class

    headline: dict[str, float | None] = Field(default_factory=dict)
    per_label: dict[str, dict[str, Any]] = Field(default_factory=dict)
    baselines: dict[str, Any] = Field(default_factory=dict)
    verdicts: list[Verdict] | None = None


class Metrics(_Open):
    """``metrics.json``: a run's evaluation; :attr:`test` typed (:class:`TestMetrics`), the
    interval tables (``ci``) and ``val`` plain mappings. :meth:`as_result` is the mapping
    ``evaluate_run`` returns."""

    run: str
    task: str | None = None
    labels: list[str]
    modalities: list[str]
    seed: int | None = None
    images: str | None = None
    threshold_method: str
    thresholds: dict[str, float]
    threshold_warnings: list[str] = Field(default_factory=list)
    n_boot: int
    bootstrap_seed: int = 0
    val: dict[str, Any]
    test: TestMetrics
    ci: dict[str, Any] = Field(default_factory=dict)
    evaluated: str | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    leakage: dict[str, Any] | None = None
    plots: list[str] = Field(default_factory=list)

    @property
    def verdicts(self) -> list[Verdict]:
        """The run's verdicts (empty for files written before verdicts existed)."""
        return list(self.test.verdicts or [])

    @property
    def baselines(self) -> dict[str, Any]:
        """Per label: prevalence, always-positive / always-negative metrics, chance AUROC."""
        return dict(self.test.baselines)

    def as_result(self) -> dict[str, Any]:
        """The file as the mapping :func:`cxrfuse.evaluation.evaluate_run` returns (the keys
        the file holds, verdicts validated)."""
        return self.model_dump(exclude_unset=True)


LoraStatus = Literal["running", "finished", "early-stopped", "failed"]


class LoraRunInfo(_Open):
    """``finetune.json`` of a LoRA fine-tuning (``cxrfuse generate finetune``): written with
    status ``running`` when a call starts (it marks the folder as the fine-tuning's own, which
    a later call may resume and whose ``adapter/`` and ``checkpoint/`` it may replace) and
    completed when the call ends (``failed`` when an epoch raised; a rerun resumes after the
    last finished epoch)."""

    model: str
    settings: dict[str, Any]
    target_modules: str
    status: LoraStatus = "running"
    epochs_done: int = 0
    best_epoch: int | None = None
    best_val_loss: float | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    studies: dict[str, int] = Field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = Field(default_factory=dict)
    parameters: int | None = None
    trainable_parameters: int | None = None
    trainable_tensors: int | None = None
    device: str | None = None
    dtype: str | None = None
    seconds_this_call: float | None = None
    steps_per_epoch: int | None = None
