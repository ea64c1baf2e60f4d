"""The project's words, defined once: report sections, view names, splits, label vocabularies
and the reference designs.

Every other module imports these names instead of spelling them out. Two section defaults
exist on purpose, each for its own reason:

* :data:`PRE_READ_SECTIONS` (the indication): text written *before* the image is read. The
  default of every model that predicts labels from image and text, because IU X-ray and
  MIMIC-CXR labels are derived from the findings and impression, which therefore carry the
  label (the leakage the evaluation probes for).
* :data:`IMAGE_DESCRIBING_SECTIONS` (findings + impression): the text that describes the image.
  The default of the CLIP text tower, of report generation (its target) and of the leakage
  audit (what it examines), where describing the image is the point.
"""

from __future__ import annotations

from typing import Literal

# ----------------------------------------------------------------------------- report text

Section = Literal["comparison", "indication", "findings", "impression"]
REPORT_SECTIONS: tuple[Section, ...] = ("comparison", "indication", "findings", "impression")
"""Every report section a manifest stores, in report order."""

PRE_READ_SECTIONS: tuple[Section, ...] = ("indication",)
"""Text that exists before the image is read: the honest default for diagnosis-style models."""

IMAGE_DESCRIBING_SECTIONS: tuple[Section, ...] = ("findings", "impression")
"""Text that describes the image: CLIP's text tower, report generation's target, the audit."""

LEAKY_SECTIONS = frozenset(IMAGE_DESCRIBING_SECTIONS)
"""Sections a dataset's labels are derived from (IU X-ray MeSH terms, CheXpert labels)."""

# ----------------------------------------------------------------------------- views

VIEW_POSITIONS = ("PA", "AP", "FRONTAL", "LATERAL", "LL", "UNKNOWN")
"""Normalised view positions a manifest may hold."""
FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
LATERAL_VIEWS = frozenset({"LATERAL", "LL"})
VIEW_KINDS = ("frontal", "lateral", "unknown")
"""What a view position says about the film: frontal (PA, AP), lateral, or unknown."""

VIEW_ALIASES: dict[str, str] = {
    "PA": "PA", "POSTERO ANTERIOR": "PA", "POSTEROANTERIOR": "PA", "FRONTAL": "FRONTAL",
    "AP": "AP", "AP AXIAL": "AP", "ANTERO POSTERIOR": "AP",
    "ANTEROPOSTERIOR": "AP", "AP SUPINE": "AP", "AP ERECT": "AP",
    "LATERAL": "LATERAL", "LAT": "LATERAL", "L": "LATERAL", "RL": "LATERAL",
    "RLAT": "LATERAL", "RIGHT LATERAL": "LATERAL", "XTABLE LATERAL": "LATERAL",
    "LARGE LATERAL": "LATERAL", "LL": "LL", "LLAT": "LL", "LEFT LATERAL": "LL",
}  # fmt: skip
"""Every spelling of a view position cxrfuse reads (upper case, ``-``/``_`` as spaces) and the
normalised position it means: DICOM ``ViewPosition`` (PA, AP, LL, RL, LATERAL), Kaggle IU
projections (Frontal, Lateral), torchxrayvision's t-SNE views (PA, L) and CLI shorthands
(``L``, ``LAT``, ``LLAT``). One mapping, used wherever a view is parsed."""

# ----------------------------------------------------------------------------- studies

SPLITS = ("train", "val", "test")
IMAGE_KINDS = ("real", "phantom", "none")
"""What a manifest's image paths point at: real radiographs, synthetic phantoms, nothing."""
PHANTOM = "phantom"

# ----------------------------------------------------------------------------- labels

ABNORMAL = "abnormal"
"""The binary label of the normal-vs-abnormal task (1 = abnormal)."""
NO_FINDING = "No Finding"

IU_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly", "Pulmonary Atelectasis", "Calcinosis", "Opacity", "Calcified Granuloma",
    "Pleural Effusion", "Nodule", "Airspace Disease",
)  # fmt: skip
"""The eight most frequent finding heads (MeSH major terms) of the 3,955 OpenI reports."""

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion",
    "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
)  # fmt: skip
"""The 14 CheXpert observations (``mimic-cxr-2.0.0-chexpert.csv``), alphabetical."""

CHEXBERT_ORDER: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices", "No Finding",
)  # fmt: skip
"""The same 14 observations in the CheXpert/CheXbert labeler order (report labelers' columns)."""

CHEXPERT_FIVE: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
)  # fmt: skip
"""The five observations of the CheXpert competition, the usual clinical-efficacy subset."""

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)  # fmt: skip
"""The 14 findings of NIH ChestX-ray14 ``Finding Labels`` (``No Finding`` otherwise)."""

# ----------------------------------------------------------------------------- reference designs

DESIGNS: dict[str, str] = {
    "000": "xrv DenseNet-121 + BioBERT, concat -> MLP; IU normal/abnormal and multilabel; views "
    "averaged, concatenated or fused by masked attention; unimodal baselines; Venn",
    "001": "MIMIC-CXR per-disease CNNs (ResNet-18/50, VGG-16, DenseNet-121), PA filter, one image "
    "per subject; Llama-3.2-11B-Vision report generation",
    "002": "CLIP (ViT-B/16 + BERT, InfoNCE, temperature 0.1) on IU; frozen 512 + 512 -> MLP 2 x 512; "
    "Grad-CAM on the image encoder",
    "003": "EfficientNet-B1 fine-tuned + frozen BioBERT -> MLP 256, dropout 0.3; per-epoch tables; "
    "vs CNN alone",
    "004": "MIMIC pneumonia vs no finding; grayscale ResNet-50 + BioBERT, 256-d late fusion; BCE vs "
    "focal; full vs 75:25; modality-shuffle tests",
}
"""The published designs cxrfuse reproduces ("design 00N"; the papers are in shared/seeds/).
"Seed" in cxrfuse always means a random seed."""
