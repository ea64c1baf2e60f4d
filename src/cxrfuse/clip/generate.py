"""Report generation by retrieval from the CLIP space (as CXR-RePaiR, Endo et al. 2021).

For each image of a split, the training reports are ranked by their CLIP similarity to it
and the report to write is taken from the top ``k``: the nearest one (``k = 1``) or, for
``k > 1``, the medoid of the ``k`` nearest (the one most similar to the others, which damps
one-off neighbours). The text is the report text the model was trained on
(``text.sections``), copied from a *training* study, so no test report is ever read.

The reports are scored two ways, each beside two baselines that ignore the image (a random
training report, and the most frequent training report, IU X-ray's "normal" template):

* **clinical efficacy**: the labels of the chosen report (IU X-ray derives its labels from
  each report's text, so they are the findings that report states) against the study's own
  labels: precision, recall and F1 per label, micro and macro, with 95 % bootstrap intervals;
* **language**: corpus BLEU-1 and BLEU-4 (sacrebleu) against the study's own report text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrfuse.evaluation import bootstrap_ci, compute_metrics, format_value
from cxrfuse.rundir import RunDir, layout

GENERATED_FILE = layout.GENERATED
CE_METRICS = ("precision", "recall", "f1")


def choose_reports(similarity: torch.Tensor, bank: torch.Tensor, k: int = 1) -> np.ndarray:
    """Index into the report bank of the report chosen for each query row.

    ``similarity`` (Q, N) is image against report; ``bank`` (N, D) the unit report embeddings.
    ``k = 1``: the most similar report; ``k > 1``: the medoid of the ``k`` most similar.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    k = min(k, similarity.shape[1])
    top = similarity.topk(k, dim=1).indices  # (Q, k)
    if k == 1:
        return top[:, 0].numpy()
    neighbours = bank[top]  # (Q, k, D)
    centrality = (neighbours @ neighbours.transpose(1, 2)).sum(-1)  # (Q, k)
    return top.gather(1, centrality.argmax(1, keepdim=True))[:, 0].numpy()


def corpus_bleu(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU-1 and BLEU-4 (0-100, sacrebleu's 13a tokenizer, lower-cased)."""
    from sacrebleu.metrics import BLEU

    out = {}
    for order in (1, 4):
        bleu = BLEU(max_ngram_order=order, lowercase=True, effective_order=True)
        out[f"bleu{order}"] = float(bleu.corpus_score(hypotheses, [references]).score)
    return out


def score_reports(
    y_true: np.ndarray, y_chosen: np.ndarray, labels: list[str], hypotheses: list[str],
    references: list[str], n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Clinical efficacy (with bootstrap CIs) and BLEU of one way of choosing reports."""
    chosen = np.nan_to_num(y_chosen).astype(float)  # a label the chosen report leaves unknown
    metrics = compute_metrics(y_true, chosen, 0.5, labels)
    ci = bootstrap_ci(y_true, chosen, 0.5, labels, n_boot=n_boot, seed=seed) if n_boot else {}
    summary: dict[str, Any] = {}
    for scope in ("micro", "macro"):
        for m in CE_METRICS:
            value = metrics[scope].get(m) if scope in metrics else None
            interval = ci.get(f"{scope}/{m}", {})
            summary[f"{scope}_{m}"] = {"value": value, "low": interval.get("low"),
                                       "high": interval.get("high")}  # fmt: skip
    per_label = {name: {m: metrics["per_label"][name].get(m) for m in (*CE_METRICS, "support")}
                 for name in labels}  # fmt: skip
    return {"clinical": summary, "per_label": per_label,
            **corpus_bleu(hypotheses, references)}  # fmt: skip


def run_generation(
    run_dir: str | Path, split: str = "test", k: int = 1, n_boot: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Write a report for every study of ``split`` by retrieval from the training reports;
    writes ``generated.parquet`` and ``generation.json/.md`` into the run and returns the
    scores."""
    from cxrfuse.clip.embed import load_run
    
    run = load_run(run_dir, progress=progress)
    image, _, pairs = run.embed_split(split)
    bank_pairs = run.pairs("train")
    bank = run.embed_texts(bank_pairs.texts).float()
    similarity = image @ bank.T
    chosen = choose_reports(similarity, bank, k)
    labels = pairs.label_names
    texts = pd.Series(bank_pairs.texts)
    most_frequent = int(texts.map(texts.value_counts()).to_numpy().argmax())
    baselines = {
        "random training report": np.random.default_rng(0).integers(0, len(texts), len(pairs)),
        "most frequent training report": np.full(len(pairs), most_frequent),
    }
    scores = {}
    for name, index in {f"CLIP retrieval (k = {k})": chosen, **baselines}.items():
        scores[name] = score_reports(pairs.labels, bank_pairs.labels[index], labels,
                                     [bank_pairs.texts[i] for i in index], pairs.texts,
                                     n_boot=n_boot)  # fmt: skip
    frame = pd.DataFrame({
        "study_id": pairs.study_ids, "generated": [bank_pairs.texts[i] for i in chosen],
        "source_study_id": [bank_pairs.study_ids[i] for i in chosen],
        "similarity": similarity[torch.arange(len(chosen)), torch.as_tensor(chosen)].numpy(),
        "reference": pairs.texts,
    })  # fmt: skip
    out = Path(run_dir)
    frame.to_parquet(out / GENERATED_FILE, index=False)
    result = {"split": split, "k": k, "n": len(pairs), "bank": len(bank_pairs),
              "labels": labels, "n_boot": n_boot, "methods": scores,
              "sections": list(run.config.text.sections),
              "synthetic": run.synthetic, "images": run.manifest.images}  # fmt: skip
    RunDir(out).write_analysis(layout.GENERATION, result, generation_markdown(result))
    return result


def generation_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per way of choosing reports: micro/macro F1 with CIs, precision, recall, BLEU."""
    rows = []
    for name, s in result["methods"].items():
        c = s["clinical"]
        rows.append({
            "reports from": name, "micro F1 [95% CI]": _with_ci(c["micro_f1"]),
            "macro F1 [95% CI]": _with_ci(c["macro_f1"]),
            "micro precision": format_value(c["micro_precision"]["value"]),
            "micro recall": format_value(c["micro_recall"]["value"]),
            "BLEU-1": f"{s['bleu1']:.1f}", "BLEU-4": f"{s['bleu4']:.1f}",
        })  # fmt: skip
    return pd.DataFrame(rows)


def _with_ci(item: dict[str, Any]) -> str:
    return format_value(item["value"], None, item.get("low"), item.get("high"))


def generation_markdown(result: dict[str, Any]) -> str:
    lines = [(f"## Report generation by retrieval ({result['split']} split, N = {result['n']}; "
              f"{result['bank']} training reports)"), "",
             generation_table(result).to_markdown(index=False), "",
             ("Clinical efficacy: the labels of the chosen training report against the study's "
              "own labels (IU X-ray labels are derived from each report's text). BLEU against the "
              f"study's own {' + '.join(result['sections'])} text.")]  # fmt: skip
    if result.get("synthetic"):
        lines.append("Images are synthetic phantoms drawn from the labels (reports are real).")
    return "\n".join(lines) + "\n"
