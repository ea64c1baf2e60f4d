"""Model cards and sharing a run.

:func:`write_model_card` writes the run's ``README.md``: YAML front matter in the Hugging Face
model-card format (``license``, ``tags``, ``datasets``, ``metrics``, ``model-index`` with the
test metrics, plus a ``cxrfuse`` block: labels, modalities, whether the images were synthetic,
intervals, verdicts, the leakage-probe result), then the card in Markdown (intended use:
research only; limitations). Training writes it (not evaluated yet); evaluation refreshes it.

:func:`export_run` copies what ``cxrfuse predict`` needs (safetensors, JSON sidecars, the
fitted text state, the config, the card) into a self-contained folder that loads like a run;
the per-study predictions (patient ids) stay behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cxrfuse.files import write_json, write_text
from cxrfuse.problems import CxrfuseError, DataError
from cxrfuse.rundir import layout
from cxrfuse.rundir.dirs import RunDir
from cxrfuse.vocab import PHANTOM

CARD_METRICS = ("auroc", "auprc", "f1", "accuracy", "precision", "recall")
HF_METRIC = {"auroc": "roc_auc", "auprc": "average_precision"}
INTENDED_USE = ("Research use only. This model is not a medical device and has not been "
                "validated for clinical use: do not use it to diagnose, triage or treat patients.")
EXPORTED = (layout.CONFIG, layout.RUN_INFO, layout.SIDECAR, layout.WEIGHTS, layout.ENCODER_WEIGHTS,
            layout.TEXT_STATE_JSON, layout.TEXT_STATE_TENSORS, layout.METRICS, layout.MODEL_CARD)
"""What an export holds (those the run has); predictions, epochs and plots stay behind."""


def _metrics(run: RunDir) -> dict[str, Any] | None:
    if not run.metrics_path.is_file():
        return None
    return json.loads(run.metrics_path.read_text(encoding="utf-8"))


def _dataset(manifest: str | None) -> str:
    if not manifest:
        return "unknown"
    try:
        from cxrfuse.data import read_manifest

        return read_manifest(manifest).dataset or Path(manifest).stem
    except (CxrfuseError, OSError):
        return Path(manifest).parent.name or Path(manifest).stem


def _interval(metrics: Mapping[str, Any], key: str) -> dict[str, float] | None:
    ci = (metrics.get("ci") or {}).get(key)
    if isinstance(ci, Mapping) and ci.get("low") is not None and ci.get("high") is not None:
        return {"low": round(float(ci["low"]), 4), "high": round(float(ci["high"]), 4)}
    return None


def card_metadata(run: RunDir) -> dict[str, Any]:
    """The front matter of the card (Hugging Face model-card metadata)."""
    info = run.info()
    if info.kind == "clip":
        return _clip_metadata(run)
    metrics = _metrics(run)
    synthetic = info.images == PHANTOM
    dataset = _dataset(info.manifest)
    tags = ["cxrfuse", "chest-x-ray", "medical-imaging", "research-use-only",
            "multimodal" if len(info.modalities) > 1 else info.modalities[0] if info.modalities
            else "unknown"]  # fmt: skip
    if synthetic:
        tags.append("synthetic-images")
    meta: dict[str, Any] = {
        "license": "other", "library_name": "cxrfuse", "pipeline_tag": "image-classification",
        "tags": tags, "datasets": [dataset],
    }  # fmt: skip
    block: dict[str, Any] = {
        "run": info.name, "kind": info.kind, "task": info.task, "labels": list(info.labels),
        "modalities": list(info.modalities), "images": info.images,
        "synthetic_images": synthetic, "manifest": info.manifest, "seed": info.seed,
        "n": dict(info.n), "intended_use": "research use only", "evaluated": False,
    }  # fmt: skip
    if metrics is not None:
        test = metrics.get("test") or {}
        macro = test.get("macro") or {}
        results = []
        for name in CARD_METRICS:
            if macro.get(name) is None:
                continue
            entry: dict[str, Any] = {"type": HF_METRIC.get(name, name), "value": round(float(macro[name]), 4),
                                     "name": f"test macro {name}"}  # fmt: skip
            interval = _interval(metrics, f"macro/{name}")
            if interval:
                entry["name"] += f" (95% CI {interval['low']:.3f}-{interval['high']:.3f})"
            results.append(entry)
        meta["metrics"] = [r["type"] for r in results]
        meta["model-index"] = [{"name": info.name, "results": [{
            "task": {"type": "image-classification", "name": info.task or "classification"},
            "dataset": {"name": dataset, "type": dataset, "split": "test"},
            "metrics": results,
        }]}]  # fmt: skip
        block.update(
            evaluated=True, threshold_method=metrics.get("threshold_method"),
            thresholds={k: round(float(v), 4) for k, v in (metrics.get("thresholds") or {}).items()},
            test={name: {"value": round(float(macro[name]), 4),
                         "ci95": _interval(metrics, f"macro/{name}")}
                  for name in CARD_METRICS if macro.get(name) is not None},
            n_test=test.get("n"),
        )  # fmt: skip
        if test.get("verdicts"):
            block["verdicts"] = test["verdicts"]
        leakage = metrics.get("leakage")
        if isinstance(leakage, Mapping):
            paired = leakage.get("paired") or {}
            block["leakage_probe"] = {"gap": leakage.get("gap"), "macro": leakage.get("macro"),
                                      "paired": {k: paired.get(k) for k in ("diff", "low", "high", "p")
                                                 if k in paired}}  # fmt: skip
    meta["cxrfuse"] = block
    return meta


def _clip_metadata(run: RunDir) -> dict[str, Any]:
    """The front matter of a CLIP run's card: retrieval Recall@K (beside chance) and zero-shot
    AUROC once ``cxrfuse clip retrieve`` / ``zero-shot`` wrote them."""
    info = run.info()
    synthetic = info.images == PHANTOM
    dataset = _dataset(info.manifest)
    tags = ["cxrfuse", "chest-x-ray", "medical-imaging", "research-use-only", "clip",
            "contrastive"] + (["synthetic-images"] if synthetic else [])  # fmt: skip
    meta: dict[str, Any] = {"license": "other", "library_name": "cxrfuse",
                            "pipeline_tag": "zero-shot-image-classification", "tags": tags,
                            "datasets": [dataset]}  # fmt: skip
    block: dict[str, Any] = {
        "run": info.name, "kind": info.kind, "task": info.task, "labels": list(info.labels),
        "modalities": list(info.modalities), "images": info.images,
        "synthetic_images": synthetic, "manifest": info.manifest, "seed": info.seed,
        "n": dict(info.n), "intended_use": "research use only", "evaluated": False,
        "encoders": dict(info.clip.encoders) if info.clip else {},
    }  # fmt: skip
    results: list[dict[str, Any]] = []
    retrieval = run.analysis(layout.RETRIEVAL)
    if retrieval:
        block["retrieval"] = {"split": retrieval.get("split"), "n": retrieval.get("n"),
                              **{key: retrieval.get(key) for key in ("image_to_text",
                                 "text_to_image", "chance")}}  # fmt: skip
        for k, value in (retrieval.get("image_to_text") or {}).items():
            results.append({"type": "recall", "value": round(float(value), 4),
                            "name": f"image-to-report Recall@{k} ({retrieval.get('split')}; "
                                    f"chance {float(retrieval['chance'][k]):.3f})"})  # fmt: skip
    zero_shot = run.analysis(layout.ZERO_SHOT)
    if zero_shot and zero_shot.get("macro_auroc") is not None:
        block["zero_shot"] = {"split": zero_shot.get("split"), "task": zero_shot.get("task"),
                              "n": zero_shot.get("n"), "macro_auroc": zero_shot["macro_auroc"]}
        results.append({"type": "roc_auc", "value": round(float(zero_shot["macro_auroc"]), 4),
                        "name": f"zero-shot macro AUROC ({zero_shot.get('split')})"})
    if results:
        block["evaluated"] = True
        meta["metrics"] = sorted({r["type"] for r in results})
        meta["model-index"] = [{"name": info.name, "results": [{
            "task": {"type": "zero-shot-image-classification", "name": info.task or "clip"},
            "dataset": {"name": dataset, "type": dataset,
                        "split": (retrieval or zero_shot or {}).get("split")},
            "metrics": results}]}]  # fmt: skip
    meta["cxrfuse"] = block
    return meta


def _clip_markdown(run: RunDir, meta: Mapping[str, Any]) -> str:
    """The body of a CLIP run's card."""
    block = meta["cxrfuse"]
    images = ("**synthetic phantom images** (not real radiographs: the figures below say "
              "nothing about real patients)" if block["synthetic_images"]
              else f"images of kind `{block['images']}`")  # fmt: skip
    towers = ", ".join(f"{k}: `{v}`" for k, v in block["encoders"].items()) or "-"
    lines = [f"# {block['run']}", "",
             (f"A cxrfuse CLIP-style image-report model (contrastive, towers {towers}) trained "
              f"on {meta['datasets'][0]} with {images}; its embeddings serve retrieval, "
              "zero-shot scores and linear probes."), "",
             "## Intended use", "", INTENDED_USE, "",
             "## Training data", "",
             f"Manifest `{block['manifest']}`; studies per split (patient-level splits): "
             + ", ".join(f"{k} {v}" for k, v in block["n"].items()) + f"; seed {block['seed']}.",
             "", "## Evaluation", ""]  # fmt: skip
    if not block["evaluated"]:
        lines += [(f"Not evaluated yet: run `cxrfuse clip retrieve {run.path}` and `cxrfuse clip "
                   "zero-shot` (this card is then rewritten with their figures)."), ""]
    retrieval = block.get("retrieval")
    if retrieval:
        ks = sorted(retrieval["chance"], key=int)
        lines += [(f"Retrieval on the {retrieval['split']} split (N = {retrieval['n']}), exact "
                  "pairs, no interval:"), "",
                  "| direction | " + " | ".join(f"R@{k}" for k in ks) + " |",
                  "|---|" + "---:|" * len(ks)]  # fmt: skip
        for key, name in (("image_to_text", "image -> report"), ("text_to_image", "report -> image"),
                          ("chance", "chance (K/N)")):  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(f"{float(retrieval[key][k]):.3f}" for k in ks)
                         + " |")
        lines.append("")
    zero_shot = block.get("zero_shot")
    if zero_shot:
        lines += [(f"Zero-shot ({zero_shot['task']}, {zero_shot['split']} split, N = "
                   f"{zero_shot['n']}): macro AUROC {_num(zero_shot['macro_auroc'])} from "
                   "positive vs negative prompts."), ""]
    lines += ["## Limitations", "",
              ("- Contrastive training pairs each image with its own report: reports written after "
              "reading the image name its findings, so report-side figures can be optimistic."),
              "- Trained on one dataset; other hospitals, scanners or populations are untested.",
              ]  # fmt: skip
    return "\n".join(lines + _card_end(block))


