"""Report generation verbs: ``cxrfuse generate retrieval | vlm | finetune | score``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrfuse.cli import app, console, friendly_errors
from cxrfuse.cli.options import (
    DeviceOption,
    NoWaitOption,
    Precision,
    PrecisionOption,
    ProgressOption,
)

generate_app = typer.Typer(
    help="Radiology report generation (retrieval, vision-language models, LoRA fine-tuning) and "
    "its scoring: pycocoevalcap language metrics and CheXpert clinical efficacy, always beside "
    "the shortcut baselines (random, most frequent, best constant training report, "
    "nearest-neighbour retrieval).",
    no_args_is_help=True,
)
app.add_typer(generate_app, name="generate")

Out = Annotated[Path, typer.Option("--out", help="Generation directory to write.")]
Split = Annotated[str, typer.Option(help="Split whose studies get a report.")]
NBoot = Annotated[int, typer.Option(min=0, help="Bootstrap resamples (clinical scores).")]
NBootLanguage = Annotated[int, typer.Option(min=0, help="Bootstrap resamples (language "
                                                        "metrics; recomputed per resample).")]
Meteor = Annotated[bool, typer.Option("--meteor/--no-meteor", help="METEOR (needs Java).")]
Labeler = Annotated[str, typer.Option(help="rules (built in) or chexbert (needs --chexbert).")]
Chexbert = Annotated[Path | None, typer.Option(help="CheXbert checkpoint (chexbert.pth).")]
Seed = Annotated[int, typer.Option(help="Seed of the baselines and the bootstrap.")]
Tracking = Annotated[str | None, typer.Option(
    "--tracking", metavar="mlflow|tensorboard|csv|none",
    help="Log the LoRA settings and every epoch's train / val loss to this tracker, as training "
    "runs do (MLflow: $MLFLOW_TRACKING_URI, else mlruns.db beside the --out folder; TensorBoard "
    "and CSV: under --out/logs/).")]


def _labeler(name: str, chexbert: Path | None) -> Any:
    from cxrfuse.generation import make_labeler

    return make_labeler(name, chexbert)


def _show(gen: Any, payload: dict[str, Any]) -> None:
    from cxrfuse.generation import comparison_table, paired_table, provenance_lines

    table = comparison_table(payload, payload.get("generator", "generator"))
    console.print(table.to_markdown(index=False), markup=False, highlight=False, soft_wrap=True)
    for line in provenance_lines(payload):
        console.print(line, markup=False, highlight=False)
    for verdict in payload.get("verdicts", []):
        console.print(f"verdict: {verdict}", markup=False, highlight=False)
    for title, diffs in (payload.get("paired") or {}).items():
        console.print(f"{title} (paired bootstrap, same studies):", markup=False, highlight=False)
        console.print(paired_table(diffs).to_markdown(index=False), markup=False, highlight=False)
    for note in payload.get("notes", []):
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"wrote [bold]{gen.generated_path}[/], {gen.scores_path.name} and "
                  f"{gen.scores_md.name} in {gen.path}; `cxrfuse report {gen.path}` for "
                  "report.html")  # fmt: skip


@generate_app.command("retrieval")
@friendly_errors
def retrieval_cmd(
    manifest: Annotated[Path | None, typer.Argument(
        metavar="[MANIFEST]", help="A split manifest (with --store); not needed with --clip.")] = None,
    out: Out = Path("generation/retrieval"),
    store: Annotated[Path | None, typer.Option(help="Embedding store (embeds what it lacks).")] = None,
    image_encoder: Annotated[str, typer.Option(help="Registered image encoder of the store.")] =
    "efficientnet-lite0",
    input_size: Annotated[int | None, typer.Option(help="Image encoder input size.")] = None,
    indication_encoder: Annotated[str | None, typer.Option(
        help="Also match the indication with this text encoder (query by image + indication).")] = None,
    clip: Annotated[Path | None, typer.Option(
        "--clip", help="A `cxrfuse clip train` run: image -> report in its joint space.")] = None,
    split: Split = "test",
    k: Annotated[int, typer.Option(min=1, help="Neighbours to build the report from.")] = 1,
    consensus: Annotated[str, typer.Option(
        help="top1 (nearest), medoid (of the k neighbour reports) or sentences (those half of "
        "them share).")] = "top1",
    labeler: Labeler = "rules",
    chexbert: Chexbert = None,
    n_boot: NBoot = 1000,
    n_boot_language: NBootLanguage = 200,
    meteor: Meteor = True,
    seed: Seed = 0,
    progress: ProgressOption = True,
    no_wait: NoWaitOption = False,
) -> None:
    """Write a report for every study of a split by retrieval from the training reports, scored
    beside the baselines (a test or val report is never retrievable).

    Example: `cxrfuse generate retrieval iu.parquet --store store/ --k 5 --consensus medoid --out gen/knn5`

    Example: `cxrfuse generate retrieval --clip runs/iu-clip-lit --out runs/iu-clip-lit/generation/clip`
    """
    from cxrfuse.files import set_lock_wait
    from cxrfuse.generation import generate_retrieval

    set_lock_wait(not no_wait)
    gen, payload = generate_retrieval(
        out, manifest=manifest, store=store, image_encoder=image_encoder, input_size=input_size,
        indication_encoder=indication_encoder, clip_run=clip, split=split, k=k,
        consensus=consensus, labeler=_labeler(labeler, chexbert), progress=progress,  # type: ignore[arg-type]
        score={"n_boot": n_boot, "n_boot_language": n_boot_language, "seed": seed,
               "meteor": meteor},
    )  # fmt: skip
    _show(gen, payload)


@generate_app.command("vlm")
@friendly_errors
def vlm_cmd(
    model: Annotated[str, typer.Argument(help="Hugging Face image-text-to-text model id or a "
                                         "local folder (e.g. meta-llama/Llama-3.2-11B-Vision-Instruct).")],
    manifest: Annotated[Path, typer.Argument(help="A split manifest with image paths.")],
    out: Out = Path("generation/vlm"),
    adapter: Annotated[Path | None, typer.Option(help="LoRA adapter folder (`generate finetune`).")] = None,
    findings_from: Annotated[Path | None, typer.Option(
        help="A cxrfuse classifier run: its predicted findings go into the prompt (design 001).")] = None,
    split: Split = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many studies.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    num_beams: Annotated[int, typer.Option(min=1, help="1 = greedy.")] = 1,
    image_size: Annotated[int | None, typer.Option(help="Resize views to this side first.")] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.auto,
    baseline_store: Annotated[Path | None, typer.Option(
        help="Store for the nearest-neighbour baseline's image embeddings.")] = Path("store"),
    baseline_encoder: Annotated[str | None, typer.Option(
        help="Image encoder of the nearest-neighbour baseline ('none' leaves it out).")] =
    "efficientnet-lite0",
    labeler: Labeler = "rules",
    chexbert: Chexbert = None,
    n_boot: NBoot = 1000,
    n_boot_language: NBootLanguage = 200,
    meteor: Meteor = True,
    seed: Seed = 0,
    progress: ProgressOption = True,
    no_wait: NoWaitOption = False,
) -> None:
    """Generate reports with a vision-language model (the study's views, its indication and,
    optionally, a classifier's findings in the prompt), scored beside the baselines. Offline
    without the weights it fails naming the model and how to get it.

    Example: `cxrfuse generate vlm meta-llama/Llama-3.2-11B-Vision-Instruct iu.parquet --adapter gen/lora/adapter --out gen/llama-lora`
    """
    from cxrfuse.files import set_lock_wait
    from cxrfuse.generation import generate_with_vlm

    set_lock_wait(not no_wait)
    encoder = None if baseline_encoder in (None, "none") else baseline_encoder
    gen, payload = generate_with_vlm(
        model, manifest, out, adapter=adapter, findings_run=findings_from, split=split,
        limit=limit, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams,
        image_size=image_size, device=device, dtype=precision.value, baseline_store=baseline_store,
        baseline_encoder=encoder, labeler=_labeler(labeler, chexbert), progress=progress,
        score={"n_boot": n_boot, "n_boot_language": n_boot_language, "seed": seed,
               "meteor": meteor},
    )  # fmt: skip
    _show(gen, payload)


@generate_app.command("finetune")
@friendly_errors
def finetune_cmd(
    model: Annotated[str, typer.Argument(help="Hugging Face image-text-to-text model id or folder.")],
    manifest: Annotated[Path, typer.Argument(help="A split manifest with image paths.")],
    out: Out = Path("generation/lora"),
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="A LoRA setting: key=value (YAML value), e.g. r=8, epochs=5, lr=1e-4; "
        "repeatable.")] = None,
    findings_from: Annotated[Path | None, typer.Option(
        help="A cxrfuse classifier run whose predictions go into the training prompts.")] = None,
    tracking: Tracking = None,
    progress: ProgressOption = True,
    no_wait: NoWaitOption = False,
) -> None:
    """LoRA fine-tuning (peft) on the training split's image-report pairs: findings +
    impression as the target, the indication as input only; validation loss per epoch, early
    stopping, resumable (rerun the same command), adapters saved as safetensors. --out must be
    a new or empty folder or an earlier fine-tuning's (it replaces adapter/ and checkpoint/
    there).

    Example: `cxrfuse generate finetune meta-llama/Llama-3.2-11B-Vision-Instruct iu.parquet --set epochs=3 --out gen/lora`
    """
    from cxrfuse.config import TrackingConfig, parse_override, validate_config
    from cxrfuse.files import set_lock_wait
    from cxrfuse.generation import LoraSettings, finetune_vlm

    set_lock_wait(not no_wait)
    raw = dict(parse_override(item) for item in set_ or [])
    settings = validate_config(LoraSettings, raw, "--set")
    tracker = None if tracking is None else validate_config(TrackingConfig, {"kind": tracking},
                                                            "--tracking")  # fmt: skip
    adapter = finetune_vlm(model, manifest, out, settings, findings_run=findings_from,
                           progress=progress, tracking=tracker)  # fmt: skip
    console.print(f"best adapter: [bold]{adapter}[/]; generate with `cxrfuse generate vlm "
                  f"{model} {manifest} --adapter {adapter}`")  # fmt: skip


@generate_app.command("score")
@friendly_errors
def score_cmd(
    generated: Annotated[list[Path], typer.Option(help="Generated reports: JSON {id: text} or "
                                                  "{id: [text]}, CSV or Parquet (id, text columns), "
                                                  "a ReXrank prediction JSON; repeat for several "
                                                  "systems, scored side by side (paired).")],
    reference: Annotated[Path, typer.Option(help="Reference reports, same formats, or an R2Gen "
                                            "annotation.json / ReXrank JSON / table with a split "
                                            "column (with --reference-split).")],
    out: Out = Path("generation/scores"),
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="Column name of each --generated system, in the same order.")] = None,
    reference_split: Annotated[str | None, typer.Option(
        help="The scored split of a reference file with several (test, val; MIMIC's validate = val).")] = None,
    split_file: Annotated[Path | None, typer.Option(
        help="A split table (id column + split, e.g. MIMIC-CXR's mimic-cxr-2.0.0-split.csv.gz) "
        "that assigns the reports of --reference and --train-reports to splits.")] = None,
    train_reports: Annotated[Path | None, typer.Option(
        help="Training reports (same formats, an R2Gen annotation.json, or a cxrfuse manifest): "
        "adds the random, most frequent, best constant and sentence-consensus baselines.")] = None,
    train_split: Annotated[str | None, typer.Option(
        help="Split of --train-reports to draw the baselines from (default train when it has splits).")] = None,
    val_split: Annotated[str | None, typer.Option(
        help="Split of --train-reports that chooses the sentence-consensus template (default val "
        "when it has one, else a fifth of the training reports).")] = None,
    normalise: Annotated[str, typer.Option(
        help="Text cleaning: r2gen-iu, r2gen-mimic, none, or auto (r2gen-mimic when the reference "
        "file's name says mimic).")] = "auto",
    metrics: Annotated[str | None, typer.Option(
        help="More metrics, e.g. radeval:radgraph,bertscore,ratescore (needs the radeval package "
        "and its model weights).")] = None,
    subset: Annotated[bool, typer.Option(help="Score only the ids every system has.")] = False,
    labeler: Labeler = "rules",
    chexbert: Chexbert = None,
    n_boot: NBoot = 1000,
    n_boot_language: NBootLanguage = 200,
    meteor: Meteor = True,
    seed: Seed = 0,
    no_wait: NoWaitOption = False,
) -> None:
    """Score any systems' reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap, R2Gen
    normalisation) and CheXpert clinical F1 (14 and 5 observations), with 95 % intervals,
    paired differences between systems and a verdict against each baseline.

    Example: `cxrfuse generate score --generated r2gen.json --name R2Gen --generated cmn.json --name CMN --reference annotation.json --reference-split test --train-reports annotation.json --out scores/iu`
    """
    from cxrfuse.files import set_lock_wait
    from cxrfuse.generation import normalisation_style, parse_metrics, score_files

    set_lock_wait(not no_wait)
    if normalise != "auto":
        normalisation_style(normalise)
    extra = parse_metrics(metrics) if metrics else None
    gen, payload = score_files(
        generated, reference, out, names=name, reference_split=reference_split, split_file=split_file,
        train_reports=train_reports, train_split=train_split, val_split=val_split,
        normalise=normalise, subset=subset, labeler=_labeler(labeler, chexbert),
        extra_metrics=extra,
        score={"n_boot": n_boot, "n_boot_language": n_boot_language, "seed": seed,
               "meteor": meteor},
    )  # fmt: skip
    _show(gen, payload)


@generate_app.command("export")
@friendly_errors
def export_cmd(
    generation: Annotated[Path, typer.Argument(help="A generation directory (`generate ...` output).")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    format_: Annotated[str, typer.Option("--format", help="rexrank: ReXrank's prediction JSON.")] = "rexrank",
    template: Annotated[Path | None, typer.Option(
        help="ReXrank's test JSON (e.g. ReXRank_IUXray_test.json): its records are kept and "
        "model_prediction added.")] = None,
) -> None:
    """Export generated reports in a leaderboard's layout: ReXrank's
    ``{study_id: {..., "model_prediction": text}}``.

    Example: `cxrfuse generate export gen/knn5 --format rexrank --template ReXRank_IUXray_test.json --out knn5_rexrank.json`
    """
    from cxrfuse.generation import export_rexrank
    from cxrfuse.problems import CxrfuseError
    from cxrfuse.rundir import GenerationDir

    if format_.lower() != "rexrank":
        raise CxrfuseError(f"unknown export format {format_!r}; choose 'rexrank'")
    path = export_rexrank(GenerationDir(generation), out, template=template)
    console.print(f"wrote [bold]{path}[/]")
