"""Scoring any systems' report files (``cxrfuse generate score``): JSON / CSV / Parquet /
ReXrank / R2Gen annotation.json against references, side by side on the same studies, with
the shortcut baselines drawn from training reports. The scoring side of the package: no
generator is loaded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxrfuse.data.manifest import read_manifest
from cxrfuse.generation.baselines import baseline_reports, manifest_reports, plain_report
from cxrfuse.generation.labeler import Labeler
from cxrfuse.generation.outputs import ScoreOptions, write_generation
from cxrfuse.generation.reports_io import has_splits, read_reports
from cxrfuse.problems import DataError
from cxrfuse.rundir import GenerationDir
from cxrfuse.runtime import now_iso


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
