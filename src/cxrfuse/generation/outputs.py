"""What every generator writes (a generation directory, :class:`~cxrfuse.rundir.GenerationDir`)
and how it is scored: the generated and reference reports with the labels extracted from
both, the generator's language and clinical scores, and the same scores of the shortcut
baselines on the same studies (:mod:`cxrfuse.generation.baselines`), side by side.

Every text is scored as findings + impression without section headers
(:func:`~cxrfuse.generation.baselines.plain_report`), after R2Gen's normalisation for the
language metrics (:mod:`cxrfuse.generation.language`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfuse.data.manifest import label_slug
from cxrfuse.files import folder_lock
from cxrfuse.generation.baselines import plain_report
from cxrfuse.generation.labeler import CHEXPERT_LABELS, Labeler, RuleLabeler
from cxrfuse.generation.scoring import paired_comparison, private_keys, score_reports
from cxrfuse.generation.table import (
    CLINICAL_ROWS,
    LANGUAGE_ROWS,
    format_estimate,
    paired_table,
    provenance_lines,
    scores_table,
    verdict_sentences,
)
from cxrfuse.problems import DataError
from cxrfuse.rundir import GenerationDir


def with_labels(frame: pd.DataFrame, labeler: Labeler) -> pd.DataFrame:
    """``frame`` plus ``gen__<label>`` and ``ref__<label>`` columns (1 / 0 / -1 / NaN)."""
    out = frame.copy()
    for prefix, column in (("gen", "generated"), ("ref", "reference")):
        labels = labeler.label([plain_report(t) for t in out[column].fillna("")])
        for j, name in enumerate(CHEXPERT_LABELS):
            out[f"{prefix}__{label_slug(name)}"] = labels[:, j]
    return out


def _study_labels(payload: dict[str, Any]) -> pd.DataFrame:
    labels = payload.pop("study_labels")
    names = list(labels["labels"])
    rows = [{"id": sid, "source": source, **dict(zip(names, values))}
            for source in ("reference", "generated") for sid, values in labels[source].items()]
    return pd.DataFrame(rows, columns=["id", "source", *names])


def score_generation(
    frame: pd.DataFrame,
    baselines: Mapping[str, Mapping[str, str]] | None = None,
    *,
    labeler: Labeler | None = None,
    n_boot: int = 1000,
    n_boot_language: int = 200,
    seed: int = 0,
    meteor: bool = True,
    normalise: str | None = None,
    others: Mapping[str, Mapping[str, str]] | None = None,
    generator: str = "generator",
    extra_metrics: Any = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """(scores.json payload, per-study labels) of ``frame`` (``study_id``, ``generated``,
    ``reference``), with each baseline's scores under ``baselines``, on the studies that have a
    reference report. ``others`` (name -> study id -> report) are more systems scored on the
    same studies (under ``systems``); ``paired`` holds each other system minus the generator,
    ``versus_baselines`` each system minus each baseline (paired bootstrap differences), and
    ``verdicts`` a sentence per system and baseline. The in-memory ``_per_study`` table is
    what :func:`study_scores` writes."""
    scored = frame[frame["reference"].fillna("").str.strip() != ""]
    if scored.empty:
        raise DataError("no generated study has a reference report (findings/impression) to "
                        "score against")  # fmt: skip
    refs = {s: [plain_report(r)] for s, r in zip(scored["study_id"], scored["reference"])}
    labeler = labeler or RuleLabeler()
    options = {"labeler": labeler, "n_boot": n_boot, "n_boot_language": n_boot_language,
               "seed": seed, "meteor": meteor, "normalise": normalise,
               "extra_metrics": extra_metrics}  # fmt: skip
    gen = {s: plain_report(t) for s, t in zip(scored["study_id"], scored["generated"])}
    payload = score_reports(gen, refs, **options)
    labels = _study_labels(payload)
    payload["n_without_reference"] = int(len(frame) - len(scored))
    systems = {generator: payload}
    payload["systems"] = {}
    for name, reports in (others or {}).items():
        result = score_reports({s: plain_report(reports[s]) for s in refs}, refs, **options)
        result.pop("study_labels")
        payload["systems"][name] = systems[name] = result
    payload["baselines"] = {}
    for name, reports in (baselines or {}).items():
        result = score_reports({s: plain_report(reports[s]) for s in refs}, refs, **options)
        result.pop("study_labels")
        payload["baselines"][name] = result
    payload["paired"] = {f"{name} - {generator}": paired_comparison(result, payload)
                         for name, result in payload["systems"].items()}  # fmt: skip
    payload["versus_baselines"] = {
        name: {b: paired_comparison(result, base) for b, base in payload["baselines"].items()}
        for name, result in systems.items()}
    payload["verdicts"] = [sentence for name, result in systems.items()
                           for sentence in verdict_sentences(name, payload["versus_baselines"][name],
                                                             meteor=result.get("meteor") is not None)]
    payload["_per_study"] = study_scores({**systems, **payload["baselines"]})
    return payload, labels


def study_scores(systems: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per study and system: its per-study scores (``_per_study`` of each payload)."""
    frames = []
    for name, result in systems.items():
        frame = pd.DataFrame({k: np.asarray(v) for k, v in result["_per_study"].items()})
        frame.insert(0, "system", name)
        frame.insert(0, "study_id", list(result["_ids"]))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def comparison_table(payload: Mapping[str, Any], generator: str = "generator") -> pd.DataFrame:
    """Metrics (rows) of the generator and each baseline (columns): value [95 % CI]."""
    systems = {generator: payload, **payload.get("systems", {}), **payload.get("baselines", {})}
    rows = []
    for title, key in LANGUAGE_ROWS:
        rows.append({"metric": title, **{n: " ".join(format_estimate(s.get(key))).strip()
                                         for n, s in systems.items()}})  # fmt: skip
    for title, key in CLINICAL_ROWS:
        rows.append({"metric": title, **{n: " ".join(format_estimate(
            (s.get("clinical") or {}).get(key))).strip() for n, s in systems.items()}})  # fmt: skip
    for key in (payload.get("extra") or {}):
        rows.append({"metric": key, **{n: " ".join(format_estimate(
            (s.get("extra") or {}).get(key))).strip() for n, s in systems.items()}})  # fmt: skip
    return pd.DataFrame(rows)


