"""The shortcut baselines every generator is scored beside, on the same studies.

On IU X-ray a single fixed "normal" report scores BLEU-4 and ROUGE-L above several published
generators while its clinical F1 is 0, so a generator's language scores mean little without
reports that ignore the image next to them:

* **random training report**: a seeded random report of the training split per study;
* **most frequent training report**: the training split's modal report (IU's normal template);
* **best constant report**: the one training report that maximises corpus BLEU-4 against the
  *training* reports (chosen on the training split, never on the scored studies), given to
  every study; candidates are the most frequent distinct training reports;
* **sentence-consensus template** (:func:`sentence_consensus`): the most frequent sentences of
  the training reports, assembled greedily (each in its usual place) while corpus BLEU-4
  against a *validation* part rises: the val split when there is one, else a seeded fifth of
  the training reports held out from the sentence counts; never the scored studies;
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
CONSENSUS = "sentence-consensus template (BLEU-4 on val)"
CONSTANT_BASELINES = (MOST_FREQUENT, BEST_CONSTANT, CONSENSUS)
"""The baselines that give every study the same report."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
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


def _bleu4(hypothesis: str, cooked: list) -> float:
    """Corpus BLEU-4 (pycocoevalcap ``Bleu(4)``, "closest" reference length) of one normalised
    text given for every reference, the references cooked once (:func:`_cook`)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer, cook_test

    scorer = BleuScorer(n=4)
    scorer.crefs = list(cooked)
    scorer.ctest = [cook_test(hypothesis, refs) for refs in cooked]
    score, _ = scorer.compute_score(option="closest", verbose=0)
    return float(score[3])


def _cook(references: Sequence[str]) -> list:
    """pycocoevalcap's cooked n-gram counts of each normalised reference."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs

    return [cook_refs([r]) for r in references]


def sentence_consensus(train: Mapping[str, str], validation: Mapping[str, str] | None = None, *,
                       candidates: int = 30, sample: int = 300, seed: int = 0) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """The sentence-consensus template and how it was chosen.

    Sentences (split at ``. `` / ``? `` / ``! ``, compared after R2Gen normalisation) are
    counted once per training report; the ``candidates`` most frequent are added one at a
    time, each placed by its mean relative position in the reports, keeping the one that
    raises corpus BLEU-4 against ``validation`` (a seeded sample of at most ``sample``)
    most, until none raises it. Without ``validation`` a seeded fifth of ``train`` is held
    out as the validation part (and left out of the counts)."""
    texts = {k: v for k, v in train.items() if v and v.strip()}
    if len(texts) < 2:
        raise DataError("the sentence-consensus template needs at least 2 training reports")
    rng = np.random.default_rng(seed)
    held_out = validation is None
    if held_out:
        keys = list(texts)
        part = set(rng.choice(len(keys), size=max(1, len(keys) // 5), replace=False).tolist())
        validation = {keys[i]: texts[keys[i]] for i in part}
        texts = {keys[i]: texts[keys[i]] for i in range(len(keys)) if i not in part}
    val = [v for v in validation.values() if v and v.strip()]
    if not val:
        raise DataError("the sentence-consensus template needs validation reports; none has text")
    refs = _cook([normalise_report(val[i]) for i in
                  rng.choice(len(val), size=min(sample, len(val)), replace=False)])  # fmt: skip
    freq: Counter[str] = Counter()
    surface: dict[str, Counter[str]] = {}
    position: dict[str, list[float]] = {}
    for text in texts.values():
        sentences = [x.strip() for x in _SENTENCE_END.split(text) if x.strip()]
        seen = set()
        for j, sentence in enumerate(sentences):
            key = normalise_report(sentence)
            if not key.strip(" ."):
                continue
            surface.setdefault(key, Counter())[sentence] += 1
            position.setdefault(key, []).append(j / max(1, len(sentences) - 1))
            if key not in seen:
                seen.add(key)
                freq[key] += 1
    pool = [k for k, _ in freq.most_common(candidates)]
    where = {k: float(np.mean(position[k])) for k in pool}
    chosen: list[str] = []
    best = 0.0
    while True:
        trials = []
        for k in pool:
            if k in chosen:
                continue
            order = sorted([*chosen, k], key=lambda x: where[x])
            trials.append((_bleu4(" ".join(order), refs), order))
        if not trials:
            break
        score, order = max(trials, key=lambda t: t[0])
        if score <= best:
            break
        best, chosen = score, order
    if not chosen:
        chosen = pool[:1]
    template = " ".join(surface[k].most_common(1)[0][0] for k in chosen)
    info = {"sentence_consensus": template, "sentence_consensus_val_bleu_4": best,
            "sentence_consensus_validation": ("a seeded fifth of the training reports"
                                              if held_out else "the validation split"),
            "sentence_consensus_n_validation": len(val), "sentence_consensus_candidates": len(pool)}
    return template, info


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
                     nearest: Mapping[str, str] | None = None,
                     validation: Mapping[str, str] | None = None) -> tuple[dict[str, dict[str, str]],
                                                                           dict[str, Any]]:  # fmt: skip
    """Per baseline, study id -> report, for ``study_ids``; and what was chosen (for the record).

    ``train`` must hold training-split reports only (a scored study's own report is never
    one of them); ``nearest`` adds the nearest-neighbour baseline when given; ``validation``
    (val-split reports, never scored ones) chooses the sentence-consensus template.
    """
    overlap = (set(train) | set(validation or {})) & set(study_ids)
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
    template, consensus = sentence_consensus(train, validation, seed=seed)
    out = {
        RANDOM: {sid: texts[i] for sid, i in zip(study_ids, picks)},
        MOST_FREQUENT: dict.fromkeys(study_ids, frequent),
        BEST_CONSTANT: dict.fromkeys(study_ids, constant),
        CONSENSUS: dict.fromkeys(study_ids, template),
    }
    if nearest is not None:
        out[NEAREST] = {sid: nearest[sid] for sid in study_ids}
    info = {"n_training_reports": len(texts), "most_frequent": frequent,
            "most_frequent_count": count, "best_constant": constant,
            "best_constant_train_bleu_4": bleu4, "seed": seed, **consensus}  # fmt: skip
    return out, info
