"""Which report sections feed the text model, and the text configuration.

:func:`select_sections` joins the chosen sections in the order given, each behind its upper
case header: ``"FINDINGS: The lungs are clear. IMPRESSION: Normal chest."``. Headers keep the
structure a reader (and a transformer) relies on, and a repeated header that a source already
put at the start of a section is dropped. Empty sections are left out together with their
header; ``section_headers=False`` joins the bare texts with a space.

The raw ``report`` column is never used as a fallback: a study whose chosen sections are all
empty gets an empty text, so the choice of sections is the only thing deciding what the model
reads (the indication, for example, is never let in through the back door).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxrfuse.vocab import IMAGE_DESCRIBING_SECTIONS, Section


class TextConfig(BaseModel):
    """How report text is built for a model. Unknown keys are rejected, naming the key."""

    model_config = ConfigDict(extra="forbid")

    sections: list[Section] = Field(default_factory=lambda: list(IMAGE_DESCRIBING_SECTIONS))
    section_headers: bool = True
    mask_labels: bool = True
    mask_token: str = "[MASK]"
    lowercase: bool = False
    remove_stopwords: bool = False
    strip_deid: bool = True

    @field_validator("sections")
    @classmethod
    def _sections_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("choose at least one report section")
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"section(s) {repeated} listed more than once")
        return value

    @field_validator("mask_token")
    @classmethod
    def _token_visible(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError("mask_token must be non-empty and have no surrounding spaces")
        return value


def _section_text(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name) if hasattr(row, "get") else None
    if not isinstance(value, str):
        return ""
    text = value.strip()
    return re.sub(rf"^{name}\s*:\s*", "", text, flags=re.IGNORECASE).strip()


def select_sections(
    row: Mapping[str, Any], sections: Sequence[str], *, headers: bool = True
) -> str:
    """The chosen, non-empty sections of one study, in the given order.

    ``row`` is a mapping (a dict or a manifest row as a pandas Series) with section columns;
    missing, null and blank sections are skipped.
    """
    parts = []
    for name in sections:
        text = _section_text(row, name)
        if text:
            parts.append(f"{name.upper()}: {text}" if headers else text)
    return " ".join(parts)
