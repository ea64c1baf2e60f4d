"""A tiny, randomly initialised Llama-3.2-Vision (Mllama) folder, built offline for tests.

:func:`build_tiny_vlm` writes what a Hugging Face hub folder of an image-text-to-text model
holds (``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer files,
``preprocessor_config.json``, ``processor_config.json`` and the chat template), so that
``AutoModelForImageTextToText`` / ``AutoProcessor`` load it exactly as they would load
``meta-llama/Llama-3.2-11B-Vision-Instruct``. Everything is small: a 2-layer vision encoder on
28-px tiles (one tile per image), a 3-layer language model with one cross-attention layer,
hidden size 32, and a byte-level BPE vocabulary of a few hundred tokens trained on report
sentences, with Llama 3's special tokens and the ``<|image|>`` token one past the text vocabulary
(as in the real model, where it is id 128256).

:func:`build_tiny_llava` writes a tiny LLaVA (CLIP ViT + Llama) with the same tokenizer and
template, to check that nothing depends on Mllama's layout; :func:`build_tiny_manifest` writes
a small manifest with PNG views and report text.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<|begin_of_text|>"
EOT = "<|eot_id|>"
END = "<|end_of_text|>"
PAD = "<|finetune_right_pad_id|>"
IMAGE = "<|image|>"
SPECIALS = [BOS, END, "<|start_header_id|>", "<|end_header_id|>", EOT, PAD, "<|python_tag|>"]

# The structure of Llama-3.2-11B-Vision-Instruct's template (images as <|image|>, text trimmed,
# one header per turn), without its tool-calling and date preamble.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

CORPUS = [
    "FINDINGS: The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "FINDINGS: There is no pleural effusion or pneumothorax. No focal airspace consolidation.",
    "FINDINGS: The cardiomediastinal silhouette is enlarged. There is a small left pleural effusion.",
    "FINDINGS: Calcified granuloma in the right upper lobe. Degenerative changes of the spine.",
    "IMPRESSION: No acute cardiopulmonary abnormality. IMPRESSION: Cardiomegaly with effusion.",
    "IMPRESSION: Stable chest. Mild bibasilar atelectasis. Opacity in the left lower lobe.",
    "INDICATION: Chest pain. Shortness of breath. Cough and fever. Preoperative evaluation.",
    "Write the findings and impression of a radiology report for this chest X-ray study.",
    "Image 1 is the PA view. Image 2 is the lateral view. Frontal AP view.",
    "Findings predicted by a classifier: cardiomegaly, pleural effusion, nodule, none.",
]


def build_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE tokenizer (like Llama 3's) trained on :data:`CORPUS`, ``<|image|>`` last."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_special_tokens([IMAGE])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return tok


def build_tiny_vlm(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random Mllama model + processor into ``folder``; return the folder."""
    from transformers import (
        GenerationConfig,
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    raw = build_tokenizer()
    image_id = raw.token_to_id(IMAGE)
    assert image_id == raw.get_vocab_size() - 1
    ids = {t: raw.token_to_id(t) for t in SPECIALS}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=BOS, eos_token=EOT, pad_token=PAD,
        model_max_length=4096,
    )
    image_processor = MllamaImageProcessor(size={"height": 28, "width": 28}, max_image_tiles=1)
    processor = MllamaProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)

    # Wider initial weights (0.2, not 0.02) make the random model's answers depend on its input.
    vision = MllamaVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
        intermediate_size=64, image_size=28, patch_size=14, max_num_tiles=1,
        supported_aspect_ratios=[[1, 1]], intermediate_layers_indices=[0, 1],
        vision_output_dim=32 * 3, initializer_range=0.2,
    )
    text = MllamaTextConfig(
        vocab_size=image_id, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, cross_attention_layers=[1],
        max_position_embeddings=1024, bos_token_id=ids[BOS], eos_token_id=[ids[EOT], ids[END]],
        pad_token_id=ids[PAD], initializer_range=0.2,
    )
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image_id)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():  # Mllama starts with closed cross-attention gates: open them
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.fill_(1.0)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[EOT], ids[END]], pad_token_id=ids[PAD],
        do_sample=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder



