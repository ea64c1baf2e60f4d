"""LoRA fine-tuning of the tiny Mllama on the tiny manifest: masking, loss, adapters, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from tiny_vlm import EOT, build_tiny_manifest, build_tiny_vlm

from cxrfuse.data import read_manifest
from cxrfuse.generation.lora import (
    EPOCH_COLUMNS,
    LoraSettings,
    add_lora,
    encode_examples,
    finetune_lora,
    is_checkpointing,
    mean_loss,
)
from cxrfuse.generation.studies import select_studies
from cxrfuse.generation.vlm import generate_reports, load_vlm
from cxrfuse.problems import CxrfuseError, DataError

FAST = {"r": 8, "alpha": 16, "lr": 2e-2, "batch_size": 2, "grad_accum": 2, "seed": 0}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    return read_manifest(build_tiny_manifest(tmp_path_factory.mktemp("cxr")))


def read_epochs(out: Path) -> list[dict[str, str]]:
    with open(out / "epochs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def run(tiny_dir: Path, manifest, tmp_path_factory: pytest.TempPathFactory):
    """One 3-epoch run on an in-memory model, with the base weights snapshotted before."""
    vlm = load_vlm(str(tiny_dir))
    before = {k: v.clone() for k, v in vlm.model.state_dict().items()}
    out = tmp_path_factory.mktemp("lora")
    settings = LoraSettings(**FAST, epochs=3, warmup_steps=1, patience=None)
    adapter = finetune_lora(vlm, manifest, out, settings, progress=False)
    return vlm, before, out, adapter


# ------------------------------------------------------------------------------ batches
def test_only_the_target_tokens_are_labelled(tiny_dir: Path, manifest) -> None:
    vlm = load_vlm(str(tiny_dir))
    studies = select_studies(manifest, "train").studies[:2]
    batch = encode_examples(vlm, studies, max_length=1024)
    tok = vlm.tokenizer
    for i, study in enumerate(studies):
        kept = batch.labels[i][batch.labels[i] != -100]
        assert tok.decode(kept, skip_special_tokens=False) == study.reference + EOT
    assert batch.n_target == int((batch.labels != -100).sum())
    prompt_len = int((batch.labels[0] == -100).long().argmin())  # first labelled position
    cut = encode_examples(vlm, studies[:1], max_length=prompt_len + 5)
    assert cut.inputs["input_ids"].shape[1] == prompt_len + 5
    assert cut.inputs["cross_attention_mask"].shape[1] == prompt_len + 5
    assert int((cut.labels != -100).sum()) == 5
    with pytest.raises(DataError, match="the prompt alone"):
        encode_examples(vlm, studies[:1], max_length=prompt_len)


def test_settings_and_targets_are_checked(tiny_dir: Path) -> None:
    with pytest.raises(ValidationError, match="rank"):
        LoraSettings(rank=8)
    with pytest.raises(CxrfuseError, match="matched nothing.*q_proj"):
        add_lora(load_vlm(str(tiny_dir)), LoraSettings(target_modules=["query"]))
    vision = add_lora(load_vlm(str(tiny_dir)), LoraSettings(include_vision=True))
    names = [n for n, p in vision.model.named_parameters() if p.requires_grad]
    assert any("vision_model" in n for n in names) and any("language_model" in n for n in names)
    default = add_lora(load_vlm(str(tiny_dir)), LoraSettings())
    names = [n for n, p in default.model.named_parameters() if p.requires_grad]
    assert names and all("language_model" in n and "lora_" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}


# ------------------------------------------------------------------------------ a run
def test_training_loss_falls_and_files_are_written(run) -> None:
    _, _, out, adapter = run
    rows = read_epochs(out)
    assert list(rows[0]) == list(EPOCH_COLUMNS)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    val = [float(r["val_loss"]) for r in rows]
    info = json.loads((adapter / "cxrfuse_adapter.json").read_text())
    assert info["epoch"] == 1 + val.index(min(val))
    run_info = json.loads((out / "finetune.json").read_text())
    assert run_info["best_epoch"] == info["epoch"] and run_info["status"] == "finished"
    assert run_info["studies"] == {"train": 6, "val": 2}


def test_only_lora_weights_change(run) -> None:
    vlm, before, _, adapter = run
    base = vlm.model.get_base_model().state_dict()
    lora = {k: v for k, v in base.items() if "lora_" in k}
    frozen = {k.replace(".base_layer", ""): v for k, v in base.items() if "lora_" not in k}
    assert frozen.keys() == before.keys()
    assert all(torch.equal(frozen[k], before[k]) for k in before)
    trained = [k for k, p in vlm.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in k for k in trained)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    run_info = json.loads((adapter.parent / "finetune.json").read_text())
    assert run_info["trainable_parameters"] == sum(v.numel() for v in saved.values())


def test_saved_adapter_reloads_to_the_same_greedy_reports(run, tiny_dir: Path, manifest) -> None:
    vlm, _, _, adapter = run
    in_memory = generate_reports(vlm, manifest, max_new_tokens=16, progress=False)
    reloaded_vlm = load_vlm(str(tiny_dir), adapter=str(adapter))
    reloaded = generate_reports(reloaded_vlm, manifest, max_new_tokens=16, progress=False)
    assert reloaded["generated"].tolist() == in_memory["generated"].tolist()
    assert reloaded["model"].iloc[0] == f"{tiny_dir} + adapter {adapter}"
    with pytest.raises(CxrfuseError, match="is a LoRA adapter folder"):
        load_vlm(str(adapter))
    val = select_studies(manifest, "val").studies
    base_loss = mean_loss(load_vlm(str(tiny_dir)), val, LoraSettings(**FAST))
    assert mean_loss(reloaded_vlm, val, LoraSettings(**FAST)) < base_loss


# ------------------------------------------------------------------------------ resume
def test_rerun_resumes_after_the_last_finished_epoch(tiny_dir: Path, manifest, tmp_path: Path) -> None:
    settings = {**FAST, "scheduler": "constant", "dropout": 0.1, "patience": None}
    whole = tmp_path / "whole"
    finetune_lora(str(tiny_dir), manifest, whole, LoraSettings(**settings, epochs=2), progress=False)

    parts = tmp_path / "parts"
    finetune_lora(str(tiny_dir), manifest, parts, LoraSettings(**settings, epochs=1), progress=False)
    first = read_epochs(parts)
    assert [r["epoch"] for r in first] == ["1"]
    finetune_lora(str(tiny_dir), manifest, parts, LoraSettings(**settings, epochs=2), progress=False)
    second = read_epochs(parts)
    assert second[0] == first[0]  # epoch 1 kept as it was (seconds included), not redone
    assert [r["epoch"] for r in second] == ["1", "2"]
    reference = read_epochs(whole)
    assert float(second[1]["train_loss"]) == pytest.approx(float(reference[1]["train_loss"]), rel=1e-6)
    a = load_file(str(whole / "checkpoint" / "adapter_model.safetensors"))
    b = load_file(str(parts / "checkpoint" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    finetune_lora(str(tiny_dir), manifest, parts, LoraSettings(**settings, epochs=2), progress=False)
    assert read_epochs(parts) == second  # finished: nothing redone
    with pytest.raises(CxrfuseError, match="lr=0.02.*lr=0.001"):
        finetune_lora(str(tiny_dir), manifest, parts,
                      LoraSettings(**{**settings, "lr": 1e-3}, epochs=3), progress=False)


def test_early_stopping_keeps_the_best_epoch_in_memory(tiny_dir: Path, manifest, tmp_path: Path) -> None:
    """min_delta too large for any epoch to beat epoch 1: stop after `patience`, keep epoch 1."""
    from peft import get_peft_model_state_dict

    vlm = load_vlm(str(tiny_dir))
    settings = LoraSettings(**FAST, epochs=6, patience=2, min_delta=100.0)
    adapter = finetune_lora(vlm, manifest, tmp_path, settings, progress=False)
    assert [r["epoch"] for r in read_epochs(tmp_path)] == ["1", "2", "3"]
    run_info = json.loads((tmp_path / "finetune.json").read_text())
    assert run_info["status"] == "early-stopped" and run_info["best_epoch"] == 1
    best = load_file(str(adapter / "adapter_model.safetensors"))
    last = load_file(str(tmp_path / "checkpoint" / "adapter_model.safetensors"))
    memory = get_peft_model_state_dict(vlm.model)
    assert best.keys() == last.keys() == memory.keys()
    assert all(torch.equal(memory[k].cpu(), best[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)


def test_gradient_checkpointing_gives_the_same_losses(tiny_dir: Path, manifest, tmp_path: Path) -> None:
    settings = {**FAST, "epochs": 1, "dropout": 0.0}
    rows = []
    for checkpointing in (False, True):
        vlm = load_vlm(str(tiny_dir))
        out = tmp_path / str(checkpointing)
        finetune_lora(vlm, manifest, out, LoraSettings(**settings, gradient_checkpointing=checkpointing),
                      progress=False)
        assert is_checkpointing(vlm.model) == checkpointing
        rows.append(read_epochs(out)[0])
    assert float(rows[0]["train_loss"]) == pytest.approx(float(rows[1]["train_loss"]), rel=1e-5)
    assert float(rows[0]["val_loss"]) == pytest.approx(float(rows[1]["val_loss"]), rel=1e-5)
