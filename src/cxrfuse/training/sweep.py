"""Hyperparameter sweeps with Optuna that never read the test split.

``run_sweep(config, space, trials, sweep_dir)``:

1. writes ``search_manifest.parquet``: the config's manifest without its test rows, so no
   trial can read a test study (not its image, its report nor its label);
2. runs an Optuna study (TPE sampler seeded with the run seed, median pruning on the
   validation loss of each epoch through :class:`PruningCallback`) stored in ``study.db``
   (SQLite): a sweep killed at any point resumes with the trials it finished (a trial cut off
   mid-way is marked failed and its parameters are tried again first);
3. the objective is the best epoch's validation loss of each trial run (``trials/trial-NNN``);
4. writes ``trials.csv``, ``sweep.json`` (best trial, its config) and the optimisation-history
   and parameter-importance plots;
5. retrains the best trial's config on the full manifest as ``best/``: the one run whose test
   split is read, by the evaluation that follows (``cxrfuse sweep`` evaluates it once).

A search space (YAML) maps dotted config keys to ``{type: float|int|categorical, low, high,
log, step, choices}``; :data:`DEFAULT_SPACES` are the defaults per training mode
(``configs/sweep/*.yaml`` are copies).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pandas as pd
from pydantic import Field, ValidationError, model_validator

from cxrfuse.config import RunConfig, Strict, format_validation_error, set_dotted, validate_run
from cxrfuse.data import read_manifest
from cxrfuse.files import sha256_json, write_json, write_text
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.problems import ConfigError, CxrfuseError
from cxrfuse.rundir import RunDir, layout
from cxrfuse.runtime import now_iso
from cxrfuse.training.experiment import same_except_tracking
from cxrfuse.training.runner import train_run


class ParamSpec(Strict):
    """One searched key: a float or int range (``log`` scale, ``step``) or categorical choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs choices: [...]")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class SearchSpace(Strict):
    """``params``: dotted config key -> :class:`ParamSpec`."""

    params: dict[str, ParamSpec] = Field(min_length=1)


DEFAULT_SPACES: dict[str, dict[str, Any]] = {
    "embeddings": {"params": {
        "training.lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "training.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "training.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    }},
    "finetune": {"params": {
        "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "finetune.image_lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    }},
}  # fmt: skip
"""The default search space per ``training.mode`` (the seeds' hand-tuned lr 0.003 and dropout
0.3 lie inside)."""


def load_space(source: str | Path | Mapping[str, Any] | None, config: RunConfig) -> SearchSpace:
    """A search space from a YAML file (or a mapping; ``None``: the default of the training
    mode); every key must be a key of the run config."""
    import yaml

    where = "search space"
    if source is None:
        raw: Any = DEFAULT_SPACES[config.training.mode]
    elif isinstance(source, Mapping):
        raw = source
    else:
        path, where = Path(source), str(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such search-space file")
        try:
            raw = yaml.safe_load(path.read_bytes())  # PyYAML reads UTF-16 with a BOM too
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        except RecursionError as err:
            raise ConfigError(f"{path}: nested too deeply to be a search space") from err
    if isinstance(raw, Mapping) and "params" not in raw:
        raw = {"params": raw}
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, SearchSpace, where)) from None
    base = config.model_dump(mode="json")
    for key in space.params:
        node: Any = base
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise ConfigError(f"{where}: params.{key}: not a key of the run config")
            node = node[part]
    return space


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """One trial's values of every searched key."""
    values: dict[str, Any] = {}
    for key, spec in space.params.items():
        if spec.type == "categorical":
            values[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log,
                                            step=int(spec.step or 1))  # fmt: skip
        else:
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log,
                                              step=None if spec.log else spec.step)  # fmt: skip
    return values


def with_values(config: RunConfig, values: Mapping[str, Any], *, name: str, runs_dir: Path,
                manifest: str | None = None, tracking: bool = True) -> RunConfig:  # fmt: skip
    """``config`` with the searched values set (validated: errors name the key)."""
    raw = copy.deepcopy(config.model_dump(mode="json"))
    for key, value in values.items():
        set_dotted(raw, key, value)
    raw["name"], raw["runs_dir"] = name, str(runs_dir)
    if manifest is not None:
        raw["data"]["manifest"] = manifest
    if not tracking:
        raw["tracking"] = {"kind": "none"}
    return validate_run(raw, "sweep")


