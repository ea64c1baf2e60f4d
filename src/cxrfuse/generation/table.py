"""The scores of :func:`~cxrfuse.generation.scoring.score_reports` as Markdown tables."""

from __future__ import annotations

from typing import Any

LANGUAGE_ROWS = (
    ("BLEU-1", "bleu_1"), ("BLEU-2", "bleu_2"), ("BLEU-3", "bleu_3"), ("BLEU-4", "bleu_4"),
    ("METEOR", "meteor"), ("ROUGE-L", "rouge_l"), ("CIDEr", "cider"),
)
CLINICAL_ROWS = (
    ("CE micro-F1 (14)", "micro_f1_14"), ("CE macro-F1 (14)", "macro_f1_14"),
    ("CE micro-precision (14)", "micro_precision_14"), ("CE micro-recall (14)", "micro_recall_14"),
    ("CE micro-F1 (5)", "micro_f1_5"), ("CE macro-F1 (5)", "macro_f1_5"),
)


def format_estimate(entry: dict[str, Any] | None, digits: int = 3) -> tuple[str, str]:
    """(value, "[low, high]") of an estimate; "n/a" where missing."""
    if entry is None or entry.get("value") is None:
        return "n/a", ""
    value = f"{entry['value']:.{digits}f}"
    if entry.get("low") is None or entry.get("high") is None:
        return value, "(no interval)"
    return value, f"[{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def scores_table(payload: dict[str, Any]) -> str:
    """Markdown: the headline metrics with 95 % intervals, the per-observation CE table and
    the notes (e.g. why METEOR is missing)."""
    clinical = payload.get("clinical") or {}
    rows = []
    for title, key in LANGUAGE_ROWS:
        if key in payload:
            rows.append([title, *format_estimate(payload[key])])
    for title, key in CLINICAL_ROWS:
        if key in clinical:
            rows.append([title, *format_estimate(clinical[key])])
    parts = [
        (f"{payload.get('n_studies', '?')} studies; labeler {payload.get('labeler', '?')}; "
        f"text {payload.get('normalisation', '?')}; 95 % bootstrap intervals "
        f"({payload.get('n_boot_language', '?')} resamples for language, "
        f"{payload.get('n_boot_clinical', '?')} for clinical), seed {payload.get('seed', '?')}"),
        "",
        _table(["metric", "value", "95 % CI"], rows),
    ]
    per_label = clinical.get("per_label") or {}
    if per_label:
        label_rows = []
        for name, entry in per_label.items():
            label_rows.append([
                name, str(entry["reference_positives"]), str(entry["generated_positives"]),
                *(" ".join(format_estimate(entry[m])).strip() for m in ("precision", "recall", "f1")),
            ])
        parts += ["", f"Clinical efficacy per observation (positive = {clinical.get('positive', 'label 1')}):",
                  "", _table(["observation", "ref +", "gen +", "precision", "recall", "F1"], label_rows)]
    notes = payload.get("notes") or []
    if notes:
        parts += ["", *(f"Note: {n}" for n in notes)]
    return "\n".join(parts)


__all__ = ["format_estimate", "scores_table"]
