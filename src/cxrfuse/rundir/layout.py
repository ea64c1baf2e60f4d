"""Every file name of the run-directory contract (``docs/rundir.md``), and nowhere else.

A **run directory** (``runs/<name>/``) holds one trained model: a fusion head on stored
embeddings (kind ``head``), a head with a fine-tuned image encoder (``finetune``) or a
contrastive image-report model (``clip``), plus what later stages add to it (metrics,
ablations, explanations, generated reports, the report). An **experiment directory** holds
a grid of run directories under ``runs/`` and the tables across them.
"""

from __future__ import annotations

from cxrfuse.config.run import EXPERIMENT_RUNS_FOLDER

# ----------------------------------------------------------------------------- a run directory

CONFIG = "config.yaml"
"""The resolved run config (a :class:`~cxrfuse.config.RunConfig` or ``ClipConfig``)."""
RUN_INFO = "run.json"
"""What happened: kind, status, timings, data counts, environment (:class:`RunInfo`)."""
SIDECAR = "model.json"
"""How to rebuild the model without the training code (:class:`HeadSidecar`, ``ClipSidecar``)."""
WEIGHTS = "model.safetensors"
"""The head's (or the whole CLIP model's) weights."""
ENCODER_WEIGHTS = "encoder.safetensors"
"""The fine-tuned image encoder of a ``finetune`` run."""
TEXT_STATE_JSON = "text_encoder.json"
TEXT_STATE_TENSORS = "text_encoder.safetensors"
"""The fitted state of a text encoder fitted on the training split (tf-idf)."""
TEXT_MODEL = "text_model"
"""Folder: a CLIP run's transformer config and tokenizer files (JSON/text only)."""
PREDICTIONS = "predictions.parquet"
"""Val and test predictions: ``study_id``, ``patient_id``, ``split``, ``y__<label>``, ``p__<label>``."""
EPOCHS = "epochs.csv"
"""One row per epoch and split (or per epoch, for CLIP)."""
CHECKPOINTS = ".checkpoints"
"""Folder: Lightning checkpoints while a run trains (deleted when it ends; no pickles stay)."""
METRICS = "metrics.json"
"""``cxrfuse evaluate``: thresholds chosen on val, test metrics with intervals, leakage probe."""
ABLATION = "ablation.json"
"""``cxrfuse evaluate --shuffle``: modality shuffle tests."""
PLOTS = "plots"
"""Folder of PNG plots."""
TRAINING_CURVES = "training_curves.png"
CURVES = "curves.png"
"""Loss curves of a CLIP run or a LoRA fine-tuning run (under :data:`PLOTS` for CLIP)."""
TRACKING = "tracking.json"
"""Where the run was logged (tracker kind, MLflow URI + run id, or the logger folder), so that
evaluation adds its test metrics and artifacts to the same tracker run."""
LOGS = "logs"
"""Folder: the ``tensorboard`` (event files) and ``csv`` (``metrics.csv``) logger output."""
MODEL_CARD = "README.md"
"""The model card: YAML front matter in the Hugging Face model-card format, then Markdown."""
EXPORT_INFO = "export.json"
"""``cxrfuse export``: the source run and the sha256 of every exported file."""
ONNX_MODEL = "model.onnx"
"""``cxrfuse export --format onnx``: image encoder + head as one ONNX graph (pixels in)."""
ONNX_PARITY = "onnx_parity.json"
"""``cxrfuse export --format onnx``: max |Δp| of the ONNX graph vs PyTorch on the test studies."""
RUN_PLOTS = ("roc.png", "pr.png", "confusion.png", "reliability.png")
"""The evaluation plots of one run, in report order (under :data:`PLOTS`)."""

RETRIEVAL = "retrieval.json"
ZERO_SHOT = "zero_shot.json"
PROBE = "probe.json"
PROBE_PREDICTIONS = "probe_predictions.parquet"
"""CLIP analyses (``cxrfuse clip retrieve|zero-shot|probe``), each with a ``.md`` twin."""

GENERATION = "generation"
"""Folder of a run directory holding the generation directories of its generators
(``generation/<name>/``; ``cxrfuse generate retrieval --clip RUN`` writes there)."""

EXPLAIN = "explain"
"""Folder: ``cxrfuse explain`` overlays, one subfolder per CAM method."""
EXPLAIN_INDEX = "index.csv"
EXPLAIN_SCORES = "scores"
POINTING_GAME = "pointing_game"
"""``<EXPLAIN>/<method>/<EXPLAIN_SCORES>/pointing_game.{csv,md,png}`` and ``cases.csv``."""
POINTING_CASES = "cases.csv"
DELETION_PLOT = "deletion.png"
ATTRIBUTION = "attribution"
"""Folder: ``cxrfuse attribute`` tables and plot."""
ATTRIBUTION_TABLE = "attribution.csv"
ATTRIBUTION_SUMMARY = "attribution_summary"
"""``attribution_summary.csv`` and ``.md``."""
ATTRIBUTION_PLOT = "attribution.png"

