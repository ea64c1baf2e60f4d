"""Deterministic, label-conditioned synthetic chest radiographs ("phantoms").

The pixels of IU X-ray are not always at hand; phantoms let the whole pipeline (embedding,
fusion training, Grad-CAM scoring) run on a manifest whose reports and labels are real but
whose images are drawn here. A phantom is a simplified radiograph: body outline, two dark
lung fields, a bright mediastinum and heart, spine, clavicles, faint ribs, diaphragm domes
and lung markings, with a lesion drawn for each positive label that has a visual rule
(:func:`lesion_kind`) and a binary mask of where it was drawn.

Patient position, body size, heart size, exposure, gamma, noise and blur vary from study to
study, so no fixed pixel gives a label away; the lesions do. Every study's random stream is
seeded from ``(config.seed, study_id)`` through a stable hash, so a study renders to the same
bytes whatever the order, process or machine.

The two views of a study show the same patient and the same lesions: :func:`render_phantom`
draws the patient and lesions first from ``rng``, so two generators in the same state give
matching views.
"""

from cxrfuse.data.phantoms._cases import (
    PhantomConfig,
    drawn_labels,
    is_positive,
    lesion_kind,
    stable_seed,
    study_rng,
)
from cxrfuse.data.phantoms._make import (
    CONFIG_FILE,
    PHANTOM_VIEWS,
    SYNTHETIC_NOTE,
    make_phantoms,
)
from cxrfuse.data.phantoms._render import render_phantom
from cxrfuse.data.phantoms._write import encode_png, file_stem, image_path, mask_path

__all__ = [
    "CONFIG_FILE",
    "PHANTOM_VIEWS",
    "SYNTHETIC_NOTE",
    "PhantomConfig",
    "drawn_labels",
    "encode_png",
    "file_stem",
    "image_path",
    "is_positive",
    "lesion_kind",
    "make_phantoms",
    "mask_path",
    "render_phantom",
    "stable_seed",
    "study_rng",
]
