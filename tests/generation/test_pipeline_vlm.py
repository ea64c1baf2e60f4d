"""`cxrfuse generate finetune` then `generate vlm --adapter` end to end on a tiny random Mllama
(Llama-3.2-Vision's architecture) built in the test, scored beside every baseline including
nearest-neighbour retrieval from a real embedding store; offline a hub id fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_vlm import build_tiny_manifest, build_tiny_vlm
from typer.testing import CliRunner

from cxrfuse.cli import app
from cxrfuse.generation.baselines import NEAREST
from cxrfuse.rundir import GenerationDir

runner = CliRunner()
FAST = ["--n-boot", "20", "--n-boot-language", "3", "--no-meteor", "--no-progress"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")
    manifest = build_tiny_manifest(tmp_path_factory.mktemp("cxr"), n_train=8, n_val=2, n_test=4)
    return model, manifest


def test_finetune_then_generate_with_the_adapter(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, manifest = tiny
    lora = tmp_path / "lora"
    result = runner.invoke(app, ["generate", "finetune", str(model), str(manifest), "--out",
                                 str(lora), "--set", "epochs=2", "--set", "grad_accum=1",
                                 "--set", "lr=0.01", "--set", "device=cpu", "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    gen_dir = GenerationDir(lora)
    assert (gen_dir.adapter_dir / "adapter_model.safetensors").is_file()
    info = json.loads(gen_dir.lora_info_path.read_text())
    assert info["epochs_done"] == 2 and info["studies"]["train"] == 8
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", "vlm", str(model), str(manifest), "--adapter",
                                 str(gen_dir.adapter_dir), "--out", str(out), "--max-new-tokens",
                                 "12", "--device", "cpu", "--baseline-store",
                                 str(tmp_path / "store"), *FAST])  # fmt: skip
    assert result.exit_code == 0, result.output
    gen = GenerationDir(out)
    frame, scores = gen.generated(), gen.scores()
    assert len(frame) == 4 and frame["generated"].map(lambda t: isinstance(t, str)).all()
    assert "adapter" in frame["model"].iloc[0] and NEAREST in scores["baselines"]
    assert gen.settings()["skipped"] == {"no image path": 1, "image file missing": 1}
    assert not frame["reference"].str.contains("FINDINGS:").any()  # scored without headers


def test_a_hub_id_offline_is_one_clear_error(tiny: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["generate", "vlm", "meta-llama/Llama-3.2-11B-Vision-Instruct",
                                 str(tiny[1]), "--out", str(tmp_path / "x"), *FAST])  # fmt: skip
    assert result.exit_code == 2
    assert "meta-llama/Llama-3.2-11B-Vision-Instruct" in result.output
    assert "download" in result.output and "Traceback" not in result.output
