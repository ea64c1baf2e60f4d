"""End-to-end fine-tuning: encoder surgery, freezing, the study dataset, a tiny run on phantoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cxrfuse.config import RunConfig, set_dotted, validate_run
from cxrfuse.data.images import decode_resized
from cxrfuse.data.manifest import Manifest
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.encoders import create_image_encoder
from cxrfuse.encoders.image import to_model_input
from cxrfuse.encoders.surgery import adapt_to_grayscale, find_input_conv, freeze_backbone
from cxrfuse.fusion import build_head
from cxrfuse.inference import load_finetuned_encoder, load_run
from cxrfuse.problems import ConfigError, DataError
from cxrfuse.store import fill_cache, load_image_embeddings, manifest_image_cache
from cxrfuse.training import train_run
from cxrfuse.training.augment import build_augment
from cxrfuse.training.finetune import FinetuneModel, StudyImages, collate_studies, view_slots

SIZE = 64


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """36 one-patient studies, half with cardiomegaly; PA + lateral phantoms at 64 px."""
    splits = ["train"] * 20 + ["val"] * 8 + ["test"] * 8
    records = [
        {
            "study_id": f"s{i:02d}",
            "patient_id": f"p{i:02d}",
            "indication": "shortness of breath" if i % 2 else "routine check",
            "split": split,
            "labels": {"Cardiomegaly": i % 2},
            "views": [{"image_id": f"i{i}", "path": None, "view": "PA"}],
        }
        for i, split in enumerate(splits)
    ]
    manifest = Manifest.from_records(
        records, dataset="test", labels=["Cardiomegaly"], tasks={"cardiomegaly": ["Cardiomegaly"]}
    )
    out = tmp_path_factory.mktemp("phantoms")
    return make_phantoms(manifest, out, PhantomConfig(size=96), progress=False)


# ----------------------------------------------------------------------------- surgery


def test_grayscale_adaptation_equals_rgb_model_on_replicated_gray():
    torch.manual_seed(0)
    gray = (torch.rand(3, SIZE, SIZE) * 255).to(torch.uint8)
    encoder = create_image_encoder("efficientnet-lite0", input_size=SIZE)  # ImageNet, offline
    rgb_in = to_model_input(gray, encoder.spec)
    assert rgb_in.shape[1] == 3 and torch.equal(rgb_in[:, 0], rgb_in[:, 2])
    with torch.no_grad():
        rgb = encoder(rgb_in)
    adapt_to_grayscale(encoder)
    gray_in = to_model_input(gray, encoder.spec)
    assert gray_in.shape[1] == 1 and encoder.spec.channels == 1
    assert encoder.backbone._conv_stem.weight.shape[1] == 1
    with torch.no_grad():
        adapted = encoder(gray_in)
    assert rgb.abs().mean() > 0.05  # real features, not a degenerate all-zero comparison
    assert torch.allclose(adapted, rgb, atol=1e-4)
    # ResNet: ImageNet mean/std differ by channel, so the gray model is close, not equal
    resnet = create_image_encoder("resnet18", weights="none", input_size=SIZE).eval()
    adapt_to_grayscale(resnet)
    assert resnet.backbone.conv1.in_channels == 1
    assert resnet(to_model_input(gray, resnet.spec)).shape == (3, 512)


def test_frozen_modules_get_no_gradient_and_keep_weights_while_the_rest_change():
    torch.manual_seed(0)
    encoder = create_image_encoder("resnet18", weights="none", input_size=SIZE)
    frozen = freeze_backbone(encoder, ["conv1", "bn1", "layer1"])
    head = build_head("concat-mlp", modalities=["image"], n_outputs=1, image_dim=512,
                      view_fusion="mean", n_views=2)
    model = FinetuneModel(encoder, head, frozen).train()
    assert not encoder.backbone.layer1.training and encoder.backbone.layer2.training
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    groups = model.param_groups(image_lr=0.01, head_lr=0.01)
    optimiser = torch.optim.SGD(groups, lr=0.01)
    images = (torch.rand(4, 2, SIZE, SIZE) * 255).to(torch.uint8)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    loss = model(images, mask).pow(2).mean()
    loss.backward()
    assert encoder.backbone.conv1.weight.grad is None
    assert all(p.grad is None for p in encoder.backbone.layer1.parameters())
    assert encoder.backbone.fc.weight.grad is None  # the unused classifier is frozen too
    assert encoder.backbone.layer4[1].conv2.weight.grad.abs().sum() > 0
    optimiser.step()
    after = encoder.backbone.state_dict()
    for key, value in before.items():
        frozen_key = key.startswith(("conv1.", "bn1.", "layer1.", "fc."))
        same = torch.equal(after[key], value)
        if frozen_key:  # weights and batch-norm statistics
            assert same, key
    assert not torch.equal(after["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    n_trainable = sum(p.numel() for g in groups if g["name"] == "encoder" for p in g["params"])
    assert n_trainable == sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def test_freeze_names_the_bad_prefix():
    encoder = create_image_encoder("resnet18", weights="none", input_size=SIZE)
    with pytest.raises(ConfigError, match=r"finetune.freeze: 'blocks' .*layer1"):
        freeze_backbone(encoder, ["conv1", "blocks"])


def test_views_go_through_the_shared_encoder_one_by_one():
    torch.manual_seed(0)
    encoder = create_image_encoder("efficientnet-lite0", input_size=SIZE).eval()
    head = build_head("concat-mlp", modalities=["image"], n_outputs=1, image_dim=1280,
                      view_fusion="concat", n_views=2)
    model = FinetuneModel(encoder, head).eval()
    images = (torch.rand(2, 2, SIZE, SIZE) * 255).to(torch.uint8)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    with torch.no_grad():
        views = model.embed_views(images, mask)
        single = encoder(to_model_input(images[1, :1], encoder.spec))
    assert views.shape == (2, 2, 1280)
    assert torch.allclose(views[1, 0], single[0], atol=1e-5)
    assert torch.equal(views[1, 1], torch.zeros(1280))  # a missing view stays zero


# ----------------------------------------------------------------------------- data


def test_view_slots_follow_the_store_layout(phantoms: Manifest):
    frontal, width = view_slots(phantoms, "frontal")
    assert width == 1 and frontal[0][0].endswith("s00_frontal.png")
    concat, width = view_slots(phantoms, "concat")
    assert width == 2 and concat[0][1].endswith("s00_lateral.png")
    with pytest.raises(ConfigError, match="image.views"):
        view_slots(phantoms, "max")


def test_study_dataset_augments_only_when_asked_and_flags_unreadable_views(
    phantoms: Manifest, tmp_path: Path
):
    slots, _ = view_slots(phantoms, "concat")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    slots = [list(s) for s in slots[:4]]
    slots[1][1] = str(bad)
    y = phantoms.label_matrix("cardiomegaly")[:4]
    text = np.arange(8, dtype=np.float32).reshape(4, 2)
    plain = StudyImages(slots, SIZE, y, text, np.ones(4, dtype=bool))
    a, b = plain[0], plain[0]
    assert a["image"].dtype == torch.uint8 and a["image"].shape == (2, SIZE, SIZE)
    assert torch.equal(a["image"], b["image"])  # no augmentation: deterministic
    assert plain[1]["image_mask"].tolist() == [True, False] and "broken.png" in plain[1]["errors"][0]
    aug = StudyImages(slots, SIZE, y, augment=build_augment({"hflip": 1.0}))
    assert torch.equal(aug[0]["image"][0], a["image"][0].flip(-1))
    batch = collate_studies([plain[i] for i in range(4)])
    assert batch["image"].shape == (4, 2, SIZE, SIZE) and batch["text"].shape == (4, 2)
    assert batch["y"].shape == (4, 1) and len(batch["errors"]) == 1


# ----------------------------------------------------------------------------- end to end


def _config(phantoms_path: Path, tmp_path: Path, **changes: Any) -> RunConfig:
    raw = {
        "name": "tiny-finetune",
        "runs_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"manifest": str(phantoms_path), "task": "cardiomegaly",
                 "store": str(tmp_path / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": SIZE, "views": "mean"},
        "text": {"encoder": "tfidf", "sections": ["indication"], "options": {"svd_dim": 4}},
        "model": {"kind": "concat-mlp", "modalities": ["image", "text"], "hidden": [16],
                  "dropout": 0.0},
        "training": {"mode": "finetune", "lr": 0.003, "batch_size": 8, "max_epochs": 3,
                     "early_stopping": None},
        "finetune": {"freeze": ["_conv_stem", "_bn0", "_blocks.0"], "image_lr": 0.001,
                     "augment": {"hflip": 0.5, "rotate_deg": 5, "translate": 0.02,
                                 "scale": [0.95, 1.05], "brightness": 0.05, "contrast": 0.05}},
    }
    for key, value in changes.items():
        set_dotted(raw, key, value)
    return validate_run(raw)


def test_tiny_finetune_run_writes_the_run_directory_and_learns(phantoms: Manifest, tmp_path: Path):
    path = phantoms.save(tmp_path / "manifest.parquet")
    config = _config(path, tmp_path)
    run_dir = train_run(config, progress=False)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["images"] == "phantom"
    assert info["n"] == {"train": 20, "val": 8, "test": 8}
    for name in ("config.yaml", "epochs.csv", "predictions.parquet", "model.safetensors",
                 "model.json", "encoder.safetensors", "plots/training_curves.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / ".checkpoints").exists()
    epochs = pd.read_csv(run_dir / "epochs.csv")
    assert list(epochs.columns) == ["epoch", "split", "loss", "accuracy", "precision", "recall",
                                    "f1", "auroc", "lr"]
    train_loss = epochs[epochs["split"] == "train"]["loss"].to_numpy()
    assert len(train_loss) == 3 and train_loss[-1] < train_loss[0]
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert sorted(preds["split"].unique()) == ["test", "val"] and len(preds) == 16
    assert {"y__cardiomegaly", "p__cardiomegaly"} <= set(preds.columns)
    assert preds["p__cardiomegaly"].between(0, 1).all()
    sidecar = json.loads((run_dir / "model.json").read_text())
    assert sidecar["image"]["finetuned"] is True and sidecar["image"]["grayscale"] is False
    assert sidecar["head"]["kwargs"]["image_dim"] == 1280 and sidecar["text"]["state"]
    # the head file has the embedding path's keys; the encoder file the ImageEncoder's
    head = build_head(**sidecar["head"]["kwargs"])
    assert set(load_file(str(run_dir / "model.safetensors"))) == set(head.state_dict())
    # the fine-tuned encoder comes back and reproduces the stored val/test embeddings
    encoder = load_finetuned_encoder(run_dir)
    stored = load_image_embeddings(info["stores"]["image"])
    first = stored.image_ids[0]
    view = next(v for views in phantoms.df["views"] for v in views if v["image_id"] == first)
    pixels = torch.from_numpy(decode_resized(view["path"], SIZE))[None]
    with torch.no_grad():
        again = encoder(to_model_input(pixels, encoder.spec))[0].numpy()
    assert np.allclose(again, stored.vectors[0], atol=1e-4)
    pretrained = create_image_encoder("efficientnet-lite0", input_size=SIZE).eval()
    frozen_key = "backbone._blocks.0._depthwise_conv.weight"
    trained_key = "backbone._blocks.10._depthwise_conv.weight"
    assert torch.equal(encoder.state_dict()[frozen_key], pretrained.state_dict()[frozen_key])
    assert not torch.equal(encoder.state_dict()[trained_key], pretrained.state_dict()[trained_key])
    # the predictions equal the head on those embeddings (what evaluation reads)
    run = load_run(run_dir)
    inputs, _ = run.split_inputs("test")
    test_preds = preds[preds["split"] == "test"]["p__cardiomegaly"].to_numpy()
    assert np.allclose(run.predict_proba(inputs)[:, 0], test_preds, atol=1e-5)


def test_image_only_grayscale_run_and_its_encoder(phantoms: Manifest, tmp_path: Path):
    path = phantoms.save(tmp_path / "manifest.parquet")
    config = _config(path, tmp_path, **{
        "name": "gray-cnn", "model.modalities": ["image"], "model.hidden": [],
        "image.views": "frontal", "finetune.grayscale": True, "training.max_epochs": 1,
    })
    run_dir = train_run(config, progress=False)
    sidecar = json.loads((run_dir / "model.json").read_text())
    assert sidecar["image"]["grayscale"] is True and sidecar["text"] is None
    encoder = load_finetuned_encoder(run_dir)
    assert encoder.spec.channels == 1 and encoder.backbone._conv_stem.weight.shape[1] == 1
    with pytest.raises(DataError, match="not fine-tuned"):
        (run_dir / "model.json").write_text(json.dumps({**sidecar, "image": {**sidecar["image"], "finetuned": False}}))
        load_finetuned_encoder(run_dir)


def test_finetune_reads_pixels_from_the_decoded_image_cache(
    phantoms: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """data.image_cache: every image decoded once; a rerun decodes nothing and learns the same."""
    import cxrfuse.data.images as decode_module
    import cxrfuse.training.finetune as finetune_module

    path = phantoms.save(tmp_path / "manifest.parquet")
    base = {"training.max_epochs": 2, "finetune.augment": {}}
    plain = train_run(_config(path, tmp_path / "plain", **base), progress=False)
    cache_dir = tmp_path / "cache"
    cached = train_run(_config(path, tmp_path / "cached", **base, **{
        "data.image_cache": str(cache_dir)}), progress=False)  # fmt: skip
    (folder,) = cache_dir.glob(f"decoded-{SIZE}px-*")
    assert len(list(folder.glob("decoded-*.npy"))) == 1  # 36 studies x 2 views, one shard
    # the same pixels, so the same training: identical predictions with and without the cache
    a = pd.read_parquet(plain / "predictions.parquet")["p__cardiomegaly"]
    b = pd.read_parquet(cached / "predictions.parquet")["p__cardiomegaly"]
    assert np.allclose(a, b, atol=1e-6)

    def no_decoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded a file although the cache holds it")

    monkeypatch.setattr(finetune_module, "decode_resized", no_decoding)
    monkeypatch.setattr(decode_module, "decode_resized", no_decoding)
    slots, _ = view_slots(phantoms, "mean")
    cache, rows = manifest_image_cache(cache_dir, phantoms, SIZE, fit="pad")  # the runs' fit
    assert fill_cache(cache, progress=False) == 0
    dataset = StudyImages(slots, SIZE, phantoms.label_matrix("cardiomegaly"), cache=cache,
                          cache_rows=rows)  # fmt: skip
    item = dataset[0]
    assert bool(item["image_mask"].any()) and not item["errors"]


@pytest.mark.parametrize("encoder", ["efficientnet-lite0", "resnet18"])
def test_default_freeze_list_fits_every_backbone(encoder: str, tmp_path: Path):
    """The default finetune.freeze is empty, so fine-tuning any backbone needs no freeze list."""
    from cxrfuse.training.finetune import build_finetune_encoder

    config = _config(tmp_path / "m.parquet", tmp_path, **{"image.encoder": encoder,
                                                           "image.weights": "none"})  # fmt: skip
    config = config.model_copy(update={"finetune": type(config.finetune)()})
    assert config.finetune.freeze == []
    built, frozen = build_finetune_encoder(config)
    assert frozen == []
    _, first_conv = find_input_conv(built.backbone)
    assert first_conv.weight.requires_grad


def test_exported_finetune_run_predicts_alone(phantoms: Manifest, tmp_path: Path):
    """A fine-tune run (its own encoder.safetensors, tf-idf indication) exported as a run and as
    ONNX, the folders moved and the run deleted: predict from each gives the run's stored test
    probabilities (both backends for the ONNX folder)."""
    import shutil

    from typer.testing import CliRunner

    from cxrfuse.cli import app
    from cxrfuse.inference import Predictor

    path = phantoms.save(tmp_path / "manifest.parquet")
    run_dir = Path(train_run(_config(path, tmp_path, **{"training.max_epochs": 1}), progress=False))
    stored = pd.read_parquet(run_dir / "predictions.parquet")
    stored = stored[stored["split"] == "test"].set_index("study_id")["p__cardiomegaly"]
    runner = CliRunner()
    moved = {}
    for fmt in ("run", "onnx"):
        first = tmp_path / f"export-{fmt}"
        result = runner.invoke(app, ["export", str(run_dir), "--to", str(first), "--format", fmt])
        assert result.exit_code == 0, result.output
        assert (first / "encoder.safetensors").is_file()
        moved[fmt] = Path(shutil.copytree(first, tmp_path / "elsewhere" / fmt))
        shutil.rmtree(first)
    shutil.rmtree(run_dir)
    df = phantoms.df.set_index("study_id")
    for folder, backend in ((moved["run"], "torch"), (moved["onnx"], "torch"),
                            (moved["onnx"], "onnxruntime")):  # fmt: skip
        predictor = Predictor(folder, backend=backend)
        for study_id in stored.index[:3]:
            row = df.loc[study_id]
            answer = predictor.predict([v["path"] for v in row["views"]], indication=row["indication"])
            assert answer.probabilities["Cardiomegaly"] == pytest.approx(stored[study_id], abs=1e-4), \
                (folder.name, backend, study_id)
