"""Run and experiment configs: validation errors name key paths and allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cxrfuse.config import (
    ExperimentConfig,
    RunConfig,
    apply_offline,
    load_config,
    load_experiment_config,
    load_run_config,
    parse_override,
    run_name,
)
from cxrfuse.problems import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, payload: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(payload, sort_keys=False))
    return path


def test_defaults_validate_and_round_trip(tmp_path: Path) -> None:
    config = load_run_config(write(tmp_path, {"name": "x"}))
    assert config.text.sections == ["indication"]  # the honest default
    again = load_run_config(write(tmp_path, yaml.safe_load(config.to_yaml()), "again.yaml"))
    assert again == config


def test_bad_value_names_key_path_and_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, {"training": {"loss": {"kind": "hinge"}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "training.loss.kind" in text
    assert "'bce', 'ce' or 'focal'" in text and "'hinge'" in text


def test_unknown_key_fails_and_lists_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"training": {"early_stopping": {"patiense": 3}}}))
    text = str(err.value)
    assert "training.early_stopping.patiense" in text
    assert "unknown key" in text and "patience" in text and "min_delta" in text


def test_union_errors_are_merged_under_one_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"training": {"loss": {"pos_weight": "lots"}}}))
    lines = [ln for ln in str(err.value).splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[1].strip().startswith("training.loss.pos_weight:")
    assert "'balanced'" in lines[1]


def test_list_items_and_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.modalities\.1: .*'image' or 'text'"):
        load_config(write(tmp_path, {"model": {"modalities": ["image", "txt"]}}))
    with pytest.raises(ConfigError, match="needs model.output 'softmax'"):
        load_config(write(tmp_path, {"training": {"loss": {"kind": "ce"}}}))


def test_set_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "x"})
    config = load_run_config(path, ["training.lr=1e-4", "model.modalities=[text]",
                                    "data.subsample={positive_fraction: 0.25}",
                                    "training.early_stopping=null"])
    assert config.training.lr == pytest.approx(1e-4)
    assert config.model.modalities == ["text"]
    assert config.data.subsample is not None and config.data.subsample.positive_fraction == 0.25
    assert config.training.early_stopping is None
    with pytest.raises(ConfigError, match="training.lrr"):
        load_run_config(path, ["training.lrr=0.1"])
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("no-equals-sign")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_offline_swaps_encoders() -> None:
    config = RunConfig(image={"encoder": "resnet50", "offline_encoder": "efficientnet-lite1",
                              "weights": "some.pt"},
                       text={"encoder": "biobert", "offline_encoder": "tfidf",
                             "options": {"pooling": "cls"}, "offline_options": {"svd_dim": 64}})
    offline = apply_offline(config)
    assert offline.image.encoder == "efficientnet-lite1" and offline.image.weights == "default"
    assert offline.text.encoder == "tfidf" and offline.text.options == {"svd_dim": 64}
    assert config.image.encoder == "resnet50"  # the original is untouched


def test_experiment_expands_grid_with_names_and_rules(tmp_path: Path) -> None:
    base = write(tmp_path, {"name": "base", "model": {"kind": "late-fusion"}}, "base.yaml")
    path = write(tmp_path, {
        "name": "grid", "base": base.name, "seeds": [0, 1],
        "grid": {"training.loss.kind": ["bce", "focal"],
                 "data.subsample": [None, {"positive_fraction": 0.25}],
                 "model.modalities": [["image"], ["text"], ["image", "text"]]},
        "overrides_by": [{"when": {"training.loss.kind": "focal", "data.subsample": None},
                          "set": {"training.loss.alpha": 0.85, "training.loss.gamma": 1.5}}],
    }, "grid.yaml")
    experiment = load_experiment_config(path, ["training.max_epochs=3"])
    assert isinstance(experiment, ExperimentConfig)
    runs = experiment.expand()
    assert len(runs) == 24 and len({r.name for r in runs}) == 24
    by_name = {r.name: r for r in runs}
    focal_full = by_name["multimodal-focal-full-seed1"]
    assert (focal_full.training.loss.alpha, focal_full.training.loss.gamma) == (0.85, 1.5)
    focal_sub = by_name["text-focal-sub75-seed0"]
    assert focal_sub.training.loss.alpha == 0.25  # the rule did not match
    assert all(r.training.max_epochs == 3 and r.model.kind == "late-fusion" for r in runs)
    assert focal_full.run_dir == Path("runs/grid/runs/multimodal-focal-full-seed1")


def test_experiment_grid_key_errors_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"name": "g", "base": {}, "grid": {"training.loss.kindd": ["bce"]}})
    with pytest.raises(ConfigError, match="training.loss.kindd"):
        load_config(path)


def test_run_config_as_experiment_and_experiment_refused_by_train(tmp_path: Path) -> None:
    run = write(tmp_path, {"name": "solo", "seed": 3})
    experiment = load_experiment_config(run)
    assert [r.name for r in experiment.expand()] == ["solo-seed3"]
    grid = write(tmp_path, {"name": "g", "base": {}, "seeds": [0]}, "g.yaml")
    with pytest.raises(ConfigError, match="cxrfuse experiment"):
        load_run_config(grid)


def test_run_name_slugs() -> None:
    assert run_name({"model.modalities": ["image", "text"], "training.lr": 0.001}, 2) == \
        "multimodal-lr0.001-seed2"
    assert run_name({"image.views": "attention", "data.subsample": None}, 0) == \
        "attention-full-seed0"


def load_preset(path: Path) -> RunConfig | ExperimentConfig | None:
    """A training preset; None for a preset of another verb that its own loader accepts (CLIP,
    ``ingest csv`` table specs named ``ingest-*``)."""
    if path.name.startswith("ingest-"):
        from cxrfuse.config import load_table_spec

        load_table_spec(path)
        return None
    try:
        return load_config(path)
    except ConfigError:
        from cxrfuse.config.clip import load_clip_config

        load_clip_config(path)  # raises when the file is no valid config of either kind
        return None


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_validates(path: Path) -> None:
    config = load_preset(path)
    if config is None:
        return
    runs = config.expand(str(path)) if isinstance(config, ExperimentConfig) else [config]
    for run in runs:
        offline = apply_offline(run)
        assert offline.image.encoder in {"efficientnet-lite0", "efficientnet-lite1",
                                         "efficientnet-lite2"}
        assert offline.text.encoder in {"minilm", "tfidf"}


def test_presets_exist_with_honest_twins() -> None:
    presets = {p.stem: load_preset(p) for p in CONFIGS.glob("*.yaml")}
    presets = {name: config for name, config in presets.items() if config is not None}
    assert len(presets) >= 8
    for name, config in presets.items():
        base = config.base if isinstance(config, ExperimentConfig) else config
        leaky = {"findings", "impression"} & set(base.text.sections)
        if leaky:
            twin = presets.get(f"{name}-indication")
            assert twin is not None, f"{name} feeds {sorted(leaky)} but has no -indication twin"
            twin_base = twin.base if isinstance(twin, ExperimentConfig) else twin
            assert set(twin_base.text.sections) <= {"indication", "comparison"}
            assert twin_base.model == base.model and twin_base.training == base.training


def test_offline_experiment_applies_after_each_grid_point_and_refuses_encoder_grids() -> None:
    from cxrfuse.config import ExperimentConfig, apply_offline_experiment
    from cxrfuse.problems import ConfigError

    base = {"image": {"encoder": "resnet50", "offline_encoder": "efficientnet-lite0"},
            "text": {"encoder": "biobert", "offline_encoder": "minilm"}}
    grid = ExperimentConfig(name="g", base=base, grid={"image.weights": ["default", "none"]})
    runs = apply_offline_experiment(grid).expand()
    assert [r.image.encoder for r in runs] == ["efficientnet-lite0"] * 2
    assert [r.image.weights for r in runs] == ["default"] * 2  # the substitute's own weights
    assert {r.text.encoder for r in runs} == {"minilm"}
    over_encoders = ExperimentConfig(name="b", base=base,
                                     grid={"image.encoder": ["resnet18", "vgg16"]})
    with pytest.raises(ConfigError, match="image.encoder"):
        apply_offline_experiment(over_encoders)
