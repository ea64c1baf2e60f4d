"""How much of the IU X-ray label can a bag-of-words model read from each text choice?

TF-IDF (1-2 grams) + logistic regression, 5-fold stratified CV AUROC, on the 3,955 reports that
torchxrayvision ships, for normal vs abnormal and each multilabel finding, with the text
prepared by cxrfuse.text: findings+impression raw, findings+impression masked, indication only.

    .venv/bin/python benchmarks/text_leakage.py
"""

from __future__ import annotations

import platform
import time

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline

from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.text import TextConfig, prepare_texts

CHOICES = {
    "findings+impression raw": TextConfig(sections=["findings", "impression"], mask_labels=False),
    "findings+impression masked": TextConfig(sections=["findings", "impression"], mask_labels=True),
    "indication masked": TextConfig(sections=["indication"], mask_labels=True),
}


def cv_auroc(texts: pd.Series, y: np.ndarray, seed: int = 0) -> float:
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=4.0))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, texts.fillna("").to_numpy(), y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def main() -> None:
    start = time.perf_counter()
    manifest, _ = ingest_iu_xray()
    rows = []
    for task in ("normal-abnormal", "multilabel"):
        labels = manifest.task_labels(task)
        for choice, config in CHOICES.items():
            texts = prepare_texts(manifest, config, task=task)
            for name in labels:
                y = manifest.label_matrix([name])[:, 0]
                known = ~np.isnan(y)
                rows.append({"label": name, "text": choice,
                             "auroc": cv_auroc(texts[known], y[known].astype(int))})
    table = pd.DataFrame(rows).pivot(index="label", columns="text", values="auroc")[list(CHOICES)]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    print(table.round(3).to_markdown())
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
