"""Report generation with a vision-language model: prompts, study selection, loading, generation.

The model is the tiny random Llama-3.2-Vision (Mllama) of :mod:`tiny_vlm`, loaded from a folder
through ``AutoModelForImageTextToText`` / ``AutoProcessor`` as a hub download would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tiny_vlm import IMAGE, build_tiny_manifest, build_tiny_vlm

from cxrfuse.data import read_manifest
from cxrfuse.generation.prompts import INSTRUCTION, build_messages, message_images
from cxrfuse.generation.studies import batches_by_view_count, choose_views, select_studies
from cxrfuse.generation.vlm import (
    GENERATED_COLUMNS,
    encode,
    generate_reports,
    load_vlm,
    render,
    write_generated,
)
from cxrfuse.problems import CxrfuseError, DataError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    return read_manifest(build_tiny_manifest(tmp_path_factory.mktemp("cxr"), n_test=4))


@pytest.fixture(scope="module")
def vlm(tiny_dir: Path):
    return load_vlm(str(tiny_dir))


def gray(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L").convert("RGB")


# ------------------------------------------------------------------------------ prompts
def test_messages_put_images_first_then_one_text_naming_the_views() -> None:
    a, b = gray(0), gray(1)
    messages = build_messages([("PA", a), ("LATERAL", b)], "Chest pain.", ["Cardiomegaly"])
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert message_images(messages) == [a, b]
    text = content[-1]["text"]
    assert text.startswith(INSTRUCTION)
    assert "Image 1 is the frontal (PA) view. Image 2 is the lateral view." in text
    assert "Indication: Chest pain." in text
    assert "Findings predicted by an image classifier: Cardiomegaly." in text


def test_findings_line_only_in_the_two_stage_prompt() -> None:
    one = build_messages([("AP", gray(0))], None, None)[0]["content"][-1]["text"]
    none_found = build_messages([("AP", gray(0))], None, [])[0]["content"][-1]["text"]
    assert "classifier" not in one and "Indication: not given" in one
    assert "Findings predicted by an image classifier: none" in none_found


def test_chat_template_renders_one_image_token_per_view(vlm) -> None:
    messages = build_messages([("PA", gray(0)), ("LATERAL", gray(1))], "Cough.", None)
    text = render(vlm, messages, generation_prompt=True)
    assert text.count(IMAGE) == 2
    assert text.index(IMAGE) < text.index("Indication: Cough.")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


# ------------------------------------------------------------------------------ studies
def test_views_are_chosen_frontal_then_lateral() -> None:
    views = [{"view": "LATERAL", "path": "l"}, {"view": "UNKNOWN", "path": "u"},
             {"view": "AP", "path": "a"}, {"view": "PA", "path": "p"}]
    assert [v["path"] for v in choose_views(views, 2)] == ["a", "l"]
    assert [v["path"] for v in choose_views(views, None)] == ["a", "p", "l", "u"]
    assert [v["path"] for v in choose_views(views[:2], 1)] == ["l"]


def test_selection_skips_and_counts_studies_without_images(manifest) -> None:
    selection = select_studies(manifest, "test")
    assert [s.study_id for s in selection.studies] == ["S008", "S009", "S010", "S011"]
    assert selection.skipped == {"NOIMG": "no image path", "GONE": "image file missing"}
    assert selection.studies[1].views[0][0] == "PA"  # listed lateral first in the manifest
    assert selection.studies[0].reference.startswith("FINDINGS: ")
    assert "IMPRESSION: " in selection.studies[0].reference
    assert len(select_studies(manifest, ["train", "val"]).studies) == 8
    assert len(select_studies(manifest, "test", limit=2).studies) == 2
    with pytest.raises(DataError, match="unknown split"):
        select_studies(manifest, "dev")


def test_batches_hold_one_view_count(manifest) -> None:
    studies = select_studies(manifest, "test").studies
    batches = batches_by_view_count(studies, 4)
    assert [[s.study_id for s in b] for b in batches] == [["S008"], ["S009", "S010", "S011"]]


# ------------------------------------------------------------------------------ loading
def test_missing_model_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CxrfuseError, match="does not exist.*hf download"):
        load_vlm(str(tmp_path / "no-such-model"))


def test_hub_id_offline_names_the_model_and_how_to_get_it() -> None:
    model = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    with pytest.raises(CxrfuseError) as info:
        load_vlm(model)
    message = str(info.value)
    assert "\n" not in message
    assert f"hf download {model}" in message and f"huggingface-cli download {model}" in message
    assert "licence" in message


def test_folder_without_config_and_bad_adapter_are_refused(tmp_path: Path, tiny_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxrfuseError, match="no config.json"):
        load_vlm(str(tmp_path / "empty"))
    with pytest.raises(CxrfuseError, match="no adapter_config.json"):
        load_vlm(str(tiny_dir), adapter=str(tmp_path / "empty"))


def test_float32_on_cpu(vlm) -> None:
    assert vlm.device.type in {"cpu", "cuda"}
    expected = torch.float32 if vlm.device.type == "cpu" else torch.bfloat16
    assert vlm.dtype == expected
    assert next(vlm.model.parameters()).dtype == expected


# ------------------------------------------------------------------------------ generation
def test_the_images_reach_the_model(vlm) -> None:
    """Same text, other pixels: other next-token logits (the images are not dropped)."""
    texts, logits = [], []
    for seed in (0, 1):
        messages = build_messages([("PA", gray(seed))], "Chest pain.", None)
        text = render(vlm, messages, generation_prompt=True)
        texts.append(text)
        with torch.no_grad():
            batch = encode(vlm, [text], [message_images(messages)], side="left")
            logits.append(vlm.model(**batch).logits[0, -1])
    assert texts[0] == texts[1]
    assert (logits[0] - logits[1]).abs().max() > 1e-3


def test_generate_reports_end_to_end(vlm, manifest, tmp_path: Path) -> None:
    frame = generate_reports(vlm, manifest, batch_size=4, max_new_tokens=12, progress=False)
    assert list(frame.columns) == list(GENERATED_COLUMNS)
    assert frame["study_id"].tolist() == ["S008", "S009", "S010", "S011"]
    assert (frame["split"] == "test").all()
    assert all(isinstance(t, str) and t for t in frame["generated"])
    assert frame["views"].tolist() == ["PA", "PA,LATERAL", "PA,LATERAL", "PA,LATERAL"]
    refs = {s.study_id: s.reference for s in select_studies(manifest, "test").studies}
    assert frame["reference"].tolist() == [refs[s] for s in frame["study_id"]]
    assert all(p.startswith(INSTRUCTION) and IMAGE not in p for p in frame["prompt"])
    assert (frame["model"] == vlm.name).all()
    info = frame.attrs["generation"]
    assert info["skipped"] == {"no image path": 1, "image file missing": 1}
    assert info["n_reports"] == 4 and info["decoding"] == "greedy"

    single = generate_reports(vlm, manifest, batch_size=1, max_new_tokens=12, progress=False)
    assert single["generated"].tolist() == frame["generated"].tolist()

    path = write_generated(frame, tmp_path / "gen", {"command": "generate vlm"})
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, frame.reset_index(drop=True), check_like=False)
    settings = json.loads((tmp_path / "gen" / "generation.json").read_text())
    assert settings["command"] == "generate vlm"
    assert settings["reports_per_second"] > 0 and settings["dtype"] == "float32"


def test_two_stage_findings_and_limits(vlm, manifest) -> None:
    findings = {"S008": ["Cardiomegaly"], "S009": []}
    frame = generate_reports(vlm, manifest, limit=2, findings=findings, max_new_tokens=4,
                             progress=False, num_beams=2)
    assert frame["study_id"].tolist() == ["S008", "S009"]
    assert "image classifier: Cardiomegaly." in frame["prompt"][0]
    assert "image classifier: none" in frame["prompt"][1]
    assert frame.attrs["generation"]["decoding"] == "beam search (2 beams)"
    with pytest.raises(DataError, match="S010"):
        generate_reports(vlm, manifest, findings=findings, max_new_tokens=4, progress=False)
