"""``cxrfuse embed`` and ``cxrfuse encoders``: help, end-to-end run, summary, reuse, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.store import load_image_embeddings, load_text_embeddings

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide")  # tiny SVD
runner = CliRunner()


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    records = [
        {
            "study_id": f"S{i}",
            "patient_id": f"P{i}",
            "indication": "" if i == 2 else f"cough {i}, cardiomegaly suspected",
            "findings": "heart size normal",
            "split": "train" if i < 4 else "test",
            "labels": {"abnormal": i % 2, "Cardiomegaly": i % 2},
        }
        for i in range(6)
    ]
    manifest = Manifest.from_records(
        records, dataset="iu-xray", labels=["abnormal", "Cardiomegaly"]
    )
    manifest = make_phantoms(manifest, folder, PhantomConfig(size=32), progress=False)
    Path(manifest.df["views"][1][0]["path"]).write_bytes(b"truncated png")
    return folder / "manifest.parquet"


@pytest.mark.parametrize("verb", [["embed"], ["encoders"]], ids=" ".join)
def test_help_has_an_example(verb: list[str]) -> None:
    result = runner.invoke(app, [*verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "cxrfuse" in result.output


def test_embed_end_to_end_then_reuse(
    manifest_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    import cxrfuse.cli.embed as embed_cli

    # the module console's width is fixed when it is first imported (80 under pytest-xdist)
    monkeypatch.setattr(embed_cli, "console", Console(width=250))
    args = [
        "embed", str(manifest_path), "--image-encoder", "efficientnet-lite0", "--input-size", "32",
        "--text-encoder", "tfidf", "--svd-dim", "2", "--store", str(tmp_path / "store"),
        "--cache", str(tmp_path / "cache"), "--dtype", "float16", "--device", "cpu",
        "--workers", "1", "--no-progress",
    ]  # fmt: skip
    result = runner.invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "11 / 12" in result.output and "5 with text" in result.output
    assert "1 without text" in result.output and "img/s" in result.output
    assert "unreadable" in result.output and "S1_frontal.png" in result.output
    assert "cannot identify image file" in result.output  # the reason meta.json keeps
    [image_dir] = [p for p in (tmp_path / "store").iterdir() if (p / "images-00000.npy").exists()]
    store = load_image_embeddings(image_dir)
    assert store.vectors.dtype == np.float16 and len(store) == 11
    assert store.meta["environment"]["torch"] and store.meta["environment"]["cpu_threads"] >= 1
    assert (tmp_path / "cache").is_dir()
    [text_dir] = [p for p in (tmp_path / "store").iterdir() if (p / "texts.npy").exists()]
    texts = load_text_embeddings(text_dir)
    assert "cardiomegaly" not in " ".join(texts.texts).lower()  # label words are masked
    assert texts.meta["environment"]["cpu_threads"] >= 1

    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["images"]["reused"] and summary["texts"]["reused"]
    assert summary["images"]["computed_this_run"] == 0
    assert summary["texts"]["texts_per_s"] is None  # no speed for work not done this time
    bad = read_manifest(manifest_path).df["views"][1][0]["path"]
    assert summary["images"]["failed_paths"] == [bad] and summary["images"]["n_failed"] == 1

    unmasked = runner.invoke(app, [*args, "--no-mask", "--json"])
    assert unmasked.exit_code == 0, unmasked.output
    other = json.loads(unmasked.output)["texts"]
    assert not other["reused"] and other["path"] != summary["texts"]["path"]


def test_text_only_and_task_change_the_text_key(manifest_path: Path, tmp_path: Path) -> None:
    base = ["embed", str(manifest_path), "--text-encoder", "tfidf", "--svd-dim", "2",
            "--store", str(tmp_path), "--json", "--no-progress"]  # fmt: skip
    paths = []
    for task in ([], ["--task", "abnormal"]):
        result = runner.invoke(app, [*base, *task])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        assert "images" not in summary
        paths.append(summary["texts"]["path"])
    assert paths[0] != paths[1]  # the task decides what is masked, so it is in the key
    assert load_text_embeddings(paths[1]).meta["key_inputs"]["task"] == "abnormal"
    assert load_text_embeddings(paths[0]).meta["key_inputs"]["task"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "nothing to embed"),
        (["--image-encoder", "no-such-net"], "unknown image encoder 'no-such-net'"),
        (["--image-encoder", "resnet18"], "efficientnet-lite0/1/2"),  # offline: names the choices
        (["--text-encoder", "tfidf", "--sections", "bogus"], "bogus"),
    ],
)
def test_bad_input_is_one_clear_line(
    manifest_path: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = runner.invoke(
        app, ["embed", str(manifest_path), "--store", str(tmp_path), "--no-progress", *extra]
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_encoders_lists_the_registry() -> None:
    result = runner.invoke(app, ["encoders", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["efficientnet-lite0"]["offline"] and rows["efficientnet-lite0"]["dim"] == 1280
    assert rows["xrv-densenet121-all"]["input"].startswith("224 px, 1 ch")
    assert "NOT external for IU X-ray" in rows["xrv-densenet121-all"]["notes"]
    assert rows["minilm"]["kind"] == "text" and rows["minilm"]["offline"]
    offline = runner.invoke(app, ["encoders", "--offline", "--json"])
    names = {row["name"] for row in json.loads(offline.output)}
    assert names == {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
                     "minilm", "tfidf"}  # fmt: skip
    table = runner.invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert (
        table.exit_code == 0
        and "image encoders" in table.output
        and "xrv-densenet121-pc" in table.output
    )


def test_text_encoder_by_hub_id_or_local_folder(manifest_path: Path, tmp_path: Path,
                                                tiny_bert_dir: Path) -> None:  # fmt: skip
    """As the README says: --text-encoder takes a Hugging Face id or a saved model folder."""
    result = runner.invoke(app, ["embed", str(manifest_path), "--text-encoder", str(tiny_bert_dir),
                                 "--store", str(tmp_path), "--json", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    texts = json.loads(result.output)["texts"]
    assert texts["dim"] == 32 and texts["n_with_text"] == 5
    offline = runner.invoke(app, ["embed", str(manifest_path), "--text-encoder", "nobody/no-model",
                                  "--store", str(tmp_path), "--no-progress"])  # fmt: skip
    assert offline.exit_code == 2 and "nobody/no-model" in offline.output
    assert "unknown text encoder" not in offline.output  # an id, just not downloadable offline
