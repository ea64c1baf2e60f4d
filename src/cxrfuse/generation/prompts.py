"""The chat prompt of report generation: a study's views, its indication, optional classifier findings.

One user turn, in the Hugging Face chat format that every image-text-to-text processor reads
(``{"role": "user", "content": [{"type": "image", ...}, ..., {"type": "text", "text": ...}]}``):

* the images first, in a fixed order (frontal views, then lateral ones, then views of unknown
  position; see :func:`cxrfuse.generation.studies.order_views`), each an ``image`` item;
* then one text item: the instruction (:data:`INSTRUCTION`), which image is which view, the
  indication, and, for design 001's two-stage set-up, the findings a cxrfuse classifier run
  predicts for the study.

The images come first and together because Llama-3.2-Vision (Mllama) lets text attend only to
the images before it, up to the next image: text placed between two images would see only the
first. Consecutive images are attended together by all the text after them. The instruction
sits in the user turn, not in a system turn: Llama-3.2-Vision's own chat template refuses a
system message next to images.

The target of fine-tuning and the reference of scoring are the same text
(:func:`report_target`): the findings and impression sections behind their headers
(``"FINDINGS: ... IMPRESSION: ..."``), with de-identification tokens removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from cxrfuse.text import clean_text, select_sections

INSTRUCTION = (
    "You are an experienced radiologist. Write the FINDINGS and IMPRESSION sections of the "
    "radiology report for this chest X-ray study. Describe the heart, mediastinum, lungs, "
    "pleura and bones; state pertinent negatives; do not invent comparisons with prior studies."
)
"""The instruction at the start of every prompt's text."""

TARGET_SECTIONS = ("findings", "impression")
"""Report sections the model learns to write and is scored against."""

VIEW_NAMES = {
    "PA": "frontal (PA)",
    "AP": "frontal (AP)",
    "FRONTAL": "frontal",
    "LATERAL": "lateral",
    "LL": "left lateral",
    "UNKNOWN": "of unknown position",
}
"""How each manifest view position is named in the prompt."""

NO_INDICATION = "not given"


def describe_views(view_names: Sequence[str]) -> str:
    """``"Image 1 is the frontal (PA) view. Image 2 is the lateral view."``"""
    if not view_names:
        return "There are no images."
    parts = [
        f"Image {i} is the {VIEW_NAMES.get(name, name.lower())} view."
        for i, name in enumerate(view_names, start=1)
    ]
    return " ".join(parts)


def prompt_text(
    view_names: Sequence[str], indication: str | None, findings: Sequence[str] | None = None
) -> str:
    """The text part of the prompt (everything but the images)."""
    indication = clean_text(indication) if indication else ""
    lines = [
        INSTRUCTION,
        describe_views(view_names),
        f"Indication: {indication or NO_INDICATION}",
    ]
    if findings is not None:
        stated = ", ".join(f for f in findings if f.strip()) or "none of the labels it reads"
        lines.append(f"Findings predicted by an image classifier: {stated}.")
    return "\n".join(lines)


def build_messages(
    views: Sequence[tuple[str, Image.Image]],
    indication: str | None,
    findings: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Chat messages for one study: one user turn, images first, then the text.

    ``views`` is ``[(view name, image), ...]`` in the order the images are shown (the
    manifest's view positions: PA, AP, FRONTAL, LATERAL, LL, UNKNOWN). Each image item
    carries its PIL image under ``"image"``; chat templates render it as the model's image
    placeholder (``<|image|>`` for Llama-3.2-Vision). ``findings=None`` leaves the
    classifier line out; an empty list says the classifier found none.
    """
    content: list[dict[str, Any]] = [{"type": "image", "image": image} for _, image in views]
    text = prompt_text([name for name, _ in views], indication, findings)
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def message_images(messages: Sequence[Mapping[str, Any]]) -> list[Image.Image]:
    """The images of ``messages`` in the order their placeholders appear."""
    return [
        item["image"]
        for message in messages
        if not isinstance(message["content"], str)
        for item in message["content"]
        if item.get("type") == "image"
    ]


def with_answer(messages: Sequence[Mapping[str, Any]], answer: str) -> list[dict[str, Any]]:
    """``messages`` followed by the assistant's answer (the fine-tuning conversation)."""
    return [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


def report_target(row: Mapping[str, Any]) -> str:
    """Findings and impression of one manifest row, with headers, de-identification tokens removed."""
    return clean_text(select_sections(row, TARGET_SECTIONS, headers=True))
