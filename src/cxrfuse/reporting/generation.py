"""Report sections of generated reports: the generator beside its baselines (language and
clinical scores with intervals), clinical efficacy per observation, and a few studies side by
side (generated vs reference, the findings on which they differ highlighted); and of a LoRA
fine-tuning (``finetune.json``: settings, losses per epoch, the kept epoch, the curves)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cxrfuse.evaluation import format_value
from cxrfuse.generation import comparison_table, differing_findings, paired_table, provenance_lines
from cxrfuse.reporting.document import Section
from cxrfuse.rundir import GenerationDir

SYNTHETIC = ("The images are synthetic phantoms, drawn from each study's labels (the reports are "
             "real); no generation score here says anything about real radiographs.")  # fmt: skip
INTRO = ("Language metrics (pycocoevalcap on R2Gen-normalised findings + impression) reward the "
         "normal template: a generator reads the image only where its clinical F1 (CheXpert "
         "observations extracted from both reports) beats the baselines, which ignore it.")  # fmt: skip


def per_label_table(payload: dict) -> pd.DataFrame:
    """Clinical efficacy per observation of the generator (and the positives of both sides)."""
    rows = []
    for name, entry in (payload.get("clinical") or {}).get("per_label", {}).items():
        row = {"observation": name, "reference +": entry["reference_positives"],
               "generated +": entry["generated_positives"]}  # fmt: skip
        for metric in ("precision", "recall", "f1"):
            e = entry.get(metric) or {}
            row[metric] = format_value(e.get("value"), None, e.get("low"), e.get("high"))
        rows.append(row)
    return pd.DataFrame(rows)


def examples_table(gen: GenerationDir, n: int = 5) -> pd.DataFrame:
    """``n`` studies with a reference, those whose findings differ first: generated vs
    reference, with the observations only one of them states positive in **bold**."""
    frame = gen.generated()
    frame = frame[frame["reference"].fillna("").str.strip() != ""]
    rows = []
    for _, row in frame.iterrows():
        only_gen, only_ref = differing_findings(row)
        rows.append({"study": row["study_id"], "generated": row["generated"],
                     "reference": row["reference"],
                     "only in generated": ", ".join(f"**{x}**" for x in only_gen) or "-",
                     "only in reference": ", ".join(f"**{x}**" for x in only_ref) or "-",
                     "_differs": bool(only_gen or only_ref)})  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    picked = pd.concat([table[table["_differs"]].head(n - n // 2),
                        table[~table["_differs"]].head(n // 2)])  # fmt: skip
    return picked.head(n).drop(columns="_differs")


def generation_sections(gens: Sequence[GenerationDir], title: str = "Report generation"
                        ) -> list[Section]:  # fmt: skip
    """One section per generation directory that holds scores."""
    sections = []
    for gen in gens:
        if not gen.has_scores():
            continue
        payload, settings = gen.scores(), gen.settings()
        name = payload.get("generator", gen.name)
        section = Section(f"{title}: {name}")
        if settings.get("synthetic_images"):
            section.add("warning", SYNTHETIC)
        section.add("text", INTRO)
        bank = f", bank of {settings['bank']} training reports" if settings.get("bank") else ""
        section.add("table", comparison_table(payload, name),
                    f"{payload.get('n_studies')} studies ({settings.get('split', '-')} split"
                    f"{bank}); generator and baselines on the same studies, 95 % bootstrap "
                    "intervals")  # fmt: skip
        for line in provenance_lines(payload, settings):
            section.add("note", line)
        for verdict in payload.get("verdicts", []):
            section.add("text", verdict)
        for pair, diffs in (payload.get("paired") or {}).items():
            section.add("table", paired_table(diffs), f"{pair}: paired bootstrap difference on the "
                                                      "same studies, 95 % interval and p")  # fmt: skip
        for note in payload.get("notes", []):
            section.add("note", note)
        constant = (settings.get("baselines") or {}).get("best_constant")
        if constant:
            section.add("note", f"Best constant report (chosen on the training split by "
                                f"BLEU-4): \"{constant[:300]}\"")  # fmt: skip
        template = (settings.get("baselines") or {}).get("sentence_consensus")
        if template:
            section.add("note", f"Sentence-consensus template (frequent training sentences, "
                                f"chosen by BLEU-4 on {settings['baselines'].get('sentence_consensus_validation')}): "
                                f"\"{template[:400]}\"")  # fmt: skip
        section.add("table", per_label_table(payload),
                    "Clinical efficacy per CheXpert observation (positive = label 1)")
        examples = examples_table(gen)
        if not examples.empty:
            section.add("table", examples, "Studies side by side (observations stated "
                                           "positive by one report only in bold)")  # fmt: skip
        sections.append(section)
    return sections


def finetune_section(gen: GenerationDir) -> Section | None:
    """The LoRA fine-tuning of ``gen`` (None when it holds none): status, the kept epoch,
    the losses per epoch and the curves."""
    info = gen.lora_info()
    if info is None:
        return None
    section = Section(f"LoRA fine-tuning: {info.model}")
    best = "-" if info.best_val_loss is None else f"{info.best_val_loss:.4f}"
    section.add("text", f"Status {info.status}: {info.epochs_done} epoch(s) done; the adapter "
                        f"kept is epoch {info.best_epoch} (val loss {best}, target-token "
                        f"cross-entropy). {info.studies.get('train', 0)} training and "
                        f"{info.studies.get('val', 0)} validation studies; "
                        f"{info.trainable_parameters or 0:,} trainable of "
                        f"{info.parameters or 0:,} parameters on {info.device} "
                        f"({info.dtype}).")  # fmt: skip
    if info.history:
        section.add("table", pd.DataFrame(info.history), "Loss per epoch")
    if gen.curves_path.is_file():
        section.add("image", gen.curves_path, "train and val loss per epoch")
    settings = {k: v for k, v in info.settings.items() if v is not None}
    section.add("code", "\n".join(f"{k}: {v}" for k, v in settings.items()))
    return section
