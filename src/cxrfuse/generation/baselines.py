"""The shortcut baselines every generator is scored beside, on the same studies.

On IU X-ray a single fixed "normal" report scores BLEU-4 and ROUGE-L above several published
generators while its clinical F1 is 0, so a generator's language scores mean little without
reports that ignore the image next to them:

* **random training report**: a seeded random report of the training split per study;
* **most frequent training report**: the training split's modal report (IU's normal template);
* **best constant report**: the one training report that maximises corpus BLEU-4 against the
  *training* reports (chosen on the training split, never on the scored studies), given to
  every study; candidates are the most frequent distinct training reports;
* **nearest-neighbour retrieval** (:mod:`cxrfuse.generation.retrieval`): the report of the
  training study whose image embedding is nearest, when image embeddings are at hand.

All texts are findings + impression without section headers (:func:`plain_report`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu

from cxrfuse.data.manifest import Manifest
from cxrfuse.generation.language import normalise_report
from cxrfuse.problems import DataError
from cxrfuse.text import clean_text, select_sections
from cxrfuse.vocab import IMAGE_DESCRIBING_SECTIONS

RANDOM = "random training report"
MOST_FREQUENT = "most frequent training report"
BEST_CONSTANT = "best constant report (BLEU-4 on train)"
NEAREST = "nearest-neighbour retrieval (image)"
_HEADER = re.compile(r"\b(?:FINDINGS|IMPRESSION|INDICATION|COMPARISON)\s*:\s*", re.IGNORECASE)


def plain_report(text: str) -> str:
    """A report without section headers (``FINDINGS:`` / ``IMPRESSION:``), spaces collapsed:
    the text every generated and reference report is scored as."""
    return " ".join(_HEADER.sub(" ", text or "").split())


def manifest_reports(manifest: Manifest, splits: Sequence[str] | None = None) -> dict[str, str]:
    """Study id -> findings + impression (cleaned, no headers) of the studies of ``splits``
    that have that text."""
    df = manifest.df if splits is None else manifest.df[manifest.df["split"].isin(list(splits))]
    out = {}
    for row in df.to_dict("records"):
        text = plain_report(clean_text(select_sections(row, IMAGE_DESCRIBING_SECTIONS,
                                                       headers=False)))  # fmt: skip
        if text:
            out[str(row["study_id"])] = text
    return out


def corpus_bleu4(candidate: str, references: Sequence[str]) -> float:
    """Corpus BLEU-4 (pycocoevalcap, R2Gen normalisation) of one text given for every reference."""
    refs = {str(i): [normalise_report(r)] for i, r in enumerate(references)}
    hyp = normalise_report(candidate)
    score, _ = Bleu(4).compute_score(refs, {i: [hyp] for i in refs}, verbose=0)
    return float(score[3])


def best_constant_report(train: Mapping[str, str], *, candidates: int = 30, sample: int = 500,
                         seed: int = 0) -> tuple[str, float]:  # fmt: skip
    """The training report with the highest corpus BLEU-4 against (a seeded sample of) the
    training reports, among the ``candidates`` most frequent distinct ones; and that BLEU-4."""
    if not train:
        raise DataError("no training report to choose a constant report from")
    texts = list(train.values())
    pool = [t for t, _ in Counter(texts).most_common(candidates)]
    rng = np.random.default_rng(seed)
    refs = [texts[i] for i in rng.choice(len(texts), size=min(sample, len(texts)), replace=False)]
    scored = [(corpus_bleu4(c, refs), c) for c in pool]
    best_score, best = max(scored, key=lambda x: x[0])
    return best, best_score


def baseline_reports(train: Mapping[str, str], study_ids: Sequence[str], *, seed: int = 0,
                     nearest: Mapping[str, str] | None = None) -> tuple[dict[str, dict[str, str]],
                                                                       dict[str, Any]]:  # fmt: skip
    """Per baseline, study id -> report, for ``study_ids``; and what was chosen (for the record).

    ``train`` must hold training-split reports only (a scored study's own report is never
    one of them); ``nearest`` adds the nearest-neighbour baseline when given.
    """
    overlap = set(train) & set(study_ids)
    if overlap:
        raise DataError(f"{len(overlap)} scored studies (e.g. {min(overlap)}) are in the "
                        "training reports the baselines draw from")  # fmt: skip
    texts = list(train.values())
    if not texts:
        raise DataError("the baselines need training reports; none has findings/impression text")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(texts), len(study_ids))
    frequent, count = Counter(texts).most_common(1)[0]
    constant, bleu4 = best_constant_report(train, seed=seed)
    out = {
        RANDOM: {sid: texts[i] for sid, i in zip(study_ids, picks)},
        MOST_FREQUENT: dict.fromkeys(study_ids, frequent),
        BEST_CONSTANT: dict.fromkeys(study_ids, constant),
    }
    if nearest is not None:
        out[NEAREST] = {sid: nearest[sid] for sid in study_ids}
    info = {"n_training_reports": len(texts), "most_frequent": frequent,
            "most_frequent_count": count, "best_constant": constant,
            "best_constant_train_bleu_4": bleu4, "seed": seed}  # fmt: skip
    return out, info
