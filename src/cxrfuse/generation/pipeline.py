"""The generation stage end to end, as ``cxrfuse generate`` runs it: a generator writes
reports for a split, the shortcut baselines are drawn from the training split for the same
studies, and everything is labelled, scored and written into one generation directory.

* :func:`generate_retrieval`: retrieval from an embedding store or a CLIP run;
* :func:`generate_with_vlm`: a vision-language model (zero-shot or with a LoRA adapter),
  optionally told the findings a cxrfuse classifier run predicts (design 001's two stages);
* :func:`finetune_vlm`: LoRA fine-tuning on the training split (then :func:`generate_with_vlm`);
* :func:`score_files`: any system's reports (JSON / CSV / Parquet) against references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxrfuse.data.manifest import Manifest, read_manifest
from cxrfuse.generation.baselines import baseline_reports, manifest_reports, plain_report
from cxrfuse.generation.labeler import Labeler
from cxrfuse.generation.lora import LoraSettings, finetune_lora
from cxrfuse.generation.outputs import write_generation
from cxrfuse.generation.reports_io import has_splits, read_reports
from cxrfuse.generation.retrieval import (
    Consensus,
    clip_vectors,
    nearest_reports,
    retrieve,
    store_vectors,
    train_reports,
)
from cxrfuse.generation.vlm import generate_reports, load_vlm
from cxrfuse.problems import DataError
from cxrfuse.rundir import GenerationDir, RunDir, p_column
from cxrfuse.runtime import now_iso
from cxrfuse.vocab import PHANTOM

ScoreOptions = Mapping[str, Any]
"""Keyword arguments of :func:`~cxrfuse.generation.outputs.write_generation`: ``n_boot``,
``n_boot_language``, ``seed``, ``meteor``."""


def _manifest(manifest: str | Path | Manifest) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else read_manifest(manifest)


def _validation(man: Manifest, split: str) -> dict[str, str] | None:
    """The val split's reports for choosing the sentence-consensus template; None (a held-out
    part of train) when val is the scored split or has no reports."""
    return None if split == "val" else (manifest_reports(man, ["val"]) or None)


def generate_retrieval(
    out: str | Path,
    *,
    manifest: str | Path | Manifest | None = None,
    store: str | Path | None = None,
    image_encoder: str = "efficientnet-lite0",
    input_size: int | None = None,
    indication_encoder: str | None = None,
    clip_run: str | Path | None = None,
    split: str = "test",
    k: int = 1,
    consensus: Consensus = "top1",
    labeler: Labeler | None = None,
    score: ScoreOptions | None = None,
    progress: bool = True,
) -> tuple[GenerationDir, dict[str, Any]]:
    """Reports by retrieval from the training split (a store's image [+ indication] space, or
    a CLIP run's image -> report space), scored beside the baselines."""
    score = dict(score or {})
    if clip_run is not None:
        space, nearest_space, man = clip_vectors(clip_run, split=split, progress=progress)
        source: dict[str, Any] = {"clip_run": str(clip_run)}
    elif manifest is not None and store is not None:
        man = _manifest(manifest)
        space = store_vectors(man, store, image_encoder, split=split, input_size=input_size,
                              indication_encoder=indication_encoder, progress=progress)  # fmt: skip
        nearest_space = space if indication_encoder is None else store_vectors(
            man, store, image_encoder, split=split, input_size=input_size, progress=False)
        source = {"store": str(store), "image_encoder": image_encoder,
                  "indication_encoder": indication_encoder}  # fmt: skip
    else:
        raise DataError("retrieval needs --clip RUN, or a MANIFEST with --store DIR")
    frame = retrieve(space, man, k=k, consensus=consensus)
    baselines, info = baseline_reports(train_reports(man), list(frame["study_id"]),
                                       seed=score.get("seed", 0),
                                       nearest=nearest_reports(nearest_space, man),
                                       validation=_validation(man, split))  # fmt: skip
    settings = {"generator": f"retrieval (k = {k}, {consensus})", "kind": "retrieval",
                "space": space.description, "k": k, "consensus": consensus, "split": split,
                "bank": len(space.bank_ids), "n_reports": len(frame),
                "synthetic_images": man.images == PHANTOM, "baselines": info,
                "written": now_iso(), **source}  # fmt: skip
    gen = GenerationDir(out)
    return gen, write_generation(gen, frame, settings, baselines, labeler=labeler, **score)


def classifier_findings(run_dir: str | Path, split: str = "test") -> dict[str, list[str]]:
    """Study id -> the labels a cxrfuse classifier run predicts positive on ``split`` (its
    stored predictions at its val-chosen thresholds; 0.5 where it was never evaluated)."""
    run = RunDir(run_dir)
    info = run.require(("head", "finetune"), action="classifier findings for the prompt")
    thresholds = run.sidecar().thresholds
    frame = run.predictions(info.labels, splits=(split,))
    frame = frame[frame["split"] == split]
    return {str(row["study_id"]): [n for n in info.labels
                                   if row[p_column(n)] >= thresholds.get(n, 0.5)]
            for _, row in frame.iterrows()}  # fmt: skip


def _nearest_baseline(man: Manifest, study_ids: Sequence[str], store: str | Path | None,
                      encoder: str | None, split: str) -> dict[str, str] | None:  # fmt: skip
    if store is None or encoder is None:
        return None
    space = store_vectors(man, store, encoder, split=split, progress=False)
    nearest = nearest_reports(space, man)
    missing = [s for s in study_ids if s not in nearest]
    if missing:
        raise DataError(f"{len(missing)} studies (e.g. {missing[0]}) have no image embedding "
                        "for the nearest-neighbour baseline")  # fmt: skip
    return nearest


def generate_with_vlm(
    model: str,
    manifest: str | Path | Manifest,
    out: str | Path,
    *,
    adapter: str | Path | None = None,
    findings_run: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    num_beams: int = 1,
    image_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    baseline_store: str | Path | None = "store",
    baseline_encoder: str | None = "efficientnet-lite0",
    labeler: Labeler | None = None,
    score: ScoreOptions | None = None,
    progress: bool = True,
) -> tuple[GenerationDir, dict[str, Any]]:
    """Reports from a vision-language model, scored beside the baselines (the
    nearest-neighbour one from ``baseline_encoder`` image embeddings in ``baseline_store``;
    None for either leaves it out)."""
    score = dict(score or {})
    man = _manifest(manifest)
    findings = classifier_findings(findings_run, split) if findings_run is not None else None
    vlm = load_vlm(model, adapter=None if adapter is None else str(adapter), device=device,
                   dtype=dtype)  # fmt: skip
    frame = generate_reports(vlm, man, split=split, limit=limit, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, findings=findings,
                             image_size=image_size, progress=progress, num_beams=num_beams)  # fmt: skip
    if frame.empty:
        raise DataError(f"no study of split {split!r} has a readable image to generate from")
    frame["reference"] = frame["reference"].map(plain_report)
    ids = list(frame["study_id"])
    nearest = _nearest_baseline(man, ids, baseline_store, baseline_encoder, split)
    baselines, info = baseline_reports(manifest_reports(man, ["train"]), ids,
                                       seed=score.get("seed", 0), nearest=nearest,
                                       validation=_validation(man, split))  # fmt: skip
    settings = {**frame.attrs.get("generation", {}),
                "generator": vlm.label if findings_run is None
                else f"{vlm.label} + findings of {Path(findings_run).name}",
                "kind": "vlm", "findings_run": None if findings_run is None else str(findings_run),
                "synthetic_images": man.images == PHANTOM, "baselines": info,
                "written": now_iso()}  # fmt: skip
    gen = GenerationDir(out)
    return gen, write_generation(gen, frame, settings, baselines, labeler=labeler, **score)


def finetune_vlm(model: str, manifest: str | Path | Manifest, out: str | Path,
                 settings: LoraSettings | None = None, *, findings_run: str | Path | None = None,
                 progress: bool = True) -> Path:  # fmt: skip
    """LoRA fine-tuning of ``model`` on the manifest's training split (validation loss on val,
    early stopping, resumable); returns the best epoch's adapter folder. With ``findings_run``
    the prompts carry that classifier's predictions (it must have predictions for the train
    and val studies: a run trained on another split, for example)."""
    man = _manifest(manifest)
    findings = None
    if findings_run is not None:
        findings = classifier_findings(findings_run, "train") | classifier_findings(findings_run,
                                                                                    "val")
    return finetune_lora(model, man, GenerationDir(out).path, settings, findings=findings,
                         progress=progress)  # fmt: skip


def _system_names(generated: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names:
        if len(names) != len(generated):
            raise DataError(f"{len(names)} --name for {len(generated)} --generated files; give one "
                            "name per generated file (in the same order) or none")
        out = [str(n) for n in names]
    else:
        out = [p.stem if p.name != "annotation.json" else str(p) for p in generated]
    if len(set(out)) != len(out):
        raise DataError(f"system names {out} repeat; name each --generated file with --name")
    return out


def auto_normalise(reference: str | Path) -> str:
    """``r2gen-mimic`` when the reference file names MIMIC, else ``r2gen-iu``."""
    return "r2gen-mimic" if "mimic" in str(reference).lower() else "r2gen-iu"


def _training_reports(path: Path, split: str | None, val_split: str | None,
                      scored: Sequence[str], split_file: str | Path | None = None,
                      ) -> tuple[dict[str, str], dict[str, str] | None, dict[str, Any]]:  # fmt: skip
    """(training reports, validation reports or None, what was used) of ``path``."""
    if split_file is not None:
        train = {k: v[0] for k, v in read_reports(path, split=split or "train", split_file=split_file).items()}
        try:
            val = {k: v[0] for k, v in read_reports(path, split=val_split or "val", split_file=split_file).items()}
        except DataError:
            if val_split is not None:
                raise
            val = None
        what = {"file": f"{path} (splits of {split_file})", "name": split or "train", "n": len(train)}
    elif path.suffix == ".parquet" and _is_manifest(path):
        man = read_manifest(path)
        train = manifest_reports(man, [split or "train"])
        val = manifest_reports(man, [val_split or "val"]) or None
        what = {"file": str(path), "name": split or "train", "n": len(train)}
    else:
        splits = has_splits(path)
        if splits and split is None:
            split = "train"
        train = {k: v[0] for k, v in read_reports(path, split=split).items()}
        val = None
        if splits:
            try:
                val = {k: v[0] for k, v in read_reports(path, split=val_split or "val").items()}
            except DataError:
                if val_split is not None:
                    raise
        elif val_split is not None:
            raise DataError(f"{path}: has no splits, so --val-split {val_split!r} cannot be chosen")
        what = {"file": str(path), "name": split, "n": len(train)}
    scored_set = set(scored)
    train = {k: plain_report(v) for k, v in train.items() if k not in scored_set}
    if val is not None:
        val = {k: plain_report(v) for k, v in val.items() if k not in scored_set} or None
    what["n"] = len(train)
    what["validation"] = (f"split {val_split or 'val'} ({len(val)} reports)" if val
                          else "a seeded fifth of the training reports")
    return train, val, what


def score_files(
    generated: str | Path | Sequence[str | Path],
    reference: str | Path,
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    reference_split: str | None = None,
    split_file: str | Path | None = None,
    train_reports: str | Path | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    normalise: str = "auto",
    labeler: Labeler | None = None,
    subset: bool = False,
    score: ScoreOptions | None = None,
    extra_metrics: Any = None,
) -> tuple[GenerationDir, dict[str, Any]]:
    """Score any systems' reports (``{id: text}`` JSON, CSV, Parquet, ReXrank JSON) against
    references, side by side on the same studies (the first is the generator; the others
    are compared with it, paired); with ``train_reports`` (training reports in the same
    formats, an R2Gen annotation.json / a file with splits (``train_split``, default
    ``train``), or a cxrfuse manifest) the random, most frequent, best constant and
    sentence-consensus baselines are scored beside, each with a verdict sentence.
    ``reference_split`` picks the scored split of a file with several; ``normalise`` is
    ``r2gen-iu``, ``r2gen-mimic``, ``none`` or ``auto`` (MIMIC when the reference file's name
    says so)."""
    score = dict(score or {})
    paths = [Path(generated)] if isinstance(generated, (str, Path)) else [Path(g) for g in generated]
    if not paths:
        raise DataError("no --generated file to score")
    system_names = _system_names(paths, names)
    systems = {path: read_reports(path, allow_empty=True, prediction=True) for path in paths}
    refs = read_reports(reference, split=reference_split, split_file=split_file)
    for path, gen in systems.items():
        extra = sorted(set(gen) - set(refs))
        if extra:
            where = f" split {reference_split!r} of" if reference_split else ""
            raise DataError(f"{path}: {len(extra)} generated studies (e.g. {extra[0]}) are not in "
                            f"the references ({where.strip() + ' ' if where else ''}{reference})")  # fmt: skip
    if subset:
        common = set.intersection(*(set(g) for g in systems.values()))
        refs = {k: v for k, v in refs.items() if k in common}
    for path, gen in systems.items():
        missing = sorted(set(refs) - set(gen))
        if missing:
            raise DataError(f"{path}: no generated report for {len(missing)} reference "
                            f"studies (e.g. {missing[0]}); pass --subset to score the studies "
                            "every system has")  # fmt: skip
    first = systems[paths[0]]
    frame = pd.DataFrame({"study_id": list(refs), "split": reference_split,
                          "generated": [first[k][0] for k in refs],
                          "reference": [refs[k][0] for k in refs]})  # fmt: skip
    others = {name: {k: systems[path][k][0] for k in refs}
              for name, path in zip(system_names[1:], paths[1:])}  # fmt: skip
    baselines, info, train_info = None, None, None
    if train_reports is not None:
        train, val, train_info = _training_reports(Path(train_reports), train_split, val_split, list(refs),
                                                   split_file)
        baselines, info = baseline_reports(train, list(refs), seed=score.get("seed", 0), validation=val)
    chosen = auto_normalise(reference) if normalise == "auto" else normalise
    settings = {"generator": system_names[0], "kind": "external", "systems": system_names,
                "generated": [str(p) for p in paths], "reference": str(reference),
                "split": {"name": reference_split, "n": len(refs), "file": str(reference) if split_file is None
                          else f"{reference} (splits of {split_file})"},
                "baselines_split": train_info, "normalise": chosen,
                "train_reports": None if train_reports is None else str(train_reports),
                "baselines": info, "written": now_iso()}  # fmt: skip
    out_dir = GenerationDir(out)
    return out_dir, write_generation(out_dir, frame, settings, baselines, labeler=labeler,
                                     normalise=chosen, others=others, extra_metrics=extra_metrics,
                                     **score)  # fmt: skip


def _is_manifest(path: Path) -> bool:
    try:
        read_manifest(path)
    except DataError:
        return False
    return True