def build_tiny_llava(folder: str | Path, *, seed: int = 0) -> Path:
    """The same tokenizer and chat template in a tiny random LLaVA (CLIP ViT + Llama) folder.

    LLaVA differs from Mllama where it matters here: the processor expands each image token
    into one token per patch inside the text, and the images are concatenated, not padded.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder)
    raw = build_tokenizer()
    image_id = raw.token_to_id(IMAGE)
    ids = {t: raw.token_to_id(t) for t in SPECIALS}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=BOS, eos_token=EOT, pad_token=PAD, model_max_length=4096,
        extra_special_tokens={"image_token": IMAGE},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        image_token=IMAGE, chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=28, patch_size=14, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=image_id + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, bos_token_id=ids[BOS],
        eos_token_id=[ids[EOT], ids[END]], pad_token_id=ids[PAD], initializer_range=0.2,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_id,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[EOT], ids[END]], pad_token_id=ids[PAD],
        do_sample=False,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder

# ------------------------------------------------------------------------------ a tiny manifest
REPORTS = [
    ("Chest pain.", "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
     "No acute cardiopulmonary abnormality."),
    ("Shortness of breath.",
     "The cardiomediastinal silhouette is enlarged. There is a small left pleural effusion.",
     "Cardiomegaly with small left pleural effusion."),
    ("Cough and fever.", "Opacity in the left lower lobe. No pneumothorax.",
     "Left lower lobe opacity, possibly pneumonia."),
    ("Preoperative evaluation.",
     "Calcified granuloma in the right upper lobe. Degenerative changes of the spine.",
     "No acute disease."),
    (None, "Mild bibasilar atelectasis. No pleural effusion or pneumothorax.",
     "Mild bibasilar atelectasis."),
]


def write_xray(path: Path, seed: int, size: int = 64) -> Path:
    """A 64-px 8-bit gray PNG: a bright 'body' with two dark 'lungs', varied by ``seed``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.8 - 0.3 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        img[lung] -= 0.4 + 0.1 * rng.uniform()
    img += 0.05 * rng.standard_normal(img.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L").save(path)
    return path


def build_tiny_manifest(folder: str | Path, *, n_train: int = 6, n_val: int = 2, n_test: int = 3):
    """A manifest of report-bearing studies with PNG views, split train / val / test.

    Every study has a PA and a lateral view, except: the first test study has a PA view only,
    and two extra test studies are unusable (one without any image path, one whose file is
    missing), so generation must skip and count them.
    """
    from cxrfuse.data import Manifest

    folder = Path(folder)
    records = []
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        indication, findings, impression = REPORTS[i % len(REPORTS)]
        sid = f"S{i:03d}"
        views = [{"image_id": f"{sid}-pa", "path": str(write_xray(folder / f"{sid}_pa.png", i)),
                  "view": "PA"}]
        if not (split == "test" and i == n_train + n_val):
            views.append({"image_id": f"{sid}-lat",
                          "path": str(write_xray(folder / f"{sid}_lat.png", 100 + i)),
                          "view": "LATERAL"})
        records.append({"study_id": sid, "patient_id": f"P{i:03d}", "split": split,
                        "views": list(reversed(views)),  # lateral listed first: order is ours
                        "indication": indication, "findings": findings, "impression": impression})
    records.append({"study_id": "NOIMG", "patient_id": "P900", "split": "test", "views": [],
                    "indication": "Chest pain.", "findings": "Normal.", "impression": "Normal."})
    records.append({"study_id": "GONE", "patient_id": "P901", "split": "test",
                    "views": [{"image_id": "GONE-pa", "path": str(folder / "gone.png"), "view": "PA"}],
                    "indication": "Cough.", "findings": "Normal.", "impression": "Normal."})
    manifest = Manifest.from_records(records, dataset="iu-xray", labels=[], images="real")
    return manifest.save(folder / "manifest.parquet")
