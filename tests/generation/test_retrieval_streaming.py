"""Streamed top-k, the medoid's neighbour-only idf and the reports built once choose exactly
the reports the dense search with a bank-wide tf-idf fit chose (``_reference`` below is a copy
of the former ``choose_reports``), on the bundled IU X-ray reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from cxrfuse.data import Manifest
from cxrfuse.data.splits import assign_splits
from cxrfuse.generation.baselines import manifest_reports
from cxrfuse.generation.retrieval import (
    SearchSpace,
    choose_reports,
    consensus_sentences,
    study_reports,
    train_reports,
    unit_rows,
)


def _reference(space: SearchSpace, texts: dict[str, str], k: int, consensus: str) -> pd.DataFrame:
    k = min(k, len(space.bank_ids))
    sim = torch.from_numpy(space.query) @ torch.from_numpy(space.bank).T
    top_sim, top = sim.topk(k, dim=1)
    bank_texts = [texts[s] for s in space.bank_ids]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(bank_texts) \
        if consensus != "top1" and k > 1 else None  # fmt: skip
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


@pytest.fixture(scope="module")
def split_iu(iu_manifest: Manifest) -> Manifest:
    return assign_splits(iu_manifest, (0.7, 0.1, 0.2), seed=0, task="normal-abnormal")


def _space(manifest: Manifest, dim: int = 32) -> tuple[SearchSpace, dict[str, str]]:
    reports = train_reports(manifest)
    ids = manifest.df["study_id"].astype(str).tolist()
    split = manifest.df["split"].tolist()
    vectors = unit_rows(np.random.default_rng(0).normal(size=(len(ids), dim)))
    bank = [i for i, s in enumerate(ids) if split[i] == "train" and s in reports]
    query = [i for i in range(len(ids)) if split[i] == "test"]
    return SearchSpace([ids[i] for i in query], vectors[query], [ids[i] for i in bank],
                       vectors[bank], "random"), reports  # fmt: skip


def test_reports_built_once_match_manifest_reports(split_iu: Manifest) -> None:
    every, train = study_reports(split_iu)
    assert train == manifest_reports(split_iu, ["train"]) and every == manifest_reports(split_iu)
    assert train_reports(split_iu) is train  # cached, not rebuilt
    assert 2000 < len(train) < len(every)


@pytest.mark.parametrize(("k", "consensus"), [(1, "top1"), (5, "top1"), (5, "medoid"),
                                              (7, "sentences")])
def test_same_reports_as_dense_search(split_iu: Manifest, k: int, consensus: str) -> None:
    space, texts = _space(split_iu)
    expected = _reference(space, texts, k, consensus)
    assert len(expected) > 700
    space.top_k(k, block=97)  # several blocks, the last one short
    got = choose_reports(space, texts, k, consensus)
    pd.testing.assert_frame_equal(got, expected)
    if consensus == "medoid":
        assert (got["source_study_id"] != got["neighbours"].str.split(",").str[0]).any()


def test_top_k_reused_for_a_smaller_k(split_iu: Manifest) -> None:
    space, _ = _space(split_iu)
    sims, rows = space.top_k(5, block=50)
    again = space.top_k(1)
    assert again[1].data_ptr() == rows.data_ptr()  # a view of the kept result, not a new search
    dense = (torch.from_numpy(space.query) @ torch.from_numpy(space.bank).T).topk(5, dim=1)
    assert torch.equal(rows, dense.indices) and torch.allclose(sims, dense.values)
