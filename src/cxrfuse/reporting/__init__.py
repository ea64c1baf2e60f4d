"""The human report on the top floor: ``report.html`` (self-contained) and ``report.md`` for a
run, an experiment, a CLIP run or a generation directory, built from what the lower stages left in the directory
(evaluation, explanations, CLIP analyses), evaluating first when nothing is there yet.

    from cxrfuse.reporting import write_report

    html_path, md_path = write_report("runs/iu-exp")
"""

from __future__ import annotations

from pathlib import Path

from cxrfuse.evaluation import evaluate_experiment, evaluate_run
from cxrfuse.files import write_text
from cxrfuse.problems import DataError
from cxrfuse.reporting.clip import clip_sections
from cxrfuse.reporting.document import Block, Section, render_html, render_markdown
from cxrfuse.reporting.experiment import experiment_sections
from cxrfuse.reporting.generation import finetune_section, generation_sections
from cxrfuse.reporting.runs import run_sections
from cxrfuse.rundir import ExperimentDir, GenerationDir, RunDir

__all__ = ["Block", "Section", "render_html", "render_markdown", "write_report"]


def write_report(path: str | Path, *, evaluate_if_missing: bool = True) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into a run, experiment or CLIP run directory.

    Evaluates first (default settings) when the run has no ``metrics.json`` (or the experiment
    no ``evaluation.json``); a CLIP run reports the analyses it holds. Returns the two paths.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    run, gen = RunDir(root), GenerationDir(root)
    tuned = finetune_section(gen) if not run.exists() else None
    if (gen.exists() or tuned is not None) and not run.exists():
        if not gen.has_scores() and tuned is None:
            raise DataError(f"{root}: no scores yet; run `cxrfuse generate score` first")
        title = f"cxrfuse report: generated reports {gen.name}"
        sections = ([tuned] if tuned is not None else []) + generation_sections([gen])
        html_path, md_path = gen.report_html, gen.report_md
    elif run.exists():
        if run.kind() == "clip":
            title, sections = clip_sections(root)
        else:
            if not run.has_metrics():
                if not evaluate_if_missing:
                    raise DataError(f"{root}: no metrics.json; run `cxrfuse evaluate {root}` first")
                evaluate_run(run)
            title, sections = run_sections(root)
        html_path, md_path = run.report_html, run.report_md
    else:
        exp = ExperimentDir(root)
        exp.run_dirs()  # clear error when this is neither a run nor an experiment
        if not exp.has_evaluation():
            if not evaluate_if_missing:
                raise DataError(f"{root}: no evaluation.json; run `cxrfuse evaluate {root}` first")
            evaluate_experiment(root)
        title, sections = experiment_sections(root)
        html_path, md_path = exp.report_html, exp.report_md
    write_text(html_path, render_html(title, sections, root))
    write_text(md_path, render_markdown(title, sections, root))
    return html_path, md_path
