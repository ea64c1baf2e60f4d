"""Report generation by retrieval: each study gets the report of its nearest *training* studies.

Two spaces to search:

* **an embedding store** (:func:`store_vectors`): the study's image embedding (the mean of its
  views) from any registered image encoder, optionally concatenated with the embedding of its
  indication (the text written before the image is read: "query by image plus indication");
  neighbours are training studies by cosine similarity in that space;
* **a CLIP run** (:func:`clip_vectors`): the study's image in the CLIP space against the
  training reports' embeddings (cross-modal, as CXR-RePaiR, Endo et al. 2021).

From the ``k`` nearest training studies the report is chosen by ``consensus``: ``top1`` (the
nearest), ``medoid`` (the neighbour report most similar, by tf-idf cosine, to the other
neighbours: damps one-off neighbours) or ``sentences`` (the sentences that at least half of the
neighbour reports share, in the order they first appear; the medoid when none do). Only
training studies form the bank: a val or test report is never retrievable.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from cxrfuse.clip.embed import load_run as load_clip_run
from cxrfuse.data.manifest import Manifest
from cxrfuse.encoders import create_image_encoder, create_text_encoder
from cxrfuse.generation.baselines import manifest_reports
from cxrfuse.generation.language import normalise_report
from cxrfuse.problems import DataError
from cxrfuse.store import embed_images, embed_texts
from cxrfuse.text import TextConfig
from cxrfuse.vocab import PRE_READ_SECTIONS

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

Consensus = Literal["top1", "medoid", "sentences"]
CONSENSUS = ("top1", "medoid", "sentences")


@dataclass
class SearchSpace:
    """Query vectors of the studies to write reports for and the training bank to search."""

    query_ids: list[str]
    query: np.ndarray  # (Q, D), unit rows
    bank_ids: list[str]
    bank: np.ndarray  # (N, D), unit rows
    description: str
    _top: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def top_k(self, k: int, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(similarities, bank rows) of the ``k`` nearest bank rows of every query, best first.

        Streams the queries in blocks so that no more than ``block`` x bank similarities exist
        at once (default: about 16 M, 64 MB), never the dense queries x bank matrix; the
        largest ``k`` asked is kept, so a later smaller ``k`` (the nearest-report baseline)
        costs nothing.
        """
        if self._top is not None and self._top[1].shape[1] >= k:
            return self._top[0][:, :k], self._top[1][:, :k]
        bank = torch.from_numpy(self.bank)
        n = max(1, len(self.bank_ids))
        step = block or max(1, SIMILARITY_BUDGET // n)
        sims, rows = [], []
        for lo in range(0, len(self.query_ids), step):
            part = torch.from_numpy(self.query[lo:lo + step]) @ bank.T
            top_sim, top = part.topk(k, dim=1)
            sims.append(top_sim)
            rows.append(top)
        if not sims:
            empty = torch.zeros((0, k))
            return empty, empty.long()
        self._top = (torch.cat(sims), torch.cat(rows))
        return self._top


SIMILARITY_BUDGET = 1 << 24
"""Query x bank similarities computed at once by :meth:`SearchSpace.top_k` (float32: 256 MB)."""

_REPORTS: dict[int, tuple] = {}


def study_reports(manifest: Manifest) -> tuple[dict[str, str], dict[str, str]]:
    """(every study's, the training split's) :func:`~cxrfuse.generation.baselines.manifest_reports`,
    built once per manifest table: store vectors, the retrieval, its references, the baselines
    and the nearest-report baseline share them."""
    df = manifest.df
    cached = _REPORTS.get(id(df))
    if cached is None or cached[0]() is not df or cached[1] != len(df):
        every = manifest_reports(manifest)
        train = _split_ids(manifest, ["train"])
        _REPORTS.clear()  # one manifest at a time: the table is held weakly, the texts are not
        cached = _REPORTS[id(df)] = (weakref.ref(df), len(df), every,
                                     {s: t for s, t in every.items() if s in train})
    return cached[2], cached[3]


def train_reports(manifest: Manifest) -> dict[str, str]:
    """The training split's reports (see :func:`study_reports`)."""
    return study_reports(manifest)[1]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def _split_ids(manifest: Manifest, splits: Sequence[str]) -> set[str]:
    return set(manifest.df.loc[manifest.df["split"].isin(list(splits)), "study_id"].astype(str))


def store_vectors(
    manifest: Manifest,
    store_dir: str | Path,
    image_encoder: str = "efficientnet-lite0",
    *,
    split: str = "test",
    weights: str = "default",
    input_size: int | None = None,
    indication_encoder: str | None = None,
    indication_weight: float = 0.5,
    progress: bool = True,
) -> SearchSpace:
    """Study vectors from the embedding store (embedding what it lacks): the mean image view
    embedding, optionally with ``indication_weight`` x the indication's text embedding."""
    if manifest.df["split"].isna().all():
        raise DataError("the manifest has no split; run `cxrfuse split` first (the bank is the "
                        "training split)")  # fmt: skip
    encoder = create_image_encoder(image_encoder, weights=weights, input_size=input_size)
    images = embed_images(manifest, encoder, store_dir, progress=progress)
    X, has_image = images.study_matrix(manifest, mode="mean")
    X = unit_rows(X)
    description = f"image embeddings ({image_encoder}, mean of views)"
    if indication_encoder is not None:
        text_encoder = create_text_encoder(indication_encoder)
        texts = embed_texts(manifest, text_encoder, TextConfig(sections=list(PRE_READ_SECTIONS)),
                            store_dir)  # fmt: skip
        T, _ = texts.study_matrix(manifest)
        X = unit_rows(np.concatenate([X, indication_weight * unit_rows(T)], axis=1))
        description += f" + {indication_weight:g} x indication ({indication_encoder})"
    ids = manifest.df["study_id"].astype(str).to_numpy()
    reports = train_reports(manifest)
    train = _split_ids(manifest, ["train"])
    bank_rows = [i for i, s in enumerate(ids) if s in train and s in reports and has_image[i]]
    queries = _split_ids(manifest, [split])
    query_rows = [i for i, s in enumerate(ids) if s in queries and has_image[i]]
    if not bank_rows:
        raise DataError("no training study has both an image embedding and report text")
    return SearchSpace([ids[i] for i in query_rows], X[query_rows], [ids[i] for i in bank_rows],
                       X[bank_rows], description)  # fmt: skip


def clip_vectors(run_dir: str | Path, *, split: str = "test", progress: bool = True
                 ) -> tuple[SearchSpace, SearchSpace, Manifest]:  # fmt: skip
    """In a CLIP run's joint space: the split's images against the training reports
    (the generator), and against the training images (the nearest-neighbour baseline)."""
    run = load_clip_run(run_dir, progress=progress)
    image, _, pairs = run.embed_split(split)
    train_image, _, train_pairs = run.embed_split("train")
    reports = train_reports(run.manifest)
    bank_pairs = run.pairs("train")
    keep = [i for i, s in enumerate(bank_pairs.study_ids) if str(s) in reports]
    if not keep:
        raise DataError(f"{run_dir}: no training study has findings/impression text")
    bank = run.embed_texts([bank_pairs.texts[i] for i in keep]).float()
    query_ids, query = [str(s) for s in pairs.study_ids], unit_rows(image.numpy())
    space = SearchSpace(query_ids, query, [str(bank_pairs.study_ids[i]) for i in keep],
                        unit_rows(bank.numpy()), f"CLIP run {Path(run_dir).name}: image -> report")
    rows = [i for i, s in enumerate(train_pairs.study_ids) if str(s) in reports]
    images = SearchSpace(query_ids, query, [str(train_pairs.study_ids[i]) for i in rows],
                         unit_rows(train_image.numpy()[rows]),
                         f"CLIP run {Path(run_dir).name}: image -> image")  # fmt: skip
    return space, images, run.manifest


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in text.replace("\n", " ").split(". ") if s.strip(" .")]


