"""Study assembly (``store.assemble``) gives the arrays of the pre-streaming code, for every
view mode, on the bundled IU X-ray manifest (the demo's studies and views: 1 to 5 views a
study, PA / AP / LATERAL / LL / UNKNOWN) with stored vectors in memory-mapped shards, some
images never embedded and some reports empty.

The reference below is the assembly as it was before it streamed (per-study Python lists,
the shards concatenated in RAM, every study padded to the widest one), copied here so the
comparison does not depend on the code under test. ``mean`` is the one layout that changed
on purpose: the stored array holds the mean of each study's views in one slot, computed with
the head's own mean-fusion operations (so the head's outputs are bit for bit the same), not
every view padded to the widest study, so a 12-view study no longer widens every row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.manifest import Manifest
from cxrfuse.data.splits import assign_splits
from cxrfuse.data.views import view_slots
from cxrfuse.fusion import build_head
from cxrfuse.store import ImageEmbeddings, PaddedViews, TextEmbeddings, assemble
from cxrfuse.vocab import SPLITS

DIM, TEXT_DIM = 24, 12
TASKS = ("normal-abnormal", "multilabel")


# ---- the reference: the assembly before it streamed ---------------------------------------


def _ref_study_slots(store: ImageEmbeddings, manifest: Manifest, mode: str):
    vectors = np.concatenate(store.shards, axis=0)
    rows: dict[str, dict[str, int]] = {}
    for i, (sid, iid) in enumerate(zip(store.study_ids, store.image_ids)):
        rows.setdefault(sid, {})[iid] = i
    per_study = []
    for sid, views in zip(manifest.df["study_id"], manifest.df["views"]):
        known = rows.get(str(sid), {})
        items = [(str(v["view"]), known[str(v["image_id"])])
                 for v in views if str(v["image_id"]) in known]  # fmt: skip
        layout = view_slots([view for view, _ in items], mode)
        per_study.append([None if i is None else items[i][1] for i in layout])
    width = max([len(slots) for slots in per_study] + [len(view_slots([], mode)), 1])
    X = np.zeros((len(per_study), width, vectors.shape[1]), dtype=np.float32)
    mask = np.zeros((len(per_study), width), dtype=bool)
    for i, slots in enumerate(per_study):
        for j, row in enumerate(slots):
            if row is not None:
                X[i, j], mask[i, j] = vectors[row], True
    return X, mask


def _ref_text_matrix(text: TextEmbeddings, manifest: Manifest):
    rows = {sid: i for i, sid in enumerate(text.study_ids)}
    X = np.zeros((len(manifest), text.vectors.shape[1]), dtype=np.float32)
    mask = np.zeros(len(manifest), dtype=bool)
    for i, sid in enumerate(manifest.df["study_id"]):
        row = rows.get(str(sid))
        if row is not None:
            X[i], mask[i] = text.vectors[row], text.mask[row]
    return X, mask


def _ref_assemble(manifest: Manifest, task: str, image, views: str, text) -> dict[str, np.ndarray]:
    y = manifest.label_matrix(task)
    split = manifest.df["split"].to_numpy(dtype=object)
    keep = np.flatnonzero(np.isin(split, SPLITS) & (~np.isnan(y)).any(axis=1))
    X, mask = _ref_study_slots(image, manifest, views)
    T, tmask = _ref_text_matrix(text, manifest)
    return {"study_ids": manifest.df["study_id"].to_numpy(dtype=object)[keep],
            "patient_ids": manifest.df["patient_id"].to_numpy(dtype=object)[keep],
            "split": split[keep], "y": y.astype(np.float32)[keep],
            "image": X[keep], "image_mask": mask[keep], "text": T[keep], "text_mask": tmask[keep]}


def _ref_mean(X: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The reference's ``study_matrix(mode="mean")``."""
    count = mask.sum(1)
    means = np.zeros((len(X), X.shape[2]), dtype=np.float32)
    for i in np.flatnonzero(count):
        means[i] = X[i, mask[i]].mean(0)
    return means


# ---- stores of random vectors in the layout embed_images / embed_texts write ---------------