class PruningCallback(pl.Callback):
    """Reports each epoch's validation loss to the Optuna trial and stops a trial that the
    median pruner prunes (``optuna.TrialPruned``)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        import optuna

        rows = [r for r in getattr(module, "history", []) if r["split"] == "val"]
        if not rows or not math.isfinite(rows[-1]["loss"]):
            return
        self.trial.report(float(rows[-1]["loss"]), step=int(rows[-1]["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {rows[-1]['epoch']}: val loss above the median")


def search_manifest(config: RunConfig, sweep_dir: Path) -> Path:
    """The manifest without its test rows (what every trial reads)."""
    manifest = read_manifest(config.data.manifest)
    keep = manifest.df["split"].astype(str) != "test"
    if not keep.any():
        raise CxrfuseError(f"{config.data.manifest}: no train/val rows to search on")
    out = sweep_dir / layout.SWEEP_MANIFEST
    manifest.replace(df=manifest.df[keep].reset_index(drop=True)).save(out)
    return out


def _study(sweep_dir: Path, name: str, seed: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(sweep_dir / layout.SWEEP_STUDY).resolve()}"
    study = optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True, direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )  # fmt: skip
    # seeded, and offset by the trials already stored: a resumed sweep does not redraw the
    # random start-up points it has already tried
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study


def finished_trials(study: Any) -> list[Any]:
    """Trials that ran to an end (complete or pruned)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]  # fmt: skip


def _same_search(study: Any, config: RunConfig, space: SearchSpace, sweep_dir: Path) -> None:
    """A resumed study must search the same space from the same config (tracking aside)."""
    base = config.model_dump(mode="json")
    base.pop("tracking", None)
    stamp = {"config": sha256_json(base), "space": sha256_json(space.model_dump(mode="json"))}
    stored = {k: study.user_attrs.get(k) for k in stamp}
    if all(v is None for v in stored.values()):
        for key, value in stamp.items():
            study.set_user_attr(key, value)
        return
    changed = [k for k in stamp if stored[k] != stamp[k]]
    if changed:
        raise ConfigError(f"{sweep_dir / layout.SWEEP_STUDY}: this sweep searched another "
                          f"{' and '.join(changed)}; resume it unchanged or give a new --out")


def _recover_interrupted(study: Any) -> int:
    """Trials left ``RUNNING`` by a killed sweep: marked failed, their parameters queued."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        # not skip_if_exists: the failed trial itself has these parameters, so Optuna would
        # skip every retry; each stale trial is queued once, when it is marked failed
        study.enqueue_trial(trial.params)
    return len(stale)


def run_sweep(config: RunConfig, space: SearchSpace, trials: int, sweep_dir: str | Path, *,
              progress: bool = False, say: Any = print,
              retrain_best: bool = True) -> dict[str, Any]:  # fmt: skip
    """Search ``space`` for ``trials`` finished trials on train/val only, then (with
    ``retrain_best``) retrain the best config on the full manifest as ``<sweep_dir>/best`` (not
    evaluated here); returns what ``sweep.json`` holds."""
    import optuna

    if trials < 1:
        raise ConfigError("--trials: give at least 1")
    sweep_dir = Path(sweep_dir)
    study = _study(sweep_dir, config.name, config.seed)
    _same_search(study, config, space, sweep_dir)
    write_text(sweep_dir / layout.SWEEP_SPACE, _yaml(space.model_dump(mode="json")))
    manifest = str(search_manifest(config, sweep_dir))
    if n := _recover_interrupted(study):
        say(f"{n} trial(s) cut off by an earlier stop: marked failed and queued again")
    trial_dir = sweep_dir / layout.SWEEP_TRIAL_RUNS

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        trial_config = with_values(config, values, name=f"trial-{trial.number:03d}",
                                   runs_dir=trial_dir, manifest=manifest, tracking=False)  # fmt: skip
        run_dir = train_run(trial_config, progress=progress, callbacks=[PruningCallback(trial)])
        fit = RunDir(run_dir).info().fit
        loss = None if fit is None else fit.best_val_loss
        if loss is None or not math.isfinite(loss):
            raise CxrfuseError(f"trial {trial.number}: no finite validation loss")
        return float(loss)

    done = len(finished_trials(study))
    if done:
        say(f"resuming: {done} of {trials} trial(s) finished before")
    if (left := trials - done) > 0:
        study.optimize(objective, n_trials=left, catch=(CxrfuseError,), gc_after_trial=True)
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise CxrfuseError(f"sweep {config.name}: no trial completed (see {trial_dir} and "
                           f"{sweep_dir / layout.SWEEP_STUDY})")
    result = summarise(study, config, space, sweep_dir)
    if (sweep_dir / layout.SWEEP_RESULT).is_file():  # the test looks of earlier runs stay
        result["test_looks"] = read_sweep(sweep_dir).get("test_looks", [])
    if not retrain_best:
        write_json(sweep_dir / layout.SWEEP_RESULT, result, indent=2)
        return result
    best = with_values(config, result["best"]["params"], name=layout.SWEEP_BEST,
                       runs_dir=sweep_dir)  # fmt: skip
    best_run = RunDir(best.run_dir)
    if best_run.status() == "finished" and same_except_tracking(best_run, best):
        say("best config trained before, kept")
    else:
        say(f"retraining the best trial ({result['best']['number']}) on train/val -> {best.run_dir}")
        train_run(best, progress=progress)
    result["best_run"] = str(best.run_dir)
    write_json(sweep_dir / layout.SWEEP_RESULT, result, indent=2)
    return result


def record_test_look(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Note in ``sweep.json`` that the best run was evaluated on test (call it after each
    evaluation): a sweep extended with more trials whose best changes reads the test split
    again, and its report says how often."""
    path = Path(sweep_dir) / layout.SWEEP_RESULT
    result = read_sweep(sweep_dir)
    looks = [*result.get("test_looks", []),
             {"trials": result["trials_requested"], "best": result["best"]["number"],
              "at": now_iso()}]  # fmt: skip
    write_json(path, {**result, "test_looks": looks}, indent=2)
    return looks


