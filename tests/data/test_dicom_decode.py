"""Compressed DICOM in: every transfer syntax cxrfuse decodes (JPEG baseline, JPEG 2000
lossless, RLE, uncompressed) gives the pixels of the PNG it was made from, as files on disk
(the store / ingest path) and as bytes (predict / serve); an undecodable syntax is one
DataError naming the file and the syntax. ``ingest csv`` rows pointing at ``.dcm`` files embed
to the same vectors as the PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data.images import (
    decode_native,
    decode_resized,
    decode_resized_bytes,
    dicom_gray8,
    read_header,
)
from cxrfuse.problems import DataError
from dicom_files import CODECS, LOSSLESS, dicom_of, phantom_radiograph, stretched

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "iu-nih-pairs"
JPEG_MAX_PIXEL_ERROR = 24
"""Largest gray-level difference of a quality-95 JPEG (lossy) from its source, any pixel."""
JPEG_MEAN_PIXEL_ERROR = 2.0
N_STUDIES = 6
INDICATIONS = ["cough and fever", "chest pain", "shortness of breath", "trauma left ribs",
               "fever", "follow up pneumonia"]  # fmt: skip
runner = CliRunner()


def _gray(source: str) -> np.ndarray:
    if source == "phantom":
        return phantom_radiograph(96)
    images = REAL / "images" / "images_normalized"
    if not images.is_dir():
        pytest.skip(f"real radiographs absent ({images})")
    return stretched(np.asarray(Image.open(min(images.glob("*.png"))).convert("L")))


@pytest.mark.parametrize("source", ["phantom", "real"])
def test_each_codec_decodes_to_the_source_pixels(source: str, tmp_path: Path) -> None:
    gray = _gray(source)
    png = tmp_path / "x.png"
    Image.fromarray(gray, "L").save(png)
    for codec in CODECS:
        data = dicom_of(gray, codec)
        path = tmp_path / f"x-{codec}.dcm"
        path.write_bytes(data)
        assert read_header(data).format == "dicom"
        full = dicom_gray8(data)
        assert full.shape == gray.shape
        error = np.abs(full.astype(int) - gray.astype(int))
        if codec in LOSSLESS:
            assert error.max() == 0, codec
            assert np.array_equal(decode_resized(path, 64, "pad"), decode_resized(png, 64, "pad"))
            assert np.array_equal(decode_native(path), gray)
        else:
            assert error.max() <= JPEG_MAX_PIXEL_ERROR and error.mean() < JPEG_MEAN_PIXEL_ERROR
        # a file on disk (store, ingest) and its bytes (predict, serve) decode alike
        assert np.array_equal(decode_resized(path, 64, "crop"), decode_resized_bytes(data, 64, "crop"))


def test_unsupported_transfer_syntax_names_file_and_syntax(tmp_path: Path) -> None:
    path = tmp_path / "video.dcm"
    path.write_bytes(dicom_of(phantom_radiograph(), "mpeg2"))
    with pytest.raises(DataError, match=r"video\.dcm: unsupported DICOM transfer syntax MPEG2 .*"
                                        r"\(1\.2\.840\.10008\.1\.2\.4\.100\)"):  # fmt: skip
        decode_resized(path, 32)
    with pytest.raises(DataError, match="video.dcm: unsupported DICOM transfer syntax"):
        decode_native(path)


def test_ingest_csv_rows_pointing_at_dicom_embed_like_the_pngs(tmp_path: Path) -> None:
    """Two exports of the same six studies, one with PNGs, one with DICOM files (JPEG 2000
    lossless, RLE, uncompressed): the embedded image vectors are identical."""
    manifests = {}
    for kind in ("png", "dcm"):
        folder = tmp_path / kind
        folder.mkdir()
        rows = ["study,patient,image,view,indication,pneumonia,split"]
        for i in range(N_STUDIES):
            gray = phantom_radiograph(64, seed=i)
            name = f"s{i}.{kind}"
            if kind == "png":
                Image.fromarray(gray, "L").save(folder / name)
            else:
                (folder / name).write_bytes(dicom_of(gray, LOSSLESS[i % len(LOSSLESS)]))
            rows.append(f"S{i},P{i},{name},PA,{INDICATIONS[i]},{i % 2},"
                        f"{'train' if i < 4 else 'test'}")
        (folder / "studies.csv").write_text("\n".join(rows) + "\n")
        spec = {"table": "studies.csv", "images": ".", "dataset": f"export-{kind}",
                "study": "study", "patient": "patient", "image": "image", "view": "view",
                "sections": {"indication": "indication"},
                "labels": {"pneumonia": {"column": "pneumonia"}}, "split": "split"}  # fmt: skip
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        result = runner.invoke(app, ["ingest", "csv", "--spec", str(folder / "spec.yaml"),
                                     "--out", str(folder / "manifest.parquet")])  # fmt: skip
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["embed", str(folder / "manifest.parquet"), "--store",
                                     str(folder / "store"), "--image-encoder", "efficientnet-lite0",
                                     "--input-size", "32", "--text-encoder", "tfidf",
                                     "--svd-dim", "1", "--no-progress"])  # fmt: skip
        assert result.exit_code == 0, result.output
        manifests[kind] = folder / "store"
    from cxrfuse.store.images import load_image_embeddings

    def vectors(store: Path) -> np.ndarray:
        found = sorted({p.parent for p in store.rglob("images-*.npy")})
        assert len(found) == 1, list(store.rglob("*"))
        emb = load_image_embeddings(found[0])
        order = np.argsort(emb.study_ids)
        return np.asarray(emb.vectors)[order]

    png, dcm = vectors(manifests["png"]), vectors(manifests["dcm"])
    assert png.shape == dcm.shape == (N_STUDIES, png.shape[1])
    assert np.array_equal(png, dcm)
