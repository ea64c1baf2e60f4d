"""CLIP on a small phantom set: training lowers the val loss, retrieval beats chance, the run
directory rebuilds the model without pickles, and probe / zero-shot / retrieve run from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.clip.checkpoint import load_clip_model
from cxrfuse.clip.embed import embed_dataset, pair_dataset
from cxrfuse.clip.train import build_clip_model, chunked_info_nce, train_clip
from cxrfuse.config.clip import load_clip_config, validate_clip_config
from cxrfuse.data.manifest import read_manifest
from cxrfuse.problems import ConfigError
from cxrfuse.reporting import write_report

runner = CliRunner()


def small_config(manifest: Path, runs_dir: Path, **overrides: object) -> dict:
    """A CLIP config that trains in seconds: efficientnet-lite0 at 64 px + minilm, 64-d space."""
    raw = {
        "name": "tiny-clip",
        "runs_dir": str(runs_dir),
        "offline": True,
        "data": {"manifest": str(manifest), "task": "multilabel"},
        "image": {"input_size": 64},
        "text": {"max_length": 64, "freeze_blocks": 4},
        "model": {"projection_dim": 64},
        "training": {"batch_size": 16, "max_epochs": 3, "lr": 1e-4, "head_lr": 1e-3,
                     "warmup_epochs": 0.5, "progress": False},
        "probe": {"task": "normal-abnormal", "hidden": [32, 32], "max_epochs": 5, "n_boot": 20},
    }
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


@pytest.fixture(scope="session")
def trained_run(phantom_manifest_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("clip-runs")
    config = validate_clip_config(small_config(phantom_manifest_path, runs))
    return train_clip(config)


def test_training_lowers_val_loss(trained_run: Path) -> None:
    """The val InfoNCE of the kept epoch is clearly below the loss before training.

    Retrieval is recorded, not asserted above chance: at 64 px and ~100 training pairs the
    phantoms' image side carries too little per-study detail (see docs/clip.md).
    """
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] == "finished" and info["images"] == "phantom"
    epochs = pd.read_csv(trained_run / "epochs.csv")
    val = epochs[epochs.split == "val"].set_index("epoch")
    assert list(val.index) == [0, 1, 2, 3]  # 0 = measured before training
    assert set(epochs[epochs.split == "train"].epoch) == {1, 2, 3}
    assert info["clip"]["val_loss"]["after"] == pytest.approx(val.loss.min())
    assert info["clip"]["val_loss"]["after"] < info["clip"]["val_loss"]["before"] - 0.05
    r5 = info["clip"]["val_r5_image_to_text"]
    assert r5["chance"] == pytest.approx(5 / val.n.iloc[0])
    assert r5["after"] == pytest.approx(val.r5_image_to_text[info["clip"]["kept_epoch"]])


def test_run_directory_rebuilds_the_model_without_pickles(trained_run: Path) -> None:
    files = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "run.json", "epochs.csv", "plots/curves.png", "model.safetensors",
            "model.json", "text_model/config.json"} <= files
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".ckpt", ".bin"))]
    sidecar = json.loads((trained_run / "model.json").read_text())
    assert sidecar["format"] == "cxrfuse-clip/1"
    assert sidecar["image"]["encoder"] == "efficientnet-lite0" and sidecar["projection_dim"] == 64
    # the rebuilt model reproduces the val loss recorded for the kept epoch
    model, tokenizer, _ = load_clip_model(trained_run)
    config = load_clip_config(trained_run / "config.yaml")
    manifest = read_manifest(config.data.manifest)
    dataset, _ = pair_dataset(config, manifest, "val", model, tokenizer, progress=False)
    image, text = embed_dataset(model, dataset, tokenizer, progress=False)
    loss = chunked_info_nce(image, text, float(model.temperature()), config.training.batch_size)
    info = json.loads((trained_run / "run.json").read_text())
    assert loss == pytest.approx(info["clip"]["val_loss"]["after"], abs=1e-3)


def test_retrieve_from_the_cli(trained_run: Path) -> None:
    result = runner.invoke(app, ["clip", "retrieve", str(trained_run), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = json.loads((trained_run / "retrieval.json").read_text())
    assert out["split"] == "test" and out["n"] >= 20
    assert out["chance"]["5"] == pytest.approx(5 / out["n"])
    assert 0 <= out["image_to_text"]["1"] <= out["image_to_text"]["5"] <= out["image_to_text"]["10"]
    assert "chance (K/N)" in (trained_run / "retrieval.md").read_text()
    ceiling = out["label_ceiling"]["image_to_text"]
    assert out["chance"]["5"] <= ceiling["5"] <= 1.0 and "label ceiling" in (
        trained_run / "retrieval.md").read_text()  # fmt: skip


def test_zero_shot_from_the_cli(trained_run: Path) -> None:
    result = runner.invoke(app, ["clip", "zero-shot", str(trained_run), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = json.loads((trained_run / "zero_shot.json").read_text())
    assert out["task"] == "multilabel"
    cardio = out["labels"]["Cardiomegaly"]
    assert cardio["positive"][0] == "findings suggest cardiomegaly."
    assert cardio["negative"][0] == "no cardiomegaly."
    aurocs = [v["auroc"] for v in out["labels"].values() if v["auroc"] is not None]
    assert aurocs and all(0.0 <= a <= 1.0 for a in aurocs)
    assert "| Cardiomegaly |" in (trained_run / "zero_shot.md").read_text()


def test_a_clip_run_has_a_model_card_refreshed_by_retrieve_and_zero_shot(trained_run: Path,
                                                                          tmp_path: Path) -> None:
    """Training writes README.md (Hugging Face front matter, research use only, synthetic
    images said); `clip retrieve` and `clip zero-shot` rewrite it with their figures."""
    from cxrfuse.rundir.modelcard import read_card_metadata

    config = validate_clip_config(small_config(
        Path(yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["manifest"]),
        tmp_path, **{"training.max_epochs": 1}))  # fmt: skip
    fresh = train_clip(config)
    meta = read_card_metadata(fresh / "README.md")
    block = meta["cxrfuse"]
    assert meta["library_name"] == "cxrfuse" and meta["pipeline_tag"] == "zero-shot-image-classification"
    assert {"research-use-only", "synthetic-images", "clip"} <= set(meta["tags"])
    assert block["kind"] == "clip" and block["evaluated"] is False and block["synthetic_images"]
    assert block["intended_use"] == "research use only" and "model-index" not in meta
    assert "cxrfuse clip retrieve" in (fresh / "README.md").read_text()
    for verb in ("retrieve", "zero-shot"):
        result = runner.invoke(app, ["clip", verb, str(fresh), "--no-progress"])
        assert result.exit_code == 0, result.output
    meta = read_card_metadata(fresh / "README.md")
    retrieval = json.loads((fresh / "retrieval.json").read_text())
    zero_shot = json.loads((fresh / "zero_shot.json").read_text())
    assert meta["cxrfuse"]["evaluated"] is True
    assert meta["cxrfuse"]["retrieval"]["image_to_text"] == retrieval["image_to_text"]
    assert meta["cxrfuse"]["zero_shot"]["macro_auroc"] == pytest.approx(zero_shot["macro_auroc"])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0] == {"type": "recall", "value": round(retrieval["image_to_text"]["1"], 4),
                          "name": f"image-to-report Recall@1 (test; chance "
                                  f"{retrieval['chance']['1']:.3f})"}  # fmt: skip
    body = (fresh / "README.md").read_text()
    assert "| chance (K/N) |" in body and "Research use only" in body and "synthetic phantoms" in body


def test_probe_from_the_cli(trained_run: Path) -> None:
    result = runner.invoke(app, ["clip", "probe", str(trained_run), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = json.loads((trained_run / "probe.json").read_text())
    assert list(out["probes"]) == ["image", "report", "image+report"]
    assert out["labels"] == ["abnormal"] and out["embedding_dim"] == 64
    assert out["leaky_text"] is True  # findings + impression: the report row reads the label
    for probe in out["probes"].values():
        assert 0.0 <= probe["headline"]["auroc"] <= 1.0
        assert 0.0 <= probe["thresholds"]["abnormal"] <= 1.0
    predictions = pd.read_parquet(trained_run / "probe_predictions.parquet")
    assert set(predictions.split) == {"val", "test"} and "p__abnormal" in predictions
    assert "image+report" in (trained_run / "probe.md").read_text()


def test_train_from_the_cli_with_overrides(phantom_manifest_path: Path, tmp_path: Path) -> None:
    raw = small_config(phantom_manifest_path, tmp_path / "runs", **{"training.max_epochs": 1})
    raw["data"]["limit"] = 24
    raw["offline"] = False  # --offline must switch the substitutes on
    config_path = tmp_path / "clip.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["clip", "train", str(config_path), "--offline", "--no-progress",
                                 "--set", "name=cli-run", "--set", "text.freeze_blocks=7",
                                 "--tracking", "csv"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "cli-run"
    logged = (run_dir / "logs" / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/loss" in logged[0] and "train/loss" in logged[0] and len(logged) >= 3
    assert json.loads((run_dir / "run.json").read_text())["n"]["train"] == 24
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["offline"] is True


def test_bad_config_key_is_named(phantom_manifest_path: Path, tmp_path: Path) -> None:
    raw = small_config(phantom_manifest_path, tmp_path)
    raw["model"]["temprature"] = 0.2
    with pytest.raises(ConfigError, match="model.temprature"):
        validate_clip_config(raw)
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(yaml.safe_dump(small_config(phantom_manifest_path, tmp_path)))
    result = runner.invoke(app, ["clip", "train", str(config_path), "--set",
                                 "model.temperature.init=5"])
    assert result.exit_code == 2
    assert "model.temperature" in result.output


def test_tfidf_cannot_be_trained_contrastively(phantom_manifest_path: Path,
                                               tmp_path: Path) -> None:
    config = validate_clip_config(small_config(phantom_manifest_path, tmp_path,
                                               **{"text.offline_encoder": "tfidf"}))
    with pytest.raises(Exception, match="no transformer"):
        train_clip(config)
    assert json.loads((tmp_path / "tiny-clip" / "run.json").read_text())["status"] == "failed"


def test_locked_towers_train_only_the_projections(phantom_manifest_path: Path,
                                                  tmp_path: Path) -> None:
    """freeze_blocks: all on both towers (LiT-style): features once, towers untouched."""
    torch.set_num_threads(1)
    raw = small_config(phantom_manifest_path, tmp_path, **{
        "image.freeze_blocks": "all", "text.freeze_blocks": "all", "training.max_epochs": 8,
        "training.head_lr": 3e-3})  # fmt: skip
    run_dir = train_clip(validate_clip_config(raw))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["clip"]["locked"] == {"image": True, "text": True}
    assert info["clip"]["val_loss"]["after"] < info["clip"]["val_loss"]["before"] - 0.05
    # the saved towers are exactly the pretrained ones; only the projections moved
    model, _, _ = load_clip_model(run_dir)
    torch.manual_seed(0)  # the run's seed: the same initial projections as the run started from
    fresh = build_clip_model(validate_clip_config(raw))[0]
    for name, value in fresh.state_dict().items():
        saved = model.state_dict()[name]
        if name.startswith(("image_encoder.", "text_model.")):
            assert torch.equal(saved, value), name
    assert not torch.equal(model.image_projection.weight, fresh.image_projection.weight)
    # the analyses run on the saved model as for any run
    result = runner.invoke(app, ["clip", "retrieve", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output


def test_report_on_a_clip_run(trained_run: Path, tmp_path: Path) -> None:
    """`cxrfuse report` on a CLIP run: training first, then each analysis once it has run."""
    import shutil

    from cxrfuse.clip.retrieval import run_retrieval

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(
        "retrieval.*", "zero_shot.*", "probe*", "report.*"))  # fmt: skip
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2 and "cxrfuse clip retrieve" in result.output
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    md = (run / "report.md").read_text()
    for title in ("Overview", "Retrieval", "Zero-shot classification", "Linear probe",
                  "Configuration", "Environment"):  # fmt: skip
        assert f"## {title}" in md
    assert "synthetic phantoms" in md and "val InfoNCE" in md
    assert f"Not run yet: `cxrfuse clip retrieve {run}`" in md
    assert "## Explanations" in md and "zero-shot score on the image tower" in md
    run_retrieval(run, progress=False)
    html_path, md_path = write_report(run)
    md = md_path.read_text()
    assert "Not run yet: `cxrfuse clip retrieve" not in md and "| image -> report " in md
    assert "label ceiling (oracle: same label set)" in md
    assert "chance (K/N)" in md and "Not run yet: `cxrfuse clip probe" in md
    assert 'src="data:image/png;base64,' in html_path.read_text()  # the training curves


def test_gradcam_of_the_zero_shot_score(trained_run: Path, tmp_path: Path) -> None:
    """`cxrfuse explain` on a CLIP run maps the zero-shot score of a label on the image tower;
    the explained model's probability is the zero-shot score of `cxrfuse clip zero-shot`."""
    from cxrfuse.clip.embed import load_run
    from cxrfuse.clip.explain import clip_explainer
    from cxrfuse.clip.zero_shot import prompt_embeddings, zero_shot_scores

    explainer, manifest = clip_explainer(trained_run)
    run = load_run(trained_run, progress=False)
    row = manifest.df[manifest.df["split"] == "test"].iloc[0]
    (view,) = explainer.load_views(row)
    x = view.tensor[None]
    with torch.no_grad():
        explained = torch.sigmoid(explainer.model_for([view], 0)(x)).numpy()
        prompts = prompt_embeddings(run, explainer.labels, run.config.zero_shot)
        expected = zero_shot_scores(run.model.encode_image(x), prompts,
                                    float(run.model.temperature()))  # fmt: skip
    assert explained.shape == expected.shape == (1, len(explainer.labels))
    assert np.allclose(explained, expected, atol=1e-5)
    out = tmp_path / "maps"
    result = runner.invoke(app, ["explain", str(trained_run), "--study", str(row["study_id"]),
                                 "--label", "Cardiomegaly", "--method", "gradcam++",
                                 "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    index = pd.read_csv(out / "index.csv")
    assert list(index["label"]) == ["Cardiomegaly"] and Path(index["overlay"][0]).is_file()


def test_generate_reports_by_retrieval_from_the_cli(trained_run: Path, tmp_path: Path) -> None:
    """Each test image gets a *training* report from the CLIP space; scored beside the
    image-blind baselines and the image-to-image nearest neighbour; in the CLIP report."""
    import shutil

    from cxrfuse.rundir import RunDir

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(
        "generation", "report.*"))  # fmt: skip
    out = RunDir(run).generation_dir("clip-k3")
    result = runner.invoke(app, ["generate", "retrieval", "--clip", str(run), "--k", "3",
                                 "--consensus", "medoid", "--n-boot", "20",
                                 "--n-boot-language", "5", "--no-meteor", "--out", str(out.path),
                                 "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = out.scores()
    assert set(scores["baselines"]) == {"random training report", "most frequent training report",
                                        "best constant report (BLEU-4 on train)",
                                        "sentence-consensus template (BLEU-4 on val)",
                                        "nearest-neighbour retrieval (image)"}  # fmt: skip
    for system in (scores, *scores["baselines"].values()):
        f1 = system["clinical"]["micro_f1_14"]
        assert 0.0 <= f1["value"] <= 1.0 and 0.0 <= system["bleu_4"]["value"] <= 1.0
    generated = out.generated()
    config = load_clip_config(run / "config.yaml")
    manifest = read_manifest(config.data.manifest)
    split_of = dict(zip(manifest.df["study_id"].astype(str), manifest.df["split"]))
    assert set(generated["split"]) == {"test"}
    assert set(generated["source_study_id"].map(split_of)) == {"train"}  # no test report copied
    assert out.settings()["space"].endswith("image -> report")
    write_report(run)
    assert "## Report generation: retrieval (k = 3, medoid)" in (run / "report.md").read_text()