def consensus_sentences(texts: Sequence[str]) -> str | None:
    """The sentences at least half of ``texts`` share (compared after R2Gen normalisation), in
    the order they first appear; None when no sentence is shared."""
    seen: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for text in texts:
        keys = set()
        for sentence in _sentences(text):
            key = normalise_report(sentence)
            seen.setdefault(key, sentence.rstrip("."))
            keys.add(key)
        counts.update(keys)
    shared = [seen[k] for k in seen if counts[k] * 2 >= len(texts)]
    return ". ".join(shared) + "." if shared else None


def _medoid_idf(bank_texts: Sequence[str], neighbour_texts: Sequence[str]) -> TfidfVectorizer:
    """The tf-idf a fit on the whole bank gives, for the neighbours' terms only.

    A ``TfidfVectorizer`` fitted on the bank keeps every uni- and bigram of it; the medoid only
    ever transforms neighbour reports, whose terms are bank terms. So the vocabulary is the
    neighbours' terms and their document frequencies are counted over the bank in one
    streaming pass (binary counts, blocks of 20k reports): the same vectors, a fraction of the
    memory.
    """
    # here, not at the top: scikit-learn costs start-up (issue 22)
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

    vocabulary = CountVectorizer(ngram_range=(1, 2)).fit(neighbour_texts).vocabulary_
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, vocabulary=vocabulary)
    counter = CountVectorizer(ngram_range=(1, 2), vocabulary=vocabulary, binary=True)
    df = np.zeros(len(vocabulary), dtype=np.int64)
    for lo in range(0, len(bank_texts), 20_000):
        df += np.asarray(counter.transform(bank_texts[lo:lo + 20_000]).sum(axis=0)).ravel()
    n = len(bank_texts)
    vectorizer.idf_ = np.log((1 + n) / (1 + df)) + 1  # smooth_idf, as TfidfTransformer.fit
    return vectorizer


