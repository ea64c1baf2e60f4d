"""The embedded default, end to end: bundled IU X-ray reports + phantom images.

What exists so far: ingest the 3,955 reports that torchxrayvision ships, split them at patient
level, render label-conditioned phantom radiographs, and write a data report that compares two
text choices with the leakage audit: masked findings+impression versus indication only.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from rich.console import Console

from cxrfuse.data import Manifest, read_manifest
from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.data.splits import assign_splits, split_summary
from cxrfuse.stats import manifest_summary, render_summary
from cxrfuse.text import TextConfig, audit_leakage

TEXT_CHOICES = {
    "masked findings+impression (leaks: the labels were derived from this text)":
        TextConfig(sections=["findings", "impression"], mask_labels=True),
    "indication only (written before the image is read)": TextConfig(sections=["indication"], mask_labels=True),
}


def run_demo(out: Path, *, size: int = 256, limit: int = 0, console: Console | None = None) -> Path:
    """Run the demo into ``out`` and return the path of its report (Markdown)."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "iu.parquet"
    if manifest_path.exists():
        manifest = read_manifest(manifest_path)
        console.print(f"[dim]reusing {manifest_path}[/]")
    else:
        console.rule("1. ingest the IU X-ray reports that torchxrayvision ships")
        manifest, problems = ingest_iu_xray()
        if limit:
            manifest = manifest.replace(df=manifest.df.head(limit).copy())
        console.print(problems.summary())
        console.rule("2. patient-level stratified split (70/10/20, seed 0)")
        manifest = assign_splits(manifest, (0.7, 0.1, 0.2), seed=0, task="multilabel")
        manifest.save(manifest_path)
    console.rule("3. phantom images (synthetic pixels, label-conditioned)")
    phantoms = make_phantoms(manifest, out / "phantoms", PhantomConfig(size=size, seed=0))
    console.print(render_summary(phantoms))
    console.rule("4. leakage audit of two text choices")
    audits = {}
    for title, config in TEXT_CHOICES.items():
        console.print(f"[bold]{title}[/]")
        audits[title] = {task: audit_leakage(phantoms, config, task=task) for task in phantoms.tasks}
        for audit in audits[title].values():
            console.print(audit.render(show_zero=False))
    gallery = _phantom_gallery(phantoms, out / "phantom_gallery.png")
    return _write_report(phantoms, audits, gallery, out / "report.md")


def _phantom_gallery(manifest: Manifest, path: Path, n: int = 8) -> Path:
    """A grid of frontal phantoms with their labels, so a person can see what the model sees."""
    df = manifest.df[manifest.has_images()]
    picks = [df.index[df["label_abnormal"] == 0][0]] if (df["label_abnormal"] == 0).any() else []
    for col in manifest.label_columns[1:]:
        hits = df.index[df[col] == 1]
        if len(hits) and len(picks) < n:
            picks.append(hits[0])
    fig, axes = plt.subplots(2, (len(picks) + 1) // 2, figsize=(3 * ((len(picks) + 1) // 2), 6.4))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, idx in zip(np.ravel(axes), picks):
        row = df.loc[idx]
        ax.imshow(np.asarray(Image.open(row["views"][0]["path"])), cmap="gray")
        positives = [name for name, col in zip(manifest.labels[1:], manifest.label_columns[1:]) if row[col] == 1]
        ax.set_title(f"{row['study_id']}\n" + (", ".join(positives) or "normal"), fontsize=8)
    fig.suptitle("Synthetic phantom radiographs (not real images)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_report(manifest: Manifest, audits: dict, gallery: Path, path: Path) -> Path:
    s = manifest_summary(manifest)
    lines = [
        "# cxrfuse demo: IU X-ray reports + phantom images",
        "",
        ("> **The images are synthetic phantoms**, rendered from each study's labels; the report text is "
         "the real IU X-ray text that torchxrayvision ships. No number here says anything about real radiographs."),
        "",
        "## Data",
        "",
        f"- studies: {s['studies']}, patients: {s['patients']}, studies with report text: {s['studies_with_report']}",
        f"- views: {', '.join(f'{k} {v}' for k, v in s['views'].items())}",
        f"- ingest problems: {', '.join(f'{k} {v}' for k, v in s['problems'].items()) or 'none'}",
        "",
        "### Labels per split (positives/known)",
        "",
        split_summary(manifest).T.to_markdown(),
        "",
        f"![phantoms]({gallery.name})",
        "",
        "## Does the text carry the label? (leakage audit)",
        "",
        ("IU labels are MeSH terms derived from the findings and impression. A text model that reads them reads "
         "the label, even after masking (the words around a finding carry it). The audit counts, per label, the "
         "studies whose prepared text still contains a label term or a context word."),
        "",
    ]
    for title, per_task in audits.items():
        lines += [f"### {title}", ""]
        for task, audit in per_task.items():
            frame = audit.to_frame()
            surviving = frame[frame["studies"] > 0]
            lines += [
                (f"**task {task}**: {audit.total_surviving} surviving label-term / label-phrase hits, "
                 f"{audit.total_probe} context-word hits, over {len(frame)} term families "
                 f"({len(frame) - len(surviving)} families with no hit are not listed)."),
                "",
                surviving.to_markdown(index=False) if len(surviving) else "_nothing survives_",
                "",
            ]
    path.write_text("\n".join(lines))
    return path