# ----------------------------------------------------------------------------- external validation

EXTERNAL = "external"
"""Folder of a run directory: ``cxrfuse evaluate RUN --on OTHER.parquet`` writes
``external/<manifest stem>/`` there (or into ``--out``)."""
EXTERNAL_RESULT = "external.json"
"""Label alignment, external metrics with intervals beside the internal test metrics,
subgroups and recalibration (with a ``.md`` twin)."""
EXTERNAL_PREDICTIONS = "external_predictions.parquet"
"""Per external study: ``study_id``, ``patient_id``, ``y__<label>``, ``p__<label>``
(``q__<label>`` recalibrated and ``calibration_part`` with ``--recalibrate``)."""
EXTERNAL_PLOTS = ("external_roc.png", "reliability_before.png", "reliability_after.png")
SUBGROUP_PLOT = "subgroups_{attribute}_reliability.png"
"""Reliability diagrams by subgroup of one attribute (under :data:`PLOTS` of a run or an
external directory)."""

# ----------------------------------------------------------------------------- a generation directory

GENERATED = "generated.parquet"
"""Per study: ``study_id``, ``split``, ``generated``, ``reference``, the extracted labels of
both (``gen__<label>``, ``ref__<label>``: 1 / 0 / -1 uncertain / NaN not mentioned), and the
generator's own columns (``source_study_id``, ``prompt``, ...)."""
GENERATION_SETTINGS = "generation.json"
"""What generated the reports: generator, settings, bank, throughput, skipped studies."""
SCORES = "scores.json"
"""The generator's language and clinical scores (with a ``.md`` twin) and its baselines'."""
STUDY_LABELS = "study_labels.csv"
"""Per study and report set (generated, reference): the labeler's 14 CheXpert values."""
STUDY_SCORES = "study_scores.parquet"
"""Per study and system (the generator, other scored systems, the baselines): sentence BLEU-4,
METEOR, ROUGE-L, CIDEr, CE true / false positives and false negatives, any extra metric."""
ADAPTER = "adapter"
"""Folder: the best epoch's LoRA adapter (``adapter_model.safetensors`` + config)."""
LORA_CHECKPOINT = "checkpoint"
"""Folder: the last finished epoch's adapter, optimizer and RNG state (resuming)."""
LORA_INFO = "finetune.json"
"""A LoRA fine-tuning run: settings, best epoch, losses, timings."""

REPORT_HTML = "report.html"
REPORT_MD = "report.md"

# ----------------------------------------------------------------------------- an experiment

EXPERIMENT_CONFIG = "experiment.yaml"
RUNS = EXPERIMENT_RUNS_FOLDER
"""Folder of the experiment's run directories (where :meth:`ExperimentConfig.expand` puts
them)."""
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
"""The training side's run table (grid values, status, best epoch, test metrics at 0.5); only
``training.experiment`` writes them."""
EVALUATION = "evaluation.json"
"""``cxrfuse evaluate`` on an experiment: per-setting modality tables and paired tests."""
EVALUATION_CSV = "evaluation.csv"
EVALUATION_MD = "evaluation.md"
"""The evaluation's run table (val-chosen thresholds, intervals, verdicts; the grid columns of
``summary.csv`` kept) and its Markdown; only ``evaluation`` writes them."""
SWEEP_STUDY = "study.db"
"""``cxrfuse sweep``: the Optuna study (SQLite; a killed sweep resumes from it)."""
SWEEP_MANIFEST = "search_manifest.parquet"
"""The manifest without its test rows: the only one the trials read."""
SWEEP_SPACE = "space.yaml"
SWEEP_TRIALS = "trials.csv"
"""One row per trial: number, state, validation objective, parameters."""
SWEEP_RESULT = "sweep.json"
"""The search settings, the best trial, its config and the best run's folder."""
SWEEP_TRIAL_RUNS = "trials"
"""Folder of the trial run directories (validation only)."""
SWEEP_BEST = "best"
"""The best trial's config retrained: the one run evaluated on test."""
SWEEP_PLOTS = ("optimisation_history.png", "param_importance.png")
BACKBONES = "backbones"
"""``backbones.csv`` / ``backbones.md``: design 001's per-task backbone table."""
