"""Language metrics of generated reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr, with intervals.

**Normalisation** (:func:`normalise_report`) is R2Gen's (Chen et al. 2020,
``modules/tokenizers.py``), so that figures compare with the report-generation literature,
which scores R2Gen-cleaned text with ``compute_scores`` (``modules/metrics.py``):

- ``iu_xray`` (default): ``..`` -> ``.`` (three passes), the list numbers ``1. `` / ``2. `` ...
  removed, lower case, split into sentences at ``". "``; in each sentence ``" / \\ '`` are
  deleted and so is every character of R2Gen's class ``[.,?;*!%^&_+():-\\[\\]{}]`` (which,
  being a range ``:-\\[``, also deletes ``< = > @``); the sentences are joined with ``" . "`` and
  a final ``" ."``: ``"The heart is normal. No effusion."`` -> ``"the heart is normal . no
  effusion ."``. Punctuation other than the sentence stops is dropped, not kept as tokens.
- ``mimic_cxr``: the same after R2Gen's MIMIC pre-pass (line breaks -> spaces, ``__`` -> ``_``,
  double spaces and ``..`` collapsed).

Tokens are then re-joined with single spaces (R2Gen decodes token ids that way). R2Gen also
truncates references to ``max_seq_length`` tokens (60 for IU X-ray) and maps rare words to
``<unk>``; neither is done here (both depend on R2Gen's training vocabulary). An empty text
stays empty.

**Scorers** are pycocoevalcap's (``Bleu(4)``, ``Meteor``, ``Rouge``, ``Cider``), fed the
normalised text directly (no PTB tokenizer, as R2Gen), 0-1 scale (CIDEr 0-10).

**Intervals**: a seeded percentile bootstrap over studies (:mod:`cxrfuse.generation.bootstrap`).
BLEU and CIDEr are corpus-level, so each replicate recomputes them on the resampled study set
(the n-gram statistics are cooked once by pycocoevalcap; BLEU's corpus sums go through
pycocoevalcap's ``BleuScorer``, CIDEr's tf-idf cosines are recomputed with each replicate's
document frequencies in sparse matrices, checked against ``CiderScorer`` in the tests); ROUGE-L is the mean
of per-study scores, so the per-study scores are resampled; METEOR's per-study alignment
statistics are computed once by the METEOR jar and the jar's ``EVAL`` scores each replicate
from the count-weighted sum of those statistics (METEOR's corpus score is computed from summed
statistics, so this is the corpus METEOR of the resample, as ``Meteor.compute_score`` on the
resampled list gives; the tests check it).
METEOR needs Java: without ``java`` on PATH it is reported as None with the reason, never 0.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrfuse.generation.bootstrap import estimate, replicate_weights
from cxrfuse.problems import CxrfuseError, DataError

if TYPE_CHECKING:
    from scipy import sparse

STYLES = ("iu_xray", "mimic_cxr")
NORMALISATIONS = {"r2gen-iu": "iu_xray", "r2gen-mimic": "mimic_cxr", "none": None}
"""``--normalise`` choices: R2Gen's IU X-ray cleaning, its MIMIC-CXR cleaning, or none
(whitespace collapsed only)."""
LANGUAGE_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")
_R2GEN_DROP = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def _r2gen_prepass(text: str, style: str) -> str:
    if style == "mimic_cxr":
        text = text.replace("\n", " ")
        for _ in range(7):
            text = text.replace("__", "_")
        for _ in range(6):
            text = text.replace("  ", " ")
        for _ in range(8):
            text = text.replace("..", ".")
    elif style == "iu_xray":
        for _ in range(3):
            text = text.replace("..", ".")
    else:
        raise CxrfuseError(f"unknown normalisation style {style!r}; choose from {list(STYLES)}")
    text = text.replace("1. ", "")
    for n in range(2, 6):
        text = text.replace(f". {n}. ", ". ")
    for n in range(2, 6):
        text = text.replace(f" {n}. ", ". ")
    return text


def normalise_report(text: str, style: str = "iu_xray") -> str:
    """R2Gen's ``clean_report_iu_xray`` (or ``_mimic_cxr``), tokens joined by single spaces."""
    if not isinstance(text, str):
        raise DataError(f"report text must be a string, got {type(text).__name__}")
    if not text.strip():
        return ""
    sentences = _r2gen_prepass(text, style).strip().lower().split(". ")
    cleaned = [
        _R2GEN_DROP.sub("", s.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip())
        for s in sentences
    ]
    return " ".join((" . ".join(cleaned) + " .").split())


def meteor_jar() -> Path | None:
    """The METEOR 1.5 jar that pycocoevalcap ships, if installed."""
    try:
        from pycocoevalcap.meteor import meteor as module
    except ImportError:
        return None
    jar = Path(module.__file__).parent / module.METEOR_JAR
    return jar if jar.exists() else None


