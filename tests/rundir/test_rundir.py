"""The run-directory contract: typed files, clear errors naming the file and field, paths a
sidecar names kept inside the run directory, legacy run.json read by kind inference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrfuse.encoders import TfidfEncoder
from cxrfuse.fusion import build_head
from cxrfuse.inference import build_head_from
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import (
    ExperimentDir,
    ExternalDir,
    GenerationDir,
    HeadSidecar,
    HeadSpec,
    RunDir,
    RunInfo,
    TextSide,
    layout,
    p_column,
    y_column,
)


def head_sidecar(model, **changes) -> HeadSidecar:
    text = TextSide(encoder="minilm", weights="default", text_config={"sections": ["indication"]},
                    dim=4)
    fields = {"head": HeadSpec(kind="concat-mlp", kwargs=dict(model.init_kwargs)),
              "labels": ["a"], "task": "t", "output": "sigmoid", "text": text}
    return HeadSidecar(**(fields | changes))


def test_info_round_trip_and_status(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert run.status() is None and run.kind() is None
    info = RunInfo(name="r", kind="head", status="running", seed=3, labels=["a"])
    run.write_info(info)
    assert run.status() == "running" and run.kind() == "head"
    assert run.info() == info
    with pytest.raises(DataError, match="status is 'running', not 'finished'"):
        run.require(["head"])
    with pytest.raises(DataError, match="a head run; .* needs a clip run"):
        run.require(["clip"], finished=False)


def test_bad_run_json_names_the_file_and_field(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.info_path.write_text("{broken")
    with pytest.raises(DataError, match=r"run\.json: not valid JSON"):
        run.info()
    run.info_path.write_text(json.dumps({"name": "r", "kind": "head", "status": "done"}))
    with pytest.raises(DataError, match=r"run\.json: field 'status'"):
        run.info()


def test_legacy_run_json_infers_the_kind(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.info_path.write_text(json.dumps({"name": "c", "status": "finished", "task": "clip",
                                         "kept_epoch": 3, "locked": {"image": True}}))
    info = run.info()
    assert info.kind == "clip" and info.clip is not None and info.clip.kept_epoch == 3
    run.info_path.write_text(json.dumps({"name": "h", "status": "finished", "task": "t"}))
    assert run.info().kind == "head"


def test_head_rebuilds_from_the_sidecar_and_weights(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    head = build_head("concat-mlp", modalities=["text"], n_outputs=1, text_dim=4)
    run.write_weights(head.state_dict())
    run.write_sidecar(head_sidecar(head))
    rebuilt = build_head_from(run.sidecar(), run)
    x = torch.ones(2, 4)
    assert torch.equal(rebuilt(text=x), head.eval()(text=x))


def test_damaged_sidecar_or_weights_name_the_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    head = build_head("concat-mlp", modalities=["text"], n_outputs=1, text_dim=4)
    run.sidecar_path.write_text("{not json")
    with pytest.raises(CxrfuseError, match=r"model\.json: not valid JSON"):
        run.sidecar()
    run.sidecar_path.write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(CxrfuseError, match="format 'other/1', expected 'cxrfuse-head/1'"):
        run.sidecar()
    run.write_sidecar(head_sidecar(head, head=HeadSpec(kind="concat-mlp", kwargs={"bogus": 1})))
    run.write_weights(head.state_dict())
    with pytest.raises(CxrfuseError, match="cannot rebuild a fusion head"):
        build_head_from(run.sidecar(), run)
    run.write_sidecar(head_sidecar(head, head=HeadSpec(
        kind="concat-mlp", kwargs={**head.init_kwargs, "text_dim": 5})))  # fmt: skip
    with pytest.raises(CxrfuseError, match="does not hold the weights"):
        build_head_from(run.sidecar(), run)
    run.weights_path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match=r"model\.safetensors: not a readable safetensors file"):
        run.read_weights()


@pytest.mark.parametrize("bad", ["../elsewhere.safetensors", "/etc/passwd", "sub/../../x"])
def test_paths_a_sidecar_names_stay_inside_the_run(tmp_path: Path, bad: str) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    with pytest.raises(DataError, match="is not a file inside the run directory"):
        run.read_weights(bad, what="image.file")


def test_text_state_round_trip_gives_the_same_vectors(tmp_path: Path) -> None:
    texts = [f"report {i} with words {i % 7} and more {i % 3}" for i in range(40)]
    encoder = TfidfEncoder(svd_dim=5).fit(texts)
    run = RunDir(tmp_path)
    state = run.write_text_state(*encoder.export_state())
    again = TfidfEncoder.from_state(*run.read_text_state(state))
    np.testing.assert_array_equal(again.encode(texts[:5]), encoder.encode(texts[:5]))
    assert again.fingerprint() == encoder.fingerprint()


def test_predictions_are_checked_for_the_contract_columns(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    frame = pd.DataFrame({"study_id": ["1", "2"], "split": ["val", "test"],
                          y_column("Pleural Effusion"): [0.0, 1.0],
                          p_column("Pleural Effusion"): [0.2, 0.9]})  # fmt: skip
    run.write_predictions(frame)
    assert run.predictions(["Pleural Effusion"]).equals(frame)
    with pytest.raises(DataError, match=r"missing column\(s\) \['y__cardiomegaly'"):
        run.predictions(["Cardiomegaly"])
    run.write_predictions(frame[frame["split"] == "val"])
    with pytest.raises(DataError, match="no rows with split == 'test'"):
        run.predictions(["Pleural Effusion"])


def test_experiment_finds_its_runs(tmp_path: Path) -> None:
    exp = ExperimentDir(tmp_path)
    with pytest.raises(DataError, match="no run directories"):
        exp.run_dirs()
    for name in ("b", "a"):
        exp.run(name).write_info(RunInfo(name=name, kind="head", status="finished"))
    assert [r.name for r in exp.run_dirs()] == ["a", "b"]
    assert exp.run("a").info_path == tmp_path / layout.RUNS / "a" / layout.RUN_INFO


@pytest.mark.parametrize("cls", [RunDir, ExperimentDir, GenerationDir, ExternalDir])
def test_every_directory_class_shares_the_base(cls: type, tmp_path: Path) -> None:
    folder = cls(str(tmp_path / "some name"))
    assert folder.path == tmp_path / "some name" and folder.name == "some name"
    assert repr(folder) == f"{cls.__name__}({str(tmp_path / 'some name')!r})"
    assert os.fspath(folder) == str(tmp_path / "some name")
    assert folder.subgroup_plot("age group").parent == folder.plots_dir
    assert folder.subgroup_plot("age group").name.count(" ") == 0


def test_metrics_test_is_typed_and_as_result_keeps_the_file(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    raw = {"run": "r", "labels": ["a"], "modalities": ["text"], "threshold_method": "f1",
           "thresholds": {"a": 0.4}, "n_boot": 10, "val": {},
           "test": {"headline": {"auroc": 0.8}, "per_label": {"a": {"auroc": 0.8}},
                    "verdicts": [{"label": "a", "kind": "chance", "message": "m"}]},
           "ci": {"headline/auroc": {"low": 0.7, "high": 0.9}}}
    run.metrics_path.write_text(json.dumps(raw))
    metrics = run.metrics()
    assert metrics.test.headline["auroc"] == 0.8 and metrics.test.per_label["a"]["auroc"] == 0.8
    assert [v.kind for v in metrics.verdicts] == ["chance"] and metrics.test.baselines == {}
    assert metrics.as_result() == raw  # the keys the file holds, nothing added
    legacy = raw | {"test": {"headline": {"auroc": 0.8}}}  # written before verdicts existed
    run.metrics_path.write_text(json.dumps(legacy))
    assert run.metrics().test.verdicts is None and run.metrics().verdicts == []
    run.metrics_path.write_text(json.dumps(raw | {"test": {"headline": {}, "verdicts": [
        {"kind": "no-such-kind", "message": "m"}]}}))  # fmt: skip
    with pytest.raises(DataError, match="metrics.json"):
        run.metrics()
