"""Modality attribution: exact two-player Shapley, leave-one-out, known answers, outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrfuse.explain.attribution import (
    ModalityInputs,
    ModalityMeans,
    modality_attribution,
    summarise_attribution,
    write_attribution,
)
from cxrfuse.fusion import build_head
from cxrfuse.problems import CxrfuseError

LABELS = ["a", "b"]


def _inputs(n: int, seed: int = 0) -> ModalityInputs:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, 2), bool)
    mask[::3, 1] = False  # some studies have one view
    text_mask = np.ones(n, bool)
    text_mask[::5] = False
    return ModalityInputs(rng.normal(size=(n, 2, 6)), mask, rng.normal(size=(n, 4)), text_mask)


def _head(kind: str = "concat-mlp"):
    torch.manual_seed(0)
    extra = {"hidden": [8], "dropout": 0.0} if kind == "concat-mlp" else {"projection_dim": 8}
    return build_head(kind, modalities=["image", "text"], n_outputs=2, image_dim=6, text_dim=4,
                      view_fusion="mean", n_views=2, **extra).eval()  # fmt: skip


@pytest.mark.parametrize("removal", ["mean", "zeros"])
@pytest.mark.parametrize("kind", ["concat-mlp", "late-fusion"])
def test_shapley_values_add_up(removal: str, kind: str) -> None:
    inputs = _inputs(20)
    means = ModalityMeans.of(_inputs(50, seed=1))
    table = modality_attribution(_head(kind), inputs, LABELS, removal=removal, means=means)
    assert len(table) == 20 * 2 and table.attrs["removal"] == removal
    total = table["shapley_image"] + table["shapley_text"]
    np.testing.assert_allclose(total, table["p"] - table["p_without_both"], atol=1e-6)
    np.testing.assert_allclose(table["loo_image"], table["p"] - table["p_without_image"])
    # exact two-player Shapley: LOO of one player plus half the interaction
    np.testing.assert_allclose(
        table["shapley_image"], table["loo_image"] - 0.5 * table["interaction"], atol=1e-6
    )


def test_a_model_that_ignores_the_report_gets_no_text_attribution() -> None:
    head = build_head("concat-mlp", modalities=["image", "text"], n_outputs=2, image_dim=6,
                      text_dim=4, view_fusion="mean", n_views=2, hidden=[], dropout=0.0)  # fmt: skip
    with torch.no_grad():
        head.mlp[0].weight[:, 6:] = 0.0  # the text columns of the linear layer
    inputs = _inputs(30)
    table = modality_attribution(head, inputs, LABELS, removal="zeros")
    assert np.abs(table["shapley_text"]).max() < 1e-7
    summary = summarise_attribution(table).set_index("label")
    assert (summary["image_share"] == 1.0).all() and (summary["text_share"] == 0.0).all()


def test_mean_removal_keeps_the_view_masks() -> None:
    from cxrfuse.explain.attribution import _without

    inputs = _inputs(6)
    means = ModalityMeans.of(inputs)
    removed = _without(inputs, "image", "mean", means)
    np.testing.assert_array_equal(removed.image_mask, inputs.image_mask)
    assert np.allclose(removed.image[0, 0], means.image) and not removed.image[0, 1].any()
    np.testing.assert_array_equal(removed.text, inputs.text)


def test_errors_and_files(tmp_path) -> None:
    inputs = _inputs(10)
    image_only = build_head("concat-mlp", modalities=["image"], n_outputs=2, image_dim=6)
    with pytest.raises(CxrfuseError, match="fused model"):
        modality_attribution(image_only, inputs, LABELS, removal="zeros")
    with pytest.raises(CxrfuseError, match="training means"):
        modality_attribution(_head(), inputs, LABELS)
    with pytest.raises(CxrfuseError, match="number of studies"):
        ModalityInputs(inputs.image, inputs.image_mask, inputs.text[:3], inputs.text_mask[:3])
    table = modality_attribution(_head(), inputs, LABELS, removal="zeros",
                                 study_ids=[f"s{i}" for i in range(10)])  # fmt: skip
    paths = write_attribution(table, tmp_path)
    assert pd.read_csv(paths["table"])["study_id"].iloc[0] == "s0"
    assert "zeros with its mask False" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 1000


def test_training_means_of_run_arrays_equal_those_of_the_dense_inputs(tmp_path) -> None:
    """``ModalityMeans.of_run_arrays`` (serve, ``cxrfuse attribute``) gives the numbers of
    ``ModalityMeans.of`` the train split's padded inputs, for attention views held unpadded."""
    from cxrfuse.explain import ModalityInputs, ModalityMeans
    from cxrfuse.store import PaddedViews, StudyArrays

    rng = np.random.default_rng(0)
    n, dim = 300, 8
    counts = rng.integers(0, 4, size=n)  # some studies without any view
    vectors = rng.normal(size=(int(counts.sum()), dim)).astype(np.float32)
    views = PaddedViews(vectors, np.concatenate([[0], np.cumsum(counts)]), 3)
    split = rng.choice(np.array(["train", "val", "test"], dtype=object), size=n)
    text = rng.normal(size=(n, 5)).astype(np.float32)
    text_mask = rng.random(n) > 0.2
    ids = np.array([f"s{i}" for i in range(n)], dtype=object)
    arrays = StudyArrays(ids, ids, split, np.zeros((n, 1), np.float32), ["a"], views,
                         views.mask(), text, text_mask)  # fmt: skip
    rows = arrays.indices("train")
    dense = ModalityMeans.of(ModalityInputs(np.asarray(views)[rows], views.mask()[rows],
                                            text[rows], text_mask[rows]))  # fmt: skip
    got = ModalityMeans.of_run_arrays(arrays)
    np.testing.assert_array_equal(got.image, dense.image)
    np.testing.assert_array_equal(got.text, dense.text)