def java_available() -> bool:
    """Whether METEOR can run: ``java`` on PATH and pycocoevalcap's jar present."""
    return shutil.which("java") is not None and meteor_jar() is not None


def normalisation_style(name: str) -> str | None:
    """The :data:`STYLES` entry of a ``--normalise`` name (None: no normalisation)."""
    key = name.strip().lower().replace("_", "-")
    if key not in NORMALISATIONS:
        raise CxrfuseError(f"unknown normalisation {name!r}; choose from {list(NORMALISATIONS)}")
    return NORMALISATIONS[key]


# ----------------------------------------------------------------------------- scorers
def _bleu(gts: dict[str, list[str]], res: dict[str, list[str]], ids: list[str],
          weights: np.ndarray) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Corpus BLEU-1..4 (pycocoevalcap ``Bleu(4)``) and its replicates.

    BLEU is a function of the corpus sums of each study's test length, closest reference
    length and clipped n-gram counts, so a replicate is scored by pycocoevalcap's
    ``BleuScorer`` on one entry holding the count-weighted sums. Also returns each study's
    sentence BLEU-4 (pycocoevalcap's per-study scores)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    point, per_study = Bleu(4).compute_score(gts, {i: res[i] for i in ids}, verbose=0)
    cooked = BleuScorer(n=4)
    for i in ids:
        cooked += (res[i][0], gts[i])
    stats = np.array([
        [c["testlen"], min((abs(r - c["testlen"]), r) for r in c["reflen"])[1], *c["guess"], *c["correct"]]
        for c in cooked.ctest
    ], dtype=np.float64)
    samples = []
    for total in weights @ stats:
        scorer = BleuScorer(n=4, special_reflen=float(total[1]))
        scorer.ctest = [{"testlen": float(total[0]), "reflen": None,
                         "guess": list(total[2:6]), "correct": list(total[6:10])}]
        scorer.crefs = [None]
        samples.append(scorer.compute_score(option="closest", verbose=0)[0])
    return ([float(x) for x in point], np.asarray(samples, dtype=np.float64).reshape(-1, 4),
            np.asarray(per_study[3], dtype=np.float64))


def _cider(gts: dict[str, list[str]], res: dict[str, list[str]], ids: list[str],
           weights: np.ndarray, chunk: int = 32) -> tuple[float, np.ndarray, np.ndarray]:
    """Corpus CIDEr (pycocoevalcap ``Cider``) and its replicates.

    Each replicate has its own document frequencies (counted over its resampled reference
    sets, duplicates included, as ``CiderScorer`` would on the resampled list), so the
    tf-idf cosine of every (study, reference) pair is recomputed; it is done with sparse
    matrices over the n-grams pycocoevalcap's ``precook`` extracted. Since idf >= 0,
    ``min(tf_h idf, tf_r idf) tf_r idf = min(tf_h, tf_r) tf_r idf^2``; the tests check the
    replicates against ``CiderScorer`` run on the resampled lists. Also returns each study's
    CIDEr (with the document frequencies of all studies, as pycocoevalcap's per-study scores)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    from scipy import sparse  # here, not at the top: scipy costs start-up (issue 22)

    point, per_study_point = Cider().compute_score(gts, res)
    cooked = CiderScorer(n=4, sigma=6.0)
    for i in ids:
        cooked += (res[i][0], gts[i])
    vocab: dict[tuple[str, ...], int] = {}
    for refs, test in zip(cooked.crefs, cooked.ctest):
        for counts_ in (*refs, test):
            for g in counts_:
                vocab.setdefault(g, len(vocab))
    order = np.zeros(len(vocab), dtype=np.int64)
    for g, k in vocab.items():
        order[k] = len(g) - 1
    n = len(ids)
    presence, hyp, pair_min, pair_ref = [], [], [], []
    pair_study, delta = [], []
    for j, (refs, test) in enumerate(zip(cooked.crefs, cooked.ctest)):
        presence += [(j, vocab[g]) for g in {g for r in refs for g in r}]
        hyp += [(j, vocab[g], c) for g, c in test.items()]
        hyp_len = sum(c for g, c in test.items() if len(g) == 2)
        for ref in refs:
            p = len(pair_study)
            pair_study.append(j)
            delta.append(hyp_len - sum(c for g, c in ref.items() if len(g) == 2))
            pair_ref += [(p, vocab[g], c) for g, c in ref.items()]
            pair_min += [(p, vocab[g], min(c, ref[g]) * ref[g]) for g, c in test.items() if g in ref]
    g_total = len(vocab)
    n_pairs = len(pair_study)

    def matrix(entries: list, rows: int, square: bool = False) -> sparse.csr_matrix:
        if not entries:
            return sparse.csr_matrix((rows, g_total))
        r, c, v = (np.array(x, dtype=np.float64) for x in zip(*entries))
        return sparse.csr_matrix((v ** 2 if square else v, (r.astype(int), c.astype(int))), shape=(rows, g_total))

    presence_m = matrix([(j, k, 1.0) for j, k in presence], n)
    by_order = [np.flatnonzero(order == k) for k in range(4)]
    hyp_sq = [matrix(hyp, n, square=True)[:, cols] for cols in by_order]
    ref_sq = [matrix(pair_ref, n_pairs, square=True)[:, cols] for cols in by_order]
    num = [matrix(pair_min, n_pairs)[:, cols] for cols in by_order]
    study = np.asarray(pair_study)
    penalty = np.exp(-(np.asarray(delta, dtype=np.float64) ** 2) / (2 * cooked.sigma ** 2))
    n_refs = np.bincount(study, minlength=n).astype(np.float64)
    samples = []
    for start in range(0, len(weights), chunk):
        w = weights[start:start + chunk]
        df = np.asarray(presence_m.T @ w.T)  # (G, b)
        idf2 = (np.log(float(n)) - np.log(np.maximum(1.0, df))) ** 2
        total = np.zeros((n_pairs, len(w)))
        for k, cols in enumerate(by_order):
            v = idf2[cols]
            numerator = np.asarray(num[k] @ v)
            norm = np.sqrt(np.asarray(hyp_sq[k] @ v))[study] * np.sqrt(np.asarray(ref_sq[k] @ v))
            with np.errstate(divide="ignore", invalid="ignore"):
                total += np.where(norm > 0, numerator / norm, numerator)
        pair_score = total / 4 * penalty[:, None]
        per_study = 10.0 * np.asarray(sparse.csr_matrix(
            (np.ones(n_pairs), (study, np.arange(n_pairs))), shape=(n, n_pairs)) @ pair_score) / n_refs[:, None]
        samples.extend((w * per_study.T).sum(axis=1) / w.sum(axis=1))
    return float(point), np.asarray(samples, dtype=np.float64), np.asarray(per_study_point, dtype=np.float64)


def _rouge(gts: dict[str, list[str]], res: dict[str, list[str]], ids: list[str],
           weights: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean ROUGE-L (pycocoevalcap ``Rouge``); replicates resample the per-study scores."""
    from pycocoevalcap.rouge.rouge import Rouge

    point, per_study = Rouge().compute_score(gts, {i: res[i] for i in ids})
    per_study = np.asarray(per_study, dtype=np.float64)
    samples = weights @ per_study / np.maximum(weights.sum(axis=1), 1.0)
    return float(point), np.asarray(samples, dtype=np.float64), per_study


def _meteor_eval(scorer: Any, stats: list[str], segments: list[float] | None = None) -> float:
    """The jar's corpus METEOR of per-study statistics lines (as ``Meteor.compute_score``);
    the per-study scores are appended to ``segments`` when given."""
    process = scorer.meteor_p
    process.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
    process.stdin.flush()
    for _ in stats:
        line = process.stdout.readline()
        if segments is not None:
            segments.append(float(line.strip()))
    return float(process.stdout.readline().strip())


def _meteor_sum(stats: np.ndarray, weights: np.ndarray) -> str:
    """One statistics line equal, for the jar's aggregation, to the weighted list of lines.

    METEOR 1.5 aggregates segments by adding every field of their statistics
    (``MeteorStats.addStats``), except that a perfectly matched segment (all words matched,
    one chunk) adds no chunk; those chunks are zeroed before summing."""
    return " ".join(repr(float(x)) for x in weights @ stats)


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]], ids: list[str],
            weights: np.ndarray, scorer: Any = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Corpus METEOR (pycocoevalcap ``Meteor``: alignment statistics per study, then the
    jar's ``EVAL``) and its replicates (the jar's ``EVAL`` of each replicate's summed line).
    A given ``scorer`` (a running ``Meteor``) is used and left running."""
    from pycocoevalcap.meteor.meteor import Meteor

    own = scorer is None
    scorer = Meteor() if own else scorer
    try:
        with scorer.lock:
            lines = [scorer._stat(res[i][0], gts[i]) for i in ids]
            segments: list[float] = []
            point = _meteor_eval(scorer, lines, segments)
            stats = np.array([[float(x) for x in line.split()] for line in lines])
            matched = (stats[:, 4:20:2].sum(axis=1) == stats[:, 0]) & (stats[:, 5:20:2].sum(axis=1) == stats[:, 1])
            stats[matched & (stats[:, 20] == 1), 20] = 0.0
            samples = [_meteor_eval(scorer, [_meteor_sum(stats, w)]) for w in weights]
    except (OSError, ValueError, IndexError) as exc:
        process = scorer.meteor_p
        process.kill()
        detail = (process.stderr.read() or b"").decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{exc}; java said: {detail[-1] if detail else 'nothing'}") from exc
    finally:
        if own:
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return point, np.asarray(samples, dtype=np.float64), np.asarray(segments, dtype=np.float64)


# ----------------------------------------------------------------------------- public API
def _check_ids(generated: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    gen, ref = set(generated), set(references)
    if not gen:
        raise DataError("no generated reports to score")
    if gen != ref:
        extra, missing = sorted(gen - ref), sorted(ref - gen)
        parts = []
        if extra:
            parts.append(f"{len(extra)} generated id(s) have no reference (e.g. {extra[:3]})")
        if missing:
            parts.append(f"{len(missing)} reference id(s) have no generated report (e.g. {missing[:3]})")
        raise DataError("generated and reference ids differ: " + "; ".join(parts))
    return list(generated)


def _prepared(generated: Mapping[str, str], references: Mapping[str, Sequence[str]],
              ids: list[str], normalise: bool, style: str) -> tuple[dict, dict]:
    clean = (lambda t: normalise_report(t, style)) if normalise else (lambda t: " ".join(t.split()))
    res = {i: [clean(generated[i]).replace("|", " ")] for i in ids}
    gts = {}
    for i in ids:
        refs = [clean(r).replace("|", " ") for r in references[i]]
        refs = [r for r in refs if r]
        if not refs:
            raise DataError(f"study {i!r}: every reference text is empty")
        gts[i] = refs
    return gts, res


def language_scores(
    generated: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    n_boot: int = 200,
    seed: int = 0,
    *,
    normalise: bool = True,
    style: str = "iu_xray",
    meteor: bool = True,
) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of ``generated`` against ``references``.

    Both map study id -> text (references: a list of texts, several allowed); the id sets must
    be equal. Returns ``{metric: {"value", "low", "high"}}`` for :data:`LANGUAGE_KEYS`
    (``meteor`` None when it could not run), ``n_studies``, ``n_boot``, ``seed``,
    ``normalisation`` and ``notes`` (why METEOR is missing, ...). ``n_boot=0`` skips the
    intervals. Also ``_samples`` (metric -> its bootstrap replicates, for paired differences)
    and ``_per_study`` (metric -> each study's score: sentence BLEU-4, METEOR, ROUGE-L, CIDEr),
    in the order of ``generated``; neither goes into scores.json.
    """
    ids = _check_ids(generated, references)
    gts, res = _prepared(generated, references, ids, normalise, style)
    weights = replicate_weights(len(ids), n_boot, seed)
    out: dict[str, Any] = {}
    notes: list[str] = []
    samples: dict[str, np.ndarray] = {}
    per_study: dict[str, np.ndarray] = {}
    bleu, bleu_samples, per_study["bleu_4"] = _bleu(gts, res, ids, weights)
    for k in range(4):
        out[f"bleu_{k + 1}"] = estimate(bleu[k], bleu_samples[:, k])
        samples[f"bleu_{k + 1}"] = bleu_samples[:, k]
    out["meteor"] = None
    if not meteor:
        notes.append("METEOR not computed (switched off)")
    elif not java_available():
        notes.append("METEOR not computed: no `java` on PATH (pycocoevalcap runs METEOR 1.5 as a "
                     "Java subprocess; install a Java runtime)" if meteor_jar() else
                     "METEOR not computed: pycocoevalcap's meteor-1.5.jar is missing")
    else:
        try:
            value, samples["meteor"], per_study["meteor"] = _meteor(gts, res, ids, weights)
            out["meteor"] = estimate(value, samples["meteor"])
        except (OSError, RuntimeError) as exc:
            notes.append(f"METEOR not computed: the METEOR jar failed ({exc})")
    for key, scorer in (("rouge_l", _rouge), ("cider", _cider)):
        value, samples[key], per_study[key] = scorer(gts, res, ids, weights)
        out[key] = estimate(value, samples[key])
    out.update(
        n_studies=len(ids), n_boot=n_boot, seed=seed,
        normalisation=f"R2Gen clean_report_{style}" if normalise else "whitespace only",
        notes=notes, _samples=samples, _per_study=per_study,
    )
    return out

__all__ = [
    "LANGUAGE_KEYS",
    "NORMALISATIONS",
    "STYLES",
    "java_available",
    "language_scores",
    "meteor_jar",
    "normalisation_style",
    "normalise_report",
]