def card_markdown(run: RunDir, meta: Mapping[str, Any]) -> str:
    """The card's body in Markdown."""
    block = meta["cxrfuse"]
    if block["kind"] == "clip":
        return _clip_markdown(run, meta)
    images = ("**synthetic phantom images** (not real radiographs: the figures below say "
              "nothing about real patients)" if block["synthetic_images"]
              else f"images of kind `{block['images']}`")  # fmt: skip
    lines = [f"# {block['run']}", "",
             (f"A cxrfuse {block['kind']} model for the task **{block['task']}** "
             f"(labels: {', '.join(block['labels']) or '-'}) from "
             f"{' + '.join(block['modalities'])}, trained on {meta['datasets'][0]} with {images}."),
             "", "## Intended use", "", INTENDED_USE, "",
             "## Training data", "",
             f"Manifest `{block['manifest']}`; studies per split (patient-level splits): "
             + ", ".join(f"{k} {v}" for k, v in block["n"].items()) + f"; seed {block['seed']}.", "",
             "## Evaluation", ""]  # fmt: skip
    if not block["evaluated"]:
        lines += [(f"Not evaluated yet: run `cxrfuse evaluate {run.path}` (this card is then "
                  "rewritten with the test metrics)."), ""]
    else:
        lines += [(f"Test split ({block.get('n_test')} studies), thresholds chosen on validation "
                  f"({block.get('threshold_method')}), 95 % bootstrap intervals."), "",
                  "| metric | value | 95 % CI |", "|---|---|---|"]
        for name, row in block["test"].items():
            ci = row["ci95"]
            lines.append(f"| {name} | {row['value']:.3f} | "
                         + (f"{ci['low']:.3f} to {ci['high']:.3f}" if ci else "-") + " |")
        lines.append("")
        if block.get("verdicts"):
            lines += ["### Verdicts", "", "```json",
                      json.dumps(block["verdicts"], indent=2, default=str), "```", ""]
        probe = block.get("leakage_probe")
        if probe:
            paired = probe.get("paired") or {}
            lines += ["### Leakage probe", "",
                      "AUROC gap between the chosen report sections and the indication alone: "
                      f"{_num(probe.get('gap'))}"
                      + (f" (paired 95 % CI {_num(paired.get('low'))} to "
                         f"{_num(paired.get('high'))}, p {_num(paired.get('p'))})" if paired else "")
                      + ".", ""]  # fmt: skip
    lines += ["## Limitations", "",
              "- Small test sets give wide intervals; read the interval, not the point value.",
              ("- Report text written after reading the image (findings, impression) can leak the "
              "label; the leakage probe above measures this on the test split."),
              ("- Trained on one dataset; performance on other hospitals, scanners or populations "
              "is unknown until externally validated (`cxrfuse evaluate RUN --on OTHER.parquet`)."),
              ]  # fmt: skip
    return "\n".join(lines + _card_end(block))


