"""Image hashes and overlap reports: exact copies, near duplicates (re-encoded, resized, 16-bit,
cropped) of phantoms and of the real NIH radiographs, split/stats reports, unreadable images."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data import Manifest, read_manifest
from cxrfuse.data.image_hashes import (
    NEAR_THRESHOLD,
    POOL_MIN_PER_WORKER,
    add_image_hashes,
    cross_overlap,
    hamming,
    hash_file,
    hash_images,
    hash_words,
    manifest_overlap,
    missing_hashes,
)

SHARED_NIH = Path(__file__).resolve().parents[3] / "shared" / "data" / "nih-cxr14-sample"
runner = CliRunner()


def _distance(a: dict[str, str], b: dict[str, str]) -> int:
    return int(hamming(hash_words([int(a["phash"], 16)]), hash_words([int(b["phash"], 16)]))[0, 0])


def _copies(src: Path, out: Path) -> dict[str, Path]:
    """A byte copy, a lossless re-save, a JPEG, a half-size, a 16-bit and a 2 % crop of ``src``."""
    out.mkdir(parents=True, exist_ok=True)
    img = Image.open(src).convert("L")
    paths = {name: out / f"{src.stem}_{name}" for name in
             ("copy.png", "resaved.png", "q75.jpg", "half.png", "sixteen.png", "crop.png")}
    shutil.copyfile(src, paths["copy.png"])
    img.save(paths["resaved.png"], compress_level=1)
    img.save(paths["q75.jpg"], quality=75)
    img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(paths["half.png"])
    Image.fromarray(np.asarray(img, dtype=np.uint16) * 257).save(paths["sixteen.png"])
    d = round(img.width * 0.01)
    img.crop((d, d, img.width - d, img.height - d)).save(paths["crop.png"])
    return paths


def _check_copies(src: Path, out: Path) -> None:
    original = hash_file(src)
    for name, path in _copies(src, out).items():
        h = hash_file(path)
        lossless = name in ("copy.png", "resaved.png")
        assert (h["content_hash"] == original["content_hash"]) == lossless, name
        assert _distance(h, original) <= NEAR_THRESHOLD, (name, _distance(h, original))


@pytest.fixture(scope="module")
def phantoms(iu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
    from cxrfuse.data.splits import assign_splits

    small = iu_manifest.replace(df=iu_manifest.df.head(24).reset_index(drop=True))
    out = tmp_path_factory.mktemp("hash-phantoms")
    return assign_splits(make_phantoms(small, out, PhantomConfig(size=128, seed=0), progress=False),
                         (0.5, 0.25, 0.25), seed=0)  # fmt: skip


def test_phantom_copies_are_exact_or_near(phantoms: Manifest, tmp_path: Path) -> None:
    src = Path(phantoms.df["views"].iat[0][0]["path"])
    _check_copies(src, tmp_path)


def _with_copy(manifest: Manifest, out: Path) -> tuple[Manifest, str, str]:
    """The manifest with the first test study's frontal image replaced by a copy of the first
    train study's (another patient, another split)."""
    df = manifest.df.copy()
    train, test = df.index[df["split"] == "train"][0], df.index[df["split"] == "test"][0]
    views = [dict(v) for v in df.at[test, "views"]]
    copy = out / "copied.png"
    shutil.copyfile(df.at[train, "views"][0]["path"], copy)
    views[0]["path"] = str(copy)
    df.at[test, "views"] = views
    return manifest.replace(df=df), df.at[train, "views"][0]["image_id"], views[0]["image_id"]


def test_manifest_overlap_finds_a_copied_image_across_splits(phantoms: Manifest, tmp_path: Path) -> None:
    manifest, a, b = _with_copy(phantoms, tmp_path)
    hashed, problems = add_image_hashes(manifest)
    assert not problems and missing_hashes(hashed) == 0 and missing_hashes(manifest) > 0
    report = manifest_overlap(hashed)
    assert report["across_splits"]["exact"] == 1 and report["across_patients"]["exact"] == 1
    pair = report["across_splits"]["examples"][0]
    assert {pair["a"]["image_id"], pair["b"]["image_id"]} == {a, b} and pair["match"] == "exact"
    assert manifest_overlap(add_image_hashes(phantoms)[0])["across_splits"]["exact"] == 0
    # the hashes survive a save / read; an older manifest without them reads as before
    back = read_manifest(hashed.save(tmp_path / "hashed.parquet"))
    assert back.df["views"].iat[0][0]["content_hash"] == hashed.df["views"].iat[0][0]["content_hash"]