def scores_markdown(payload: Mapping[str, Any], generator: str = "generator",
                    settings: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    """The side-by-side table, the generator's full table, and what the baselines are."""
    lines = [f"## Report generation: {generator}", ""]
    if settings and settings.get("synthetic_images"):
        lines += [("**Synthetic images**: the images are phantoms drawn from each study's labels "
                  "(the reports are real); these scores say nothing about real radiographs."), ""]
    lines += [(f"{payload.get('n_studies')} studies with a reference report; 95 % bootstrap "
              "intervals. Language metrics reward the normal template: read them beside the "
              "baselines and the clinical F1."), "",
              comparison_table(payload, generator).to_markdown(index=False), "",
              *provenance_lines(payload, settings), ""]  # fmt: skip
    if payload.get("verdicts"):
        lines += [("**Against the baselines** (paired bootstrap of the difference on the same "
                  "studies; 'beats' = the 95 % interval is above 0):"), "",
                  *(f"- {v}" for v in payload["verdicts"]), ""]
    for title, diffs in (payload.get("paired") or {}).items():
        lines += [f"**{title}** (paired bootstrap, same studies):", "",
                  paired_table(diffs).to_markdown(index=False), ""]
    lines += [f"### {generator}", "", scores_table(private_keys(payload)), ""]
    return "\n".join(lines) + "\n"


ScoreOptions = Mapping[str, Any]
"""Keyword arguments of :func:`write_generation`: ``n_boot``, ``n_boot_language``, ``seed``,
``meteor``."""


def write_generation(
    out: GenerationDir,
    frame: pd.DataFrame,
    settings: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, str]] | None = None,
    *,
    labeler: Labeler | None = None,
    n_boot: int = 1000,
    n_boot_language: int = 200,
    seed: int = 0,
    meteor: bool = True,
    normalise: str | None = None,
    others: Mapping[str, Mapping[str, str]] | None = None,
    extra_metrics: Any = None,
) -> dict[str, Any]:
    """Label, write and score a generator's reports (and ``others``) into ``out``; returns the
    scores (with the in-memory ``_samples`` / ``_per_study`` keys; scores.json has neither,
    the per-study scores go to ``study_scores.parquet``)."""
    missing = [c for c in ("study_id", "split", "generated", "reference") if c not in frame]
    if missing:
        raise DataError(f"generated reports lack column(s) {missing}")
    labeler = labeler or RuleLabeler()
    generator = str(settings.get("generator", out.name))
    with folder_lock(out.path, "the generation directory"):
        out.write_generated(with_labels(frame, labeler), settings)
        payload, labels = score_generation(frame, baselines, labeler=labeler, n_boot=n_boot,
                                           n_boot_language=n_boot_language, seed=seed,
                                           meteor=meteor, normalise=normalise, others=others,
                                           generator=generator, extra_metrics=extra_metrics)  # fmt: skip
        payload["generator"] = generator
        for key in ("split", "baselines_split"):
            if settings.get(key):
                payload.setdefault("versions", {})[key] = settings[key]
        out.write_study_scores(payload["_per_study"])
        out.write_scores(private_keys(payload), scores_markdown(payload, generator, settings),
                         labels)  # fmt: skip
    return payload


