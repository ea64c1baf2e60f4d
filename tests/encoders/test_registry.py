"""Registry: names, specs, weights resolution and offline failures (never random fallback)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrfuse.encoders import (
    UnknownEncoderError,
    WeightsUnavailableError,
    create_image_encoder,
    create_text_encoder,
    get_image_encoder_spec,
    hub,
    list_image_encoders,
    list_text_encoders,
)
from cxrfuse.problems import CxrfuseError

XRV_NAMES = [
    f"xrv-densenet121-{k}" for k in ("all", "nih", "chex", "mimic_ch", "mimic_nb", "pc", "rsna")
]
TORCHVISION_NAMES = ["resnet18", "resnet50", "vgg16", "densenet121", "efficientnet-b1", "vit-b-16"]
LITE_NAMES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


def test_lists_hold_every_registered_encoder() -> None:
    assert set(list_image_encoders()) == set(XRV_NAMES + TORCHVISION_NAMES + LITE_NAMES)
    assert list_image_encoders(offline_only=True) == LITE_NAMES
    expected_text = {
        "biobert",
        "bert-base-uncased",
        "bioclinicalbert",
        "pubmedbert",
        "minilm",
        "tfidf",
    }
    assert set(list_text_encoders()) == expected_text
    assert list_text_encoders(offline_only=True) == ["minilm", "tfidf"]


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UnknownEncoderError, match="resnet18.*vgg16|efficientnet-lite0") as err:
        create_image_encoder("resnet-9000")
    assert isinstance(err.value, CxrfuseError) and "xrv-densenet121-all" in str(err.value)
    with pytest.raises(UnknownEncoderError, match="minilm") as err:
        create_text_encoder("gpt-17")
    assert "tfidf" in str(err.value) and "biobert" in str(err.value)


@pytest.mark.parametrize("name", XRV_NAMES + TORCHVISION_NAMES + LITE_NAMES)
def test_specs_are_consistent(name: str) -> None:
    spec = get_image_encoder_spec(name)
    assert spec.default_weights == spec.weight_names()[0]
    if name.startswith("xrv-"):
        assert (spec.channels, spec.normalisation, spec.grayscale_to_rgb) == (
            1,
            "xrv",
            "not-needed",
        )
        assert spec.feature_dim == 1024 and spec.input_size == 224 and not spec.offline
        assert ("NOT external" in spec.notes) == name.endswith("-all")
    else:
        assert spec.channels == 3 and spec.grayscale_to_rgb == "replicate"
        mean, std = spec.normalisation
        assert len(mean) == len(std) == 3
        assert spec.offline == (name in LITE_NAMES)


@pytest.mark.parametrize(
    "name", ["resnet18", "vgg16", "xrv-densenet121-all", "xrv-densenet121-nih"]
)
def test_default_weights_offline_raise_instead_of_random(name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        create_image_encoder(name)
    message = str(err.value)
    assert name in message and "offline mode" in message
    assert (
        "efficientnet-lite0/1/2" in message and "weights='none'" in message and "tfidf" in message
    )
    assert time.perf_counter() - start < 5  # no model is built before the weights are found


def test_unreachable_host_raises_without_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "host_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        create_image_encoder("resnet18")


def test_host_probe_fails_fast() -> None:
    start = time.perf_counter()
    assert not hub.host_reachable("https://cxrfuse-no-such-host.invalid/x.pt", timeout=1.0)
    assert time.perf_counter() - start < 5


def test_offline_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in hub.OFFLINE_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not hub.is_offline()
    monkeypatch.setenv("CXRFUSE_OFFLINE", "true")
    assert hub.is_offline()


def test_bad_weights_arguments() -> None:
    with pytest.raises(UnknownEncoderError, match="IMAGENET1K_V1"):
        create_image_encoder("resnet18", weights="IMAGENET9K")
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        create_image_encoder("efficientnet-lite0", weights="/nowhere/model.pt")
    with pytest.raises(ValueError, match="ambiguous"):
        create_image_encoder("efficientnet-lite0", weights=None)


def _features(encoder: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return encoder(x)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_state_dict_round_trip(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = create_image_encoder("efficientnet-lite0", weights="none", input_size=64)
    path = tmp_path / f"lite0{suffix}"
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = create_image_encoder("efficientnet-lite0", weights=path, input_size=64)
    assert loaded.weights == str(path)
    torch.testing.assert_close(_features(loaded), _features(source))


def test_local_file_with_other_head_and_wrapper_prefix(tmp_path: Path) -> None:
    source = create_image_encoder("efficientnet-lite0", weights="none", input_size=64)
    state = {f"module.backbone.{k}": v for k, v in source.backbone.state_dict().items()}
    state["module.backbone._fc.weight"] = torch.zeros(3, 1280)  # a fine-tuned 3-class head
    state["module.backbone._fc.bias"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "ckpt.pth")
    loaded = create_image_encoder(
        "efficientnet-lite0", weights=tmp_path / "ckpt.pth", input_size=64
    )
    torch.testing.assert_close(_features(loaded), _features(source))


def test_local_file_for_another_architecture_fails(tmp_path: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pt")
    with pytest.raises(WeightsUnavailableError, match="does not fit"):
        create_image_encoder("efficientnet-lite0", weights=tmp_path / "resnet.pt", input_size=64)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="not a readable state_dict"):
        create_image_encoder("efficientnet-lite0", weights=tmp_path / "junk.pt", input_size=64)


@pytest.mark.parametrize("weights", ["default", "none"])
def test_hub_text_encoders_offline_raise(weights: str) -> None:
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        create_text_encoder("biobert", weights=weights)
    message = str(err.value)
    assert "'biobert'" in message and "minilm" in message and "tfidf" in message
    assert time.perf_counter() - start < 15


def test_tfidf_has_no_pretrained_weights() -> None:
    with pytest.raises(ValueError, match="fit"):
        create_text_encoder("tfidf", weights="some/model")
    encoder = create_text_encoder("tfidf", svd_dim=2)
    assert encoder.requires_fit
    assert encoder.fit(["heart lungs", "lungs clear", "clear heart", "no effusion"]).encode(
        ["heart"]
    ).shape == (1, 2)
    assert np.isfinite(encoder.encode([""])).all()


def test_random_init_is_the_same_draw_every_time_and_leaves_the_rng_alone():
    """``weights: none`` must rebuild to the same encoder (a run on a random encoder is
    predicted and validated with the encoder it was trained on)."""
    import torch

    from cxrfuse.encoders import create_image_encoder

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_image_encoder("resnet18", weights="none", input_size=32)
    after = torch.rand(1)
    b = create_image_encoder("resnet18", weights="none", input_size=32)
    assert torch.equal(before, after)  # the caller's RNG stream is untouched
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