def test_cross_overlap_counts_shared_training_images(phantoms: Manifest) -> None:
    hashed, _ = add_image_hashes(phantoms)
    train_val = hashed.df["split"].isin(["train", "val"])
    shared = hashed.replace(df=hashed.df[train_val].head(5).reset_index(drop=True))
    n_images = int(shared.df["views"].map(len).sum())
    result = cross_overlap(shared, hashed)
    assert result["exact"] == n_images == result["total"] and result["near"] == 0
    test_only = hashed.replace(df=hashed.df[hashed.df["split"] == "test"].reset_index(drop=True))
    assert cross_overlap(test_only, hashed)["exact"] == 0
    assert cross_overlap(test_only, hashed)["by_split"]["test"]["exact"] == int(test_only.df["views"].map(len).sum())


def test_unreadable_image_is_a_problem_not_a_failure(phantoms: Manifest, tmp_path: Path) -> None:
    df = phantoms.df.copy()
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    views = [dict(v) for v in df.at[0, "views"]]
    views[0]["path"] = str(bad)
    df.at[0, "views"] = views
    hashed, problems = add_image_hashes(phantoms.replace(df=df))
    assert len(problems) == 1 and problems[0]["path"] == str(bad) and problems[0]["error"]
    report = manifest_overlap(hashed)
    assert report["unhashed"] == 1 and report["hashed"] == report["images"] - 1
    path = hashed.save(tmp_path / "m.parquet")
    result = runner.invoke(app, ["stats", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["image_overlap"]["unhashed"] == 1


def test_split_and_stats_report_shared_images(phantoms: Manifest, tmp_path: Path) -> None:
    manifest, a, b = _with_copy(phantoms, tmp_path)
    path = manifest.save(tmp_path / "m.parquet")
    result = runner.invoke(app, ["stats", str(path)], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "images shared between studies" in result.output and "WARNING: 1 exact" in result.output
    assert a in result.output and b in result.output
    assert missing_hashes(read_manifest(path)) > 0  # stats does not write the manifest
    result = runner.invoke(app, ["split", str(path), "--seed", "1"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "images shared between studies" in result.output
    assert missing_hashes(read_manifest(path)) == 0  # split stores the hashes it computed
    assert "images shared" not in runner.invoke(app, ["stats", str(path), "--no-overlap"]).output


@pytest.mark.skipif(not (SHARED_NIH / "labels.csv").is_file(), reason="NIH sample not present")
def test_real_radiograph_copies_are_found_and_distinct_ones_are_not(tmp_path: Path) -> None:
    labels = pd.read_csv(SHARED_NIH / "labels.csv")
    paths = [SHARED_NIH / "images" / name for name in labels["Image Index"]]
    for src in paths[:3]:
        _check_copies(src, tmp_path / src.stem)
    hashes = [hash_file(p) for p in paths[:60]]
    words = hash_words([int(h["phash"], 16) for h in hashes])
    distinct = hamming(words, words)[np.triu_indices(len(hashes), 1)]
    assert distinct.min() > NEAR_THRESHOLD  # no false near match among 1,770 real pairs
    assert len({h["content_hash"] for h in hashes}) == len(hashes)


@pytest.mark.skipif(not (SHARED_NIH / "labels.csv").is_file(), reason="NIH sample not present")
def test_real_nih_split_has_no_overlap_but_a_copy_is_caught(tmp_path: Path) -> None:
    from cxrfuse.data.nih import ingest_nih
    from cxrfuse.data.splits import assign_splits

    nih, _ = ingest_nih(SHARED_NIH / "labels.csv", SHARED_NIH / "images")
    nih = assign_splits(nih.replace(df=nih.df.head(80).reset_index(drop=True)), seed=0)
    hashed, problems = add_image_hashes(nih)
    report = manifest_overlap(hashed)
    assert not problems and report["hashed"] == 80
    assert all(report[k]["exact"] == report[k]["near"] == 0 for k in ("across_splits", "across_patients"))
    # a JPEG re-encode of a training image, put in the test split as another patient's study
    df = nih.df.copy()
    train, test = df.index[df["split"] == "train"][0], df.index[df["split"] == "test"][0]
    jpeg = tmp_path / "reencoded.jpg"
    buf = io.BytesIO()
    Image.open(df.at[train, "views"][0]["path"]).convert("L").save(buf, format="JPEG", quality=80)
    jpeg.write_bytes(buf.getvalue())
    df.at[test, "views"] = [{**df.at[test, "views"][0], "path": str(jpeg)}]
    report = manifest_overlap(add_image_hashes(nih.replace(df=df))[0])
    assert report["across_splits"]["exact"] == 0 and report["across_splits"]["near"] == 1


def _with_own_first_image(phantoms: Manifest, tmp_path: Path) -> tuple[Manifest, Path]:
    """``phantoms`` with its first image copied into ``tmp_path`` (so changing it leaves the fixture alone)."""
    df = phantoms.df.copy()
    changed = tmp_path / "first.png"
    shutil.copyfile(df.at[0, "views"][0]["path"], changed)
    df.at[0, "views"] = [{**df.at[0, "views"][0], "path": str(changed)}, *df.at[0, "views"][1:]]
    return phantoms.replace(df=df), changed


def test_hashes_computed_on_demand_are_cached_by_file_stamp(phantoms: Manifest, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from cxrfuse.data import image_hashes

    phantoms, changed = _with_own_first_image(phantoms, tmp_path)
    cache = tmp_path / "m.image-hashes.parquet"
    first, _, counts = hash_images(phantoms, cache=cache, workers=1)
    assert counts.hashed == _n_images(phantoms) and counts.cached == 0
    table = pq.read_table(cache)
    assert table.num_rows == _n_images(phantoms)
    assert set(table.column_names) >= {"path", "size", "mtime_ns", "content_hash", "phash"}
    calls: list[str] = []
    real = image_hashes.hash_file
    monkeypatch.setattr(image_hashes, "hash_file", lambda p: calls.append(str(p)) or real(p))
    again, _, counts = hash_images(phantoms, cache=cache, workers=1)
    assert calls == [] and counts.hashed == 0 and counts.cached == _n_images(phantoms)
    assert again.df["views"].tolist() == first.df["views"].tolist()
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)  # new pixels, new stamp
    third, _, counts = hash_images(phantoms, cache=cache, workers=1)
    assert calls == [str(changed)] and counts.hashed == 1  # only the changed file is decoded again
    assert third.df["views"].iat[0][0]["content_hash"] != first.df["views"].iat[0][0]["content_hash"]
    st = changed.stat()  # same bytes, only the mtime moves: hashed again (the stamp is the key)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fourth, _, counts = hash_images(phantoms, cache=cache, workers=1)
    assert counts.hashed == 1 and fourth.df["views"].tolist() == third.df["views"].tolist()


def test_a_corrupt_hash_cache_is_ignored_with_a_warning_and_rebuilt(phantoms: Manifest, tmp_path: Path) -> None:
    cache = tmp_path / "m.image-hashes.parquet"
    first, _, _ = hash_images(phantoms, cache=cache, workers=1)
    cache.write_bytes(b"PAR1 this is not parquet")
    with pytest.warns(UserWarning, match="image-hash cache unreadable"):
        again, _, counts = hash_images(phantoms, cache=cache, workers=1)
    assert counts.hashed == _n_images(phantoms) and again.df["views"].tolist() == first.df["views"].tolist()
    assert hash_images(phantoms, cache=cache, workers=1)[2].cached == _n_images(phantoms)  # rebuilt
    pq.write_table(pa.table({"path": ["x"]}), cache)  # readable Parquet, another layout
    with pytest.warns(UserWarning, match="image-hash cache unreadable"):
        assert hash_images(phantoms, cache=cache, workers=1)[2].hashed == _n_images(phantoms)


def test_two_workers_give_the_same_hashes_and_problems_as_one(phantoms: Manifest, tmp_path: Path) -> None:
    df = phantoms.df.copy()  # one unreadable image among them
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    df.at[1, "views"] = [{**df.at[1, "views"][0], "path": str(bad)}, *df.at[1, "views"][1:]]
    manifest = phantoms.replace(df=df)
    assert _n_images(manifest) >= 2 * POOL_MIN_PER_WORKER  # enough images for two worker processes
    one, problems1, counts1 = hash_images(manifest, workers=1)
    two, problems2, counts2 = hash_images(manifest, workers=2)
    assert counts2.workers == 2 and counts1.hashed == counts2.hashed == _n_images(manifest) - 1
    assert one.df["views"].tolist() == two.df["views"].tolist() and problems1 == problems2
    assert [p["path"] for p in problems2] == [str(bad)]


def test_stats_twice_hashes_nothing_the_second_time(phantoms: Manifest, tmp_path: Path) -> None:
    manifest, changed = _with_own_first_image(phantoms, tmp_path)
    path = manifest.save(tmp_path / "m.parquet")
    n = _n_images(manifest)

    def hashing(*extra: str) -> dict[str, int]:
        result = runner.invoke(app, ["stats", str(path), "--json", "--workers", "2", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.output[result.output.index("{"):])["image_overlap"]["hashing"]

    first = hashing()
    assert first["hashed"] == n and first["cached"] == 0 and first["workers"] == 2
    assert (tmp_path / "m.image-hashes.parquet").is_file() and missing_hashes(read_manifest(path)) == n
    second = hashing()
    assert second["hashed"] == 0 and second["cached"] == n
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = hashing()
    assert third["hashed"] == 1 and third["cached"] == n - 1
    text = runner.invoke(app, ["stats", str(path), "--workers", "2"], terminal_width=250).output
    assert f"image hashes: 0 hashed now (2 worker(s)), {n} from the cache, 0 stored in the manifest" in " ".join(text.split())


@pytest.mark.skipif(not (SHARED_NIH / "labels.csv").is_file(), reason="NIH sample not present")
def test_real_nih_hashes_are_the_same_with_two_workers_and_from_the_cache(tmp_path: Path) -> None:
    from cxrfuse.data.nih import ingest_nih

    nih, _ = ingest_nih(SHARED_NIH / "labels.csv", SHARED_NIH / "images")
    nih = nih.replace(df=nih.df.head(40).reset_index(drop=True))
    assert 40 >= 2 * POOL_MIN_PER_WORKER  # two worker processes, not this one
    cache = tmp_path / "nih.image-hashes.parquet"
    one, _, _ = hash_images(nih, workers=1)
    two, problems, counts = hash_images(nih, workers=2, cache=cache)
    assert not problems and counts.hashed == 40 and one.df["views"].tolist() == two.df["views"].tolist()
    cached, _, counts = hash_images(nih, workers=2, cache=cache)
    assert counts.hashed == 0 and counts.cached == 40 and cached.df["views"].tolist() == one.df["views"].tolist()


def _n_images(manifest: Manifest) -> int:
    return int(manifest.df["views"].map(lambda vs: sum(bool(v["path"]) for v in vs)).sum())


def test_a_damaged_stored_hash_is_computed_again(phantoms: Manifest) -> None:
    hashed, _ = add_image_hashes(phantoms)
    df = hashed.df.copy()
    good = dict(df.at[0, "views"][0])
    df.at[0, "views"] = [{**good, "phash": "not-hex"}, *df.at[0, "views"][1:]]
    damaged = hashed.replace(df=df)
    assert missing_hashes(damaged) == 1 and manifest_overlap(damaged)["hashed"] == _n_images(phantoms) - 1
    assert add_image_hashes(damaged)[0].df["views"].iat[0][0]["phash"] == good["phash"]