def differing_findings(row: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(observations only the generated report states positive, only the reference does) of a
    row of ``generated.parquet`` (its ``gen__`` / ``ref__`` columns)."""
    only_gen, only_ref = [], []
    for name in CHEXPERT_LABELS:
        g = row.get(f"gen__{label_slug(name)}")
        r = row.get(f"ref__{label_slug(name)}")
        g_pos, r_pos = bool(np.nan_to_num(g) == 1), bool(np.nan_to_num(r) == 1)
        if g_pos and not r_pos:
            only_gen.append(name)
        elif r_pos and not g_pos:
            only_ref.append(name)
    return only_gen, only_ref


def export_rexrank(gen: GenerationDir, out: str | Path, template: str | Path | None = None) -> Path:
    """The generated reports of ``gen`` in ReXrank's prediction layout:
    ``{study_id: {..., "model_prediction": text}}``. With ``template`` (ReXrank's test JSON)
    each study's record is copied and ``model_prediction`` added; a study of the template
    without a generated report, or a generated one not in it, is a DataError. Without it,
    each record holds the reference as ``report``."""
    import json

    from cxrfuse.files import write_text

    frame = gen.generated()
    texts = {str(s): str(t) for s, t in zip(frame["study_id"], frame["generated"].fillna(""))}
    if template is not None:
        path = Path(template)
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: not a readable ReXrank JSON ({exc})") from exc
        if not isinstance(records, dict) or not all(isinstance(v, dict) for v in records.values()):
            raise DataError(f"{path}: expected ReXrank's {{study_id: {{...}}}} records")
        missing = sorted(set(records) - set(texts))
        extra = sorted(set(texts) - set(records))
        if missing or extra:
            raise DataError(f"{path}: {len(missing)} template studies without a generated report "
                            f"(e.g. {missing[:1]}), {len(extra)} generated studies not in it "
                            f"(e.g. {extra[:1]})")
        payload = {k: {**v, "model_prediction": texts[k]} for k, v in records.items()}
    else:
        refs = dict(zip(frame["study_id"].astype(str), frame["reference"].fillna("")))
        payload = {k: {"report": refs[k], "model_prediction": v} for k, v in texts.items()}
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text(target, json.dumps(payload, indent=2) + "\n")
    return target