def _stores(manifest: Manifest, folder: Path, *, shard: int = 1000, dtype: str = "float32",
            seed: int = 0) -> tuple[ImageEmbeddings, TextEmbeddings]:  # fmt: skip
    """Every view embedded except every 17th (a failed decode), in shards of ``shard`` rows
    saved as .npy and memory-mapped; every 23rd report empty (zeros, mask False)."""
    rng = np.random.default_rng(seed)
    records = [(str(sid), str(v["image_id"]), str(v["view"]))
               for sid, views in zip(manifest.df["study_id"], manifest.df["views"])
               for v in views]  # fmt: skip
    records = [r for k, r in enumerate(records) if k % 17 != 5]
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, len(records), shard)):
        n = min(shard, len(records) - start)
        np.save(folder / f"images-{k:05d}.npy", rng.normal(size=(n, DIM)).astype(dtype))
        shards.append(np.load(folder / f"images-{k:05d}.npy", mmap_mode="r"))
    image = ImageEmbeddings(folder, shards, [r[1] for r in records], [r[0] for r in records],
                            [r[2] for r in records], {"dim": DIM, "dtype": dtype})  # fmt: skip
    ids = [str(s) for s in manifest.df["study_id"]][::-1]  # another order than the manifest's
    ids = [s for k, s in enumerate(ids) if k % 31 != 3]  # some studies never embedded
    mask = np.array([k % 23 != 1 for k in range(len(ids))])
    vectors = rng.normal(size=(len(ids), TEXT_DIM)).astype(np.float32) * mask[:, None]
    np.save(folder / "texts.npy", vectors)
    text = TextEmbeddings(folder, np.load(folder / "texts.npy", mmap_mode="r"), ids, mask,
                          [""] * len(ids))  # fmt: skip
    return image, text


@pytest.fixture(scope="module")
def iu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, ImageEmbeddings, TextEmbeddings]:
    manifest, _ = ingest_iu_xray()
    manifest = assign_splits(manifest, seed=0)
    image, text = _stores(manifest, tmp_path_factory.mktemp("iu-store"))
    return manifest, image, text


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("views", ["frontal", "concat", "attention", "mean"])
def test_assembled_arrays_match_the_reference(iu, views: str, task: str) -> None:
    manifest, image, text = iu
    ref = _ref_assemble(manifest, task, image, views, text)
    arrays = assemble(manifest, task, image=image, views=views, text=text)
    assert len(arrays) == len(ref["y"]) > 3000
    for name in ("study_ids", "patient_ids", "split", "y", "text", "text_mask"):
        got, want = getattr(arrays, name), ref[name]
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    if views == "attention":  # every view, held without the padding, read as the dense rows
        assert isinstance(arrays.image, PaddedViews) and arrays.image.shape == ref["image"].shape
        np.testing.assert_array_equal(np.asarray(arrays.image), ref["image"])
        np.testing.assert_array_equal(arrays.image_mask, ref["image_mask"])
        assert arrays.image.vectors.nbytes == ref["image_mask"].sum() * DIM * 4
        rows = np.array([5, 0, 5, len(ref["y"]) - 1])
        np.testing.assert_array_equal(arrays.image[rows], ref["image"][rows])
        np.testing.assert_array_equal(arrays.image[7], ref["image"][7])
        np.testing.assert_array_equal(arrays.image[10:20], ref["image"][10:20])
        got = arrays.image.index_select(0, torch.as_tensor(rows))
        np.testing.assert_array_equal(got.numpy(), ref["image"][rows])
        return
    if views != "mean":
        assert arrays.image.dtype == np.float32 and arrays.image_mask.dtype == np.bool_
        np.testing.assert_array_equal(arrays.image, ref["image"])
        np.testing.assert_array_equal(arrays.image_mask, ref["image_mask"])
        assert arrays.image.flags.c_contiguous
        return
    # mean: one slot holding the study's mean view, as the head's mean fusion computes it
    assert ref["image"].shape[1] == 5 and arrays.image.shape == (len(ref["y"]), 1, DIM)
    np.testing.assert_array_equal(arrays.image_mask[:, 0], ref["image_mask"].any(1))
    np.testing.assert_allclose(arrays.image[:, 0], _ref_mean(ref["image"], ref["image_mask"]),
                               rtol=0, atol=1e-6)  # fmt: skip
    torch.manual_seed(0)
    head = build_head("concat-mlp", modalities=["image", "text"], n_outputs=arrays.y.shape[1],
                      image_dim=DIM, text_dim=TEXT_DIM, view_fusion="mean", hidden=[16]).eval()
    with torch.no_grad():
        fused = head.views(torch.from_numpy(ref["image"]), torch.from_numpy(ref["image_mask"]))
        np.testing.assert_array_equal(arrays.image[:, 0], fused.numpy())
        old = head(torch.from_numpy(ref["image"]), torch.from_numpy(ref["image_mask"]),
                   torch.from_numpy(ref["text"]), torch.from_numpy(ref["text_mask"]))
        new = head(torch.from_numpy(arrays.image), torch.from_numpy(arrays.image_mask),
                   torch.from_numpy(arrays.text), torch.from_numpy(arrays.text_mask))
    np.testing.assert_array_equal(new.numpy(), old.numpy())  # the head reads the same vectors