def _yaml(payload: Any) -> str:
    import yaml

    return yaml.safe_dump(payload, sort_keys=False)


def trials_table(study: Any) -> pd.DataFrame:
    """One row per trial: number, state, objective (best val loss), epochs, parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"trial": t.number, "state": t.state.name, "val_loss": t.value,
                     "epochs_reported": len(t.intermediate_values),
                     **{f"param {k}": v for k, v in t.params.items()}})  # fmt: skip
    return pd.DataFrame(rows)


def summarise(study: Any, config: RunConfig, space: SearchSpace, sweep_dir: Path) -> dict[str, Any]:
    """``trials.csv``, the plots, and the content of ``sweep.json``."""
    table = trials_table(study)
    table.to_csv(sweep_dir / layout.SWEEP_TRIALS, index=False)
    best = study.best_trial
    history, importance = (sweep_dir / name for name in layout.SWEEP_PLOTS)
    plot_history(table, history)
    importances = param_importances(study)
    plot_importances(importances, importance)
    counts = table["state"].value_counts().to_dict()
    return {
        "name": config.name, "objective": "best-epoch validation loss (minimised)",
        "sampler": f"TPE (seed {config.seed}, + the trials stored when a sweep resumes)", "pruner": "median on val loss per epoch",
        "trials_requested": len(finished_trials(study)), "states": counts,
        "test_split_read_by_trials": False,
        "best": {"number": best.number, "val_loss": best.value, "params": best.params},
        "importances": importances, "manifest": config.data.manifest,
        "search_manifest": layout.SWEEP_MANIFEST,
    }  # fmt: skip


def param_importances(study: Any) -> dict[str, float]:
    """fANOVA importances of the parameters (empty with fewer than 2 complete trials)."""
    import optuna

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # e.g. every trial had the same values
        return {}


def plot_history(table: pd.DataFrame, path: Path) -> Path:
    """Each complete trial's validation loss, the best so far, and pruned trials at the loss
    of the last epoch they reported."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    done = table[table["state"] == "COMPLETE"].sort_values("trial")
    ax.plot(done["trial"], done["val_loss"], "o", label="trial (best epoch)")
    if not done.empty:
        last = int(table["trial"].max())
        xs = [*done["trial"], last]
        ax.step(xs, [*done["val_loss"].cummin(), done["val_loss"].min()], where="post",
                label="best so far")  # fmt: skip
    pruned = table[(table["state"] == "PRUNED") & table["val_loss"].notna()]
    if not pruned.empty:
        ax.plot(pruned["trial"], pruned["val_loss"], "x", color="grey",
                label="pruned (last epoch reported)")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.set_title("Optimisation history (validation only)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_importances(importances: Mapping[str, float], path: Path) -> Path:
    """Horizontal bars of the parameter importances."""
    fig = new_figure(figsize=(7, 0.6 * max(len(importances), 2) + 1.2))
    ax = fig.subplots()
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("importance (fANOVA, sums to 1)")
    else:
        ax.text(0.5, 0.5, "fewer than 2 complete trials", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Parameter importance")
    return save_figure(fig, path)


def read_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """``sweep.json`` of a finished sweep."""
    path = Path(sweep_dir) / layout.SWEEP_RESULT
    if not path.is_file():
        raise CxrfuseError(f"{sweep_dir}: no {layout.SWEEP_RESULT}; is this a finished sweep?")
    return json.loads(path.read_text(encoding="utf-8"))