def choose_reports(space: SearchSpace, texts: dict[str, str], k: int = 1,
                   consensus: Consensus = "top1") -> pd.DataFrame:  # fmt: skip
    """One chosen training report per query: columns ``study_id``, ``generated``,
    ``source_study_id``, ``similarity``, ``neighbours``."""
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}")
    if consensus not in CONSENSUS:
        raise DataError(f"consensus {consensus!r} unknown; choose one of {list(CONSENSUS)}")
    leaked = set(space.query_ids) & set(space.bank_ids)
    if leaked:
        raise DataError(f"{len(leaked)} query studies are in the retrieval bank")
    k = min(k, len(space.bank_ids))
    top_sim, top = space.top_k(k)
    bank_texts = [texts[s] for s in space.bank_ids]
    vectorizer = None
    if consensus != "top1" and k > 1:
        used = sorted(set(top.reshape(-1).tolist()))
        vectorizer = _medoid_idf(bank_texts, [bank_texts[i] for i in used])
    rows = []
    for q, sid in enumerate(space.query_ids):
        picks = top[q].tolist()
        choice, text = 0, bank_texts[picks[0]]
        if vectorizer is not None:
            neighbours = [bank_texts[i] for i in picks]
            tf = vectorizer.transform(neighbours)
            choice = int(np.asarray((tf @ tf.T).sum(axis=1)).ravel().argmax())
            text = neighbours[choice]
            if consensus == "sentences":
                text = consensus_sentences(neighbours) or text
        rows.append({"study_id": sid, "generated": text,
                     "source_study_id": space.bank_ids[picks[choice]],
                     "similarity": float(top_sim[q, choice]),
                     "neighbours": ",".join(space.bank_ids[i] for i in picks)})  # fmt: skip
    return pd.DataFrame(rows)


def retrieve(space: SearchSpace, manifest: Manifest, *, k: int = 1,
             consensus: Consensus = "top1") -> pd.DataFrame:  # fmt: skip
    """Reports for the queries of ``space``, with ``split`` and ``reference`` (the study's own
    findings + impression) beside; queries without reference text are kept (reference "")."""
    frame = choose_reports(space, train_reports(manifest), k, consensus)
    own = study_reports(manifest)[0]
    split = dict(zip(manifest.df["study_id"].astype(str), manifest.df["split"]))
    frame.insert(1, "split", [split.get(s) for s in frame["study_id"]])
    frame.insert(3, "reference", [own.get(s, "") for s in frame["study_id"]])
    return frame


def nearest_reports(space: SearchSpace, manifest: Manifest) -> dict[str, str]:
    """The nearest-neighbour baseline: study id -> the nearest training study's report."""
    frame = choose_reports(space, train_reports(manifest), 1, "top1")
    return dict(zip(frame["study_id"], frame["generated"]))
