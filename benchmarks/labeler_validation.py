"""How well does the CheXpert labeler read IU X-ray reports? Checked against their MeSH terms.

The 3,955 OpenI reports that torchxrayvision ships carry MeSH ``major`` terms indexed by
people from the same text. The MeSH heads that correspond to a CheXpert observation (below)
are the reference; the labeler reads findings + impression. Positive = label 1 (uncertain
counted as negative, as the clinical-efficacy scores do); the ``uncertain`` column counts
the reports labelled -1 and the last column gives the recall when -1 counts as positive. Reports indexed only as ``No Indexing`` are left out.

    PYTHONPATH=src .venv/bin/python benchmarks/labeler_validation.py
    PYTHONPATH=src .venv/bin/python benchmarks/labeler_validation.py --labeler chexbert --chexbert chexbert.pth
"""

from __future__ import annotations

import argparse
import platform
import re
import time

import numpy as np
import pandas as pd

from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.labels import UNINDEXED_MESH
from cxrfuse.generation.labeler import CHEXPERT_LABELS
from cxrfuse.generation.scoring import make_labeler

MESH: dict[str, list[tuple[str, str | None]]] = {
    "Enlarged Cardiomediastinum": [("Mediastinum", r"^(?!.*lymph).*(?:enlarged|prominent|widened)")],
    "Cardiomegaly": [("Cardiomegaly", None), ("Cardiac Shadow", r"enlarged")],
    "Lung Opacity": [("Opacity", None), ("Airspace Disease", None), ("Infiltrate", None),
                     ("Density", r"^(?:lung|retrocardiac)")],
    "Lung Lesion": [("Nodule", None), ("Mass", r"lung")],
    "Edema": [("Pulmonary Edema", None)],
    "Consolidation": [("Consolidation", None)],
    "Pneumonia": [("Pneumonia", None)],
    "Atelectasis": [("Pulmonary Atelectasis", None)],
    "Pneumothorax": [("Pneumothorax", None), ("Hydropneumothorax", None),
                     ("Hemopneumothorax", None)],
    "Pleural Effusion": [("Pleural Effusion", None)],
    "Pleural Other": [("Thickening", r"^pleura")],
    "Fracture": [("Fractures, Bone", None)],
    "Support Devices": [("Catheters, Indwelling", None), ("Implanted Medical Device", None),
                        ("Tube, Inserted", None), ("Medical Device", None), ("Stents", None),
                        ("Surgical Instruments", None)],
    "No Finding": [("normal", None)],
}
"""CheXpert observation -> (MeSH head, regex on the qualifiers after it, or None for any)."""


def mesh_reference(source_labels: pd.Series) -> np.ndarray:
    """(n, 14) 0/1 matrix from the MeSH major terms of each report."""
    out = np.zeros((len(source_labels), len(CHEXPERT_LABELS)))
    for i, terms in enumerate(source_labels):
        entries = [t.strip() for term in terms for t in term.split(";") if t.strip()]
        for j, name in enumerate(CHEXPERT_LABELS):
            for head, qualifier in MESH[name]:
                for entry in entries:
                    found_head, _, rest = entry.partition("/")
                    if found_head.strip().lower() != head.lower():
                        continue
                    if qualifier is None or re.search(qualifier, rest.lower()):
                        out[i, j] = 1
    return out


def validation_table(reference: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    rows = []
    for j, name in enumerate(CHEXPERT_LABELS):
        y, pred = reference[:, j] == 1, labels[:, j] == 1
        tp, fp, fn = int((y & pred).sum()), int((~y & pred).sum()), int((y & ~pred).sum())
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        rows.append({"observation": name, "MeSH positives": int(y.sum()),
                     "labeler positives": int(pred.sum()),
                     "uncertain": int((labels[:, j] == -1).sum()),
                     "precision": precision, "recall": recall, "F1": f1,
                     "recall with -1 as positive": float((y & (labels[:, j] != 0) & ~np.isnan(labels[:, j])).sum()
                                                         / max(1, y.sum()))})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labeler", default="rules", choices=["rules", "chexbert"])
    parser.add_argument("--chexbert", default=None, help="CheXbert checkpoint (chexbert.pth)")
    args = parser.parse_args()
    start = time.perf_counter()
    manifest, _ = ingest_iu_xray()
    df = manifest.df
    indexed = df["source_labels"].map(lambda t: any(x.strip() != UNINDEXED_MESH for x in t))
    df = df[indexed].reset_index(drop=True)
    texts = [" ".join(s for s in (f, i) if isinstance(s, str) and s)
             for f, i in zip(df["findings"], df["impression"])]
    labeler = make_labeler(args.labeler, args.chexbert)
    t0 = time.perf_counter()
    labels = labeler.label(texts)
    label_s = time.perf_counter() - t0
    table = validation_table(mesh_reference(df["source_labels"]), labels)
    print(f"machine: {platform.machine()}, python {platform.python_version()}; "
          f"labeler {labeler.name}; {len(df)} indexed reports (findings + impression)")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    print(f"\n(labelling {label_s:.1f} s, {len(df) / label_s:.0f} reports/s; "
          f"total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