def _card_end(block: Mapping[str, Any]) -> list[str]:
    """The last lines of every card: the phantom caveat when the images are synthetic, then
    the provenance line."""
    end = []
    if block["synthetic_images"]:
        end.append("- The images are synthetic phantoms: this model demonstrates the pipeline only.")
    return end + ["", ("Written by cxrfuse; the YAML front matter follows the Hugging Face "
                       "model-card format."), ""]


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def write_model_card(run_dir: str | Path) -> Path:
    """Write (or refresh) ``README.md`` of a finished head, fine-tune or CLIP run."""
    run = RunDir(run_dir)
    meta = card_metadata(run)
    front = yaml.safe_dump(json.loads(json.dumps(meta, default=str)), sort_keys=False,
                           allow_unicode=True)  # fmt: skip
    return write_text(run.path / layout.MODEL_CARD, f"---\n{front}---\n\n{card_markdown(run, meta)}")


def read_card_metadata(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model card."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise DataError(f"{path}: no YAML front matter")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)])


def export_run(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy a finished run into ``dest`` as a self-contained folder that loads like a run
    (``cxrfuse predict DEST``), with a fresh model card and ``export.json`` (file hashes)."""
    run, out = RunDir(run_dir), Path(dest)
    info = run.require(("head", "finetune"), action="exporting")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not empty; export into a new folder")
    write_model_card(run.path)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in EXPORTED:
        source = run.path / name
        if source.is_file():
            shutil.copy2(source, out / name)
            files[name] = _sha256(out / name)
    write_json(out / layout.EXPORT_INFO, {"run": info.name, "source": str(run.path.resolve()),
                                           "files": files,
                                           "left_out": "predictions, epochs, plots (per-study "
                                           "data with patient ids stays with the run)"},
               indent=2)  # fmt: skip
    return out


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["export_run", "read_card_metadata", "write_model_card"]
