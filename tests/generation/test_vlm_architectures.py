"""Beyond Mllama: the same generation and fine-tuning code on a tiny LLaVA (CLIP ViT + Llama).

LLaVA's processor expands every image placeholder into one token per patch and concatenates
the images of a batch; the prompt masking, batching and LoRA targeting must not depend on
Mllama's layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_vlm import build_tiny_llava, build_tiny_manifest

from cxrfuse.data import read_manifest
from cxrfuse.generation.lora import LoraSettings, finetune_lora
from cxrfuse.generation.vlm import generate_reports, load_vlm


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "tiny-llava")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    return read_manifest(build_tiny_manifest(tmp_path_factory.mktemp("cxr")))


def test_llava_generates_and_fine_tunes(llava_dir: Path, manifest, tmp_path: Path) -> None:
    vlm = load_vlm(str(llava_dir))
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    batched = generate_reports(vlm, manifest, batch_size=4, max_new_tokens=8, progress=False)
    single = generate_reports(vlm, manifest, batch_size=1, max_new_tokens=8, progress=False)
    assert len(batched) == 3 and all(batched["generated"])
    assert batched["generated"].tolist() == single["generated"].tolist()

    settings = LoraSettings(r=4, alpha=8, lr=2e-2, epochs=2, batch_size=2, grad_accum=1,
                            include_vision=True, patience=None)
    adapter = finetune_lora(vlm, manifest, tmp_path, settings, progress=False)
    trained = [n for n, p in vlm.model.named_parameters() if p.requires_grad]
    assert any("vision_tower" in n for n in trained) and any("language_model" in n for n in trained)
    rows = (tmp_path / "epochs.csv").read_text().splitlines()[1:]
    assert float(rows[-1].split(",")[1]) < float(rows[0].split(",")[1])
    tuned = generate_reports(vlm, manifest, max_new_tokens=8, progress=False)
    reloaded = generate_reports(load_vlm(str(llava_dir), adapter=str(adapter)), manifest,
                                max_new_tokens=8, progress=False)
    assert reloaded["generated"].tolist() == tuned["generated"].tolist()
