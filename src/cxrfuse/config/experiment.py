"""Experiment configs (grids of runs: ``base`` + ``grid`` + ``seeds`` + ``overrides_by``), run
names of grid points, and loading either kind of config from YAML with ``--set`` overrides."""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from cxrfuse.config.common import (
    MAX_SEED,
    Strict,
    check_folder_name,
    format_validation_error,
    get_dotted,
    parse_override,
    read_yaml_config,
    set_dotted,
)
from cxrfuse.problems import ConfigError

Modality = Literal["image", "text"]
from cxrfuse.config.run import (
    EXPERIMENT_RUNS_FOLDER,
    RunConfig,
    apply_offline,
    validate_run,
)


class OverrideRule(Strict):
    """Extra settings for the grid points that match ``when`` (dotted key -> value)."""

    when: dict[str, Any]
    set: dict[str, Any]


class ExperimentConfig(Strict):
    """A grid of runs: ``base`` (a run config or a path to one), ``grid`` (dotted key ->
    values, cartesian product), ``seeds`` and ``overrides_by`` rules."""

    name: str
    runs_dir: str = "runs"
    base: RunConfig
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    overrides_by: list[OverrideRule] = Field(default_factory=list)
    offline: bool = Field(False, description="swap in the offline encoders after expansion")

    @field_validator("overrides_by", mode="before")
    @classmethod
    def _empty_mapping(cls, value: Any) -> Any:
        return [] if value == {} or value is None else value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give at least one seed, each once")
        if any(isinstance(s, bool) or not 0 <= s <= MAX_SEED for s in value):
            raise ValueError(f"seeds are integers in 0 .. {MAX_SEED}, got {value}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_folder_name(value, "experiment")

    @property
    def experiment_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def expand(self, source: str = "experiment") -> list[RunConfig]:
        """One run config per grid point and seed, named after the grid point."""
        keys = list(self.grid)
        base = self.base.model_dump(mode="json")
        runs, names = [], set()
        for values in itertools.product(*(self.grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, values))
            for seed in self.seeds:
                raw = copy.deepcopy(base)
                for key, value in point.items():
                    set_dotted(raw, key, copy.deepcopy(value))
                for rule in self.overrides_by:
                    if all(_same(point.get(k, get_dotted(raw, k)), v) for k, v in rule.when.items()):
                        for key, value in rule.set.items():
                            set_dotted(raw, key, copy.deepcopy(value))
                raw["seed"] = seed
                raw["name"] = run_name(point, seed) if point else f"{self.base.name}-seed{seed}"
                raw["runs_dir"] = str(self.experiment_dir / EXPERIMENT_RUNS_FOLDER)
                tracking = raw.setdefault("tracking", {})
                if tracking.get("kind", "none") != "none":  # one tracker experiment per grid
                    tracking["experiment"] = tracking.get("experiment") or self.name
                    if tracking.get("uri") is None and tracking["kind"] == "mlflow":
                        tracking["uri"] = default_mlflow_uri(self.runs_dir)
                    tracking["tags"] = {**(tracking.get("tags") or {}), "experiment": self.name,
                                        "seed": str(seed), **{k: value_slug(k, v)
                                                              for k, v in point.items()}}
                config = validate_run(raw, source)
                if self.offline:
                    config = apply_offline(config)
                if config.name in names:
                    raise ConfigError(f"{source}: two grid points share the run name {config.name!r}")
                names.add(config.name)
                runs.append(config)
        return runs

    def grid_values(self, config: RunConfig) -> dict[str, Any]:
        """The grid key values of one expanded run (for summary tables)."""
        raw = config.model_dump(mode="json")
        return {key: get_dotted(raw, key) for key in self.grid}


def default_mlflow_uri(runs_dir: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<folder holding runs_dir>/mlruns.db``."""
    import os

    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str(Path(runs_dir).resolve().parent / "mlruns.db")


def _same(a: Any, b: Any) -> bool:
    return yaml.safe_dump(a) == yaml.safe_dump(b)


# ----------------------------------------------------------------------------- run names


def value_slug(key: str, value: Any) -> str:
    """A short readable name for one grid value (``[image, text]`` -> ``multimodal``)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "modalities" and isinstance(value, list):
        return "multimodal" if len(value) > 1 else str(value[0])
    if leaf == "subsample":
        if value is None:
            return "full"
        fraction = value.get("positive_fraction") if isinstance(value, Mapping) else value
        return f"sub{round(100 * (1 - float(fraction)))}"
    if value is None:
        return f"no-{leaf}"
    if isinstance(value, bool):
        return leaf if value else f"no-{leaf}"
    if isinstance(value, (int, float)):
        return f"{leaf}{value:g}" if isinstance(value, float) else f"{leaf}{value}"
    if isinstance(value, Mapping):
        return "-".join(value_slug(f"{key}.{k}", v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value) or f"no-{leaf}"
    return str(value)


def run_name(point: Mapping[str, Any], seed: int) -> str:
    """``multimodal-focal-sub75-seed0``: modalities first, then the other grid values."""
    keys = sorted(point, key=lambda k: not k.endswith("modalities"))
    parts = [value_slug(k, point[k]) for k in keys]
    name = "-".join([*parts, f"seed{seed}"])
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name)


# ----------------------------------------------------------------------------- dotted keys


# ----------------------------------------------------------------------------- errors


# ----------------------------------------------------------------------------- loading

EXPERIMENT_KEYS = frozenset(ExperimentConfig.model_fields) - {"name", "runs_dir"}


def is_experiment(raw: Mapping[str, Any]) -> bool:
    return any(k in raw for k in ("grid", "base", "seeds", "overrides_by"))


def _base_path(reference: str, config_path: Path) -> Path:
    candidates = [config_path.parent / reference, Path(reference)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        tried = ", ".join(str(p) for p in candidates)
        raise ConfigError(f"{config_path}: base: no such file {reference!r} (tried {tried})")
    return found


def load_config(
    path: str | Path, overrides: Iterable[str] = ()
) -> RunConfig | ExperimentConfig:
    """Read a run or experiment config (an experiment has ``grid``/``base``/``seeds``).

    ``overrides`` are ``key.path=value`` strings. For an experiment, keys of the experiment
    itself (``seeds``, ``grid.<key>``, ``name``) change the experiment; other keys change its
    base run config.
    """
    path = Path(path)
    raw = read_yaml_config(path)
    parsed = [parse_override(o) for o in overrides]
    if not is_experiment(raw):
        for key, value in parsed:
            set_dotted(raw, key, value)
        return validate_run(raw, str(path))
    if raw.get("base") is None:
        raise ConfigError(f"{path}: an experiment config (it has {sorted(k for k in EXPERIMENT_KEYS if k in raw)}) "
                          "needs base: (a run config mapping or a path to one); without it every "
                          "run would use the defaults")
    base = raw["base"]
    if isinstance(base, str):
        base = read_yaml_config(_base_path(base, path))
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: expected a run config mapping or a path to one")
    raw["base"] = base
    if isinstance(raw.get("tracking"), dict):  # an experiment's tracking: is its runs' tracking
        base["tracking"] = {**(base.get("tracking") or {}), **raw.pop("tracking")}
    for key, value in parsed:
        top = key.split(".", 1)[0]
        if top in EXPERIMENT_KEYS | {"name", "runs_dir"}:
            if top == "grid" and "." in key:
                raw.setdefault("grid", {})[key.split(".", 1)[1]] = value
            else:
                set_dotted(raw, key, value)
        else:
            set_dotted(base, key, value)
    base.setdefault("name", raw.get("name", "base"))
    try:
        experiment = ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, ExperimentConfig, str(path))) from None
    experiment.expand(str(path))  # every grid point must validate now, not halfway through
    return experiment


def load_run_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """A run config; an experiment config is refused with a pointer to ``cxrfuse experiment``."""
    config = load_config(path, overrides)
    if isinstance(config, ExperimentConfig):
        raise ConfigError(f"{path}: this is an experiment config (grid/seeds): run "
                          f"`cxrfuse experiment {path}`")
    return config


def load_experiment_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """An experiment config; a run config becomes a one-run experiment with its own seed."""
    config = load_config(path, overrides)
    if isinstance(config, RunConfig):
        return ExperimentConfig(name=config.name, runs_dir=config.runs_dir, base=config,
                                seeds=[config.seed])
    return config


def apply_offline_experiment(config: ExperimentConfig) -> ExperimentConfig:
    """The experiment with :func:`apply_offline` applied to its base run config and after
    every grid point, so a grid cannot bring a hub encoder back. A grid over the encoders
    themselves is refused: offline, its runs would all use the same substitute."""
    varied = [k for k in config.grid if k in ("image.encoder", "text.encoder")]
    if varied:
        raise ConfigError(
            f"experiment {config.name!r}: --offline would replace every value of the grid key(s) "
            f"{varied} by one offline substitute; grid over offline encoders instead "
            "(e.g. configs/mimic-per-disease-cnn-offline.yaml)"
        )
    return config.model_copy(update={"base": apply_offline(config.base), "offline": True})