def test_study_matrix_matches_the_reference(iu) -> None:
    """``study_matrix`` (used by retrieval and the CLIP side) in every mode, float16 shards."""
    manifest, _, _ = iu
    image, _ = _stores(manifest, Path(iu[1].path) / "f16", shard=333, dtype="float16", seed=1)
    X, mask = _ref_study_slots(image, manifest, "frontal")
    got = image.study_matrix(manifest, "frontal")
    np.testing.assert_array_equal(got[0], X[:, 0]) and np.testing.assert_array_equal(got[1], mask[:, 0])
    X, mask = _ref_study_slots(image, manifest, "mean")
    got = image.study_matrix(manifest, "mean")
    np.testing.assert_allclose(got[0], _ref_mean(X, mask), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(got[1], mask.any(1))
    X, mask = _ref_study_slots(image, manifest, "concat")
    got = image.study_matrix(manifest, "concat")
    np.testing.assert_array_equal(got[0], X.reshape(len(X), -1))
    np.testing.assert_array_equal(got[1], mask)
    X, mask = _ref_study_slots(image, manifest, "attention")
    got = image.study_matrix(manifest, "stack")
    np.testing.assert_array_equal(got[0], X)
    np.testing.assert_array_equal(got[1], mask)


def test_one_wide_study_does_not_widen_the_mean_array(iu, tmp_path: Path) -> None:
    """A 12-view study: the mean array stays one slot wide (it was 12 for every study)."""
    manifest, _, _ = iu
    df = manifest.df.head(200).copy()
    wide = [{"image_id": f"wide-{k}", "path": None, "view": "PA" if k % 2 else "LATERAL"}
            for k in range(12)]  # fmt: skip
    df.at[0, "views"] = wide
    df.at[0, "split"] = "train"
    small = manifest.replace(df=df.reset_index(drop=True))
    image, text = _stores(small, tmp_path)
    arrays = assemble(small, "normal-abnormal", image=image, views="mean", text=text)
    assert arrays.image.shape[1] == 1
    X, mask = _ref_study_slots(image, small, "mean")
    assert X.shape[1] >= 11  # (one of the 12 was never embedded)
    keep = np.isin(small.df["study_id"], arrays.study_ids)
    np.testing.assert_allclose(arrays.image[:, 0], _ref_mean(X, mask)[keep], rtol=0, atol=1e-6)


def test_one_wide_study_costs_its_own_views_in_the_attention_array(iu, tmp_path: Path) -> None:
    """A 12-view study: the attention array reads 12 slots for every study (as before), but
    holds only the views that exist (it held 12 x D for each of the 200 studies)."""
    manifest, _, _ = iu
    df = manifest.df.head(200).copy()
    df.at[0, "views"] = [{"image_id": f"wide-{k}", "path": None, "view": "PA"} for k in range(12)]
    df.at[0, "split"] = "train"
    small = manifest.replace(df=df.reset_index(drop=True))
    image, text = _stores(small, tmp_path)
    arrays = assemble(small, "normal-abnormal", image=image, views="attention", text=text)
    X, _ = _ref_study_slots(image, small, "attention")
    keep = np.isin(small.df["study_id"], arrays.study_ids)
    assert arrays.image.shape == X[keep].shape and X.shape[1] >= 11
    np.testing.assert_array_equal(np.asarray(arrays.image), X[keep])
    assert arrays.image.nbytes < 0.3 * X[keep].nbytes  # ~1.6 views a study, not 12


@pytest.mark.parametrize("views", ["attention", "mean", "concat"])
def test_present_views_are_the_masked_dense_rows(iu, views: str) -> None:
    """``StudyArrays.present_views`` (training means of serve and attribution) gives what the
    dense rows under their mask hold, without building them for attention."""
    manifest, image, text = iu
    arrays = assemble(manifest, "normal-abnormal", image=image, views=views, text=text)
    rows = arrays.indices("train")
    dense = np.asarray(arrays.image)[rows]
    np.testing.assert_array_equal(arrays.present_views(rows), dense[arrays.image_mask[rows]])
