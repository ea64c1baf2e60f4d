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


VERDICT_CLINICAL = (("CE micro-F1 (14)", "micro_f1_14"), ("CE macro-F1 (5)", "macro_f1_5"))
"""The clinical metrics a verdict sentence states the difference of."""


def _diff(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if not entry or entry.get("diff") is None:
        return "n/a"
    text = f"{entry['diff']:+.{digits}f}"
    if entry.get("low") is not None:
        text += f" [{entry['low']:+.{digits}f}, {entry['high']:+.{digits}f}]"
    if entry.get("p") is not None:
        text += f", p = {entry['p']:.3g}"
    return text


def verdict_sentences(system: str, versus: dict[str, dict[str, Any]], meteor: bool = True) -> list[str]:
    """One sentence per baseline: on how many language metrics ``system`` beats it (the
    paired 95 % interval of the difference above 0) and loses (below 0), and its CE
    micro-F1 (14) and macro-F1 (5) differences with intervals."""
    out = []
    language = [(t, k) for t, k in LANGUAGE_ROWS if meteor or k != "meteor"]
    for baseline, diffs in versus.items():
        wins = [t for t, k in language if (diffs.get(k) or {}).get("low") is not None and diffs[k]["low"] > 0]
        losses = [t for t, k in language if (diffs.get(k) or {}).get("high") is not None and diffs[k]["high"] < 0]
        sentence = (f"{system} beats the {baseline} on {len(wins)} of {len(language)} language metrics"
                    + (f" ({', '.join(wins)})" if wins else ""))
        if losses:
            sentence += f" and is below it on {len(losses)} ({', '.join(losses)})"
        clinical = "; ".join(f"{t} {_diff(diffs.get(k))}" for t, k in VERDICT_CLINICAL if diffs.get(k))
        out.append(sentence + (f"; difference {clinical}" if clinical else "") + ".")
    return out


def paired_table(diffs: dict[str, Any]):
    """Metric, difference [95 % CI], p of a :func:`~cxrfuse.generation.scoring.paired_comparison`."""
    import pandas as pd

    titles = {k: t for t, k in (*LANGUAGE_ROWS, *CLINICAL_ROWS)}
    return pd.DataFrame([{"metric": titles.get(k, k), "difference [95 % CI], p": _diff(v)}
                         for k, v in diffs.items()])


def provenance_lines(payload: dict[str, Any], settings: dict[str, Any] | None = None) -> list[str]:
    """What the figures depend on, in words: split name and size, normalisation, labeler,
    pycocoevalcap version, Java (METEOR)."""
    versions = payload.get("versions") or {}
    split = versions.get("split") or (settings or {}).get("split")
    if isinstance(split, dict):
        split_text = (f"split {split.get('name') or '(whole file)'} of {split.get('file', '?')}, "
                      f"{payload.get('n_studies')} studies scored")
    else:
        split_text = f"split {split or '-'}, {payload.get('n_studies')} studies scored"
    train = versions.get("baselines_split")
    if isinstance(train, dict):
        split_text += (f"; baselines from split {train.get('name') or '(whole file)'} of "
                       f"{train.get('file', '?')} ({train.get('n', '?')} reports)")
        if train.get("validation"):
            split_text += f", template chosen on {train['validation']}"
    java = versions.get("java")
    return [f"Scored on: {split_text}.",
            (f"Metric versions: text normalisation {versions.get('normalisation', payload.get('normalisation', '?'))}; "
            f"labeler {versions.get('labeler', payload.get('labeler', '?'))}; pycocoevalcap "
            f"{versions.get('pycocoevalcap', '?')}; Java {'present' if java else 'absent (no METEOR)'}.")]


__all__ = ["format_estimate", "paired_table", "provenance_lines", "scores_table", "verdict_sentences"]
