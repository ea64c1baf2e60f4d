"""The report of a ``cxrfuse sweep`` folder: the search (trial table, optimisation history,
parameter importance) beside the best config's one evaluation on test, with the warning that
this test figure is one look after a search."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrfuse.files import write_text
from cxrfuse.problems import DataError
from cxrfuse.reporting.document import Section, render_html, render_markdown
from cxrfuse.reporting.runs import run_sections
from cxrfuse.rundir import RunDir, layout
from cxrfuse.training.sweep import read_sweep


def sweep_sections(sweep_dir: Path) -> tuple[str, list[Section]]:
    """Title and sections: the search, then the best run's own report sections."""
    result = read_sweep(sweep_dir)
    best = result["best"]
    top = Section("Hyperparameter search")
    n = result["trials_requested"]
    top.add("warning", f"The test figures below are one look at the test split after a search "
            f"of {n} trial(s) on validation: the search chose on validation only (the trials read "
            "a manifest without its test rows), but with few validation studies the chosen "
            "config may fit validation noise; its test figure is not a fresh estimate of a "
            "config chosen without search.")
    looks = result.get("test_looks", [])
    if len(looks) > 1:
        top.add("warning", f"The test split has been read {len(looks)} times by this sweep "
                "(after " + ", ".join(f"{look['trials']} trials (best trial {look['best']})"
                                      for look in looks)
                + "): extending a sweep after seeing a test figure makes the last one a figure "
                "chosen after several looks, optimistic.")  # fmt: skip
    top.add("text", f"Objective: {result['objective']}; sampler {result['sampler']}; pruning: "
            f"{result['pruner']}. Trial states: "
            + ", ".join(f"{k.lower()} {v}" for k, v in result["states"].items())
            + f". Best trial **{best['number']}** (val loss {best['val_loss']:.4f}): "
            + ", ".join(f"`{k}` = {v:.4g}" if isinstance(v, float) else f"`{k}` = {v}"
                        for k, v in best["params"].items()) + ".")
    trials = pd.read_csv(sweep_dir / layout.SWEEP_TRIALS)
    top.add("table", trials.round(5).astype(object).where(trials.notna(), "-"),
            "Every trial: the best epoch's validation loss (pruned trials stopped early).")
    for name, caption in zip(layout.SWEEP_PLOTS, ("Optimisation history (validation loss)",
                                                  "Parameter importance (fANOVA over the complete trials; with few trials it is a rough guide)")):
        if (sweep_dir / name).is_file():
            top.add("image", sweep_dir / name, caption)
    sections = [top]
    best_run = RunDir(sweep_dir / layout.SWEEP_BEST)
    if best_run.has_metrics():
        _, run_parts = run_sections(best_run.path)
        for part in run_parts:
            part.title = f"Best config: {part.title}"
        sections += run_parts
    else:
        sections.append(Section("Best config").add(
            "note", f"{best_run.path} is not evaluated yet: run `cxrfuse evaluate {best_run.path}`"))
    return f"cxrfuse report: sweep {result['name']}", sections


def write_sweep_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """``report.html`` and ``report.md`` in the sweep folder."""
    root = Path(sweep_dir)
    if not (root / layout.SWEEP_RESULT).is_file():
        raise DataError(f"{root}: no {layout.SWEEP_RESULT}; is this a finished sweep?")
    title, sections = sweep_sections(root)
    html_path, md_path = root / layout.REPORT_HTML, root / layout.REPORT_MD
    write_text(html_path, render_html(title, sections, root))
    write_text(md_path, render_markdown(title, sections, root))
    return html_path, md_path
