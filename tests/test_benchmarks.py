"""The GPU suite's dry run (every step at toy size on the CPU) and embed_throughput's JSON, so
the prepared GPU check and the CPU benchmark cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT / "src")}  # fmt: skip


def test_gpu_suite_dry_run_runs_every_step(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import STEPS

    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run",
                           "--out", str(out)], capture_output=True, text=True, env=_env(),
                          timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["dry_run"] is True and report["environment"]["gpu"] is None
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    failed = {name: s["error"] for name, s in steps.items() if s["status"] != "ok"}
    assert not failed, failed
    for name in ("embed-densenet121", "embed-resnet50"):
        figures = steps[name]["figures"]
        assert set(figures["bare_forward_images_per_s"]) == {
            "fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile"}
        assert all(v > 0 for v in figures["bare_forward_images_per_s"].values())
        assert set(figures["store_images_per_s"]) == {"from_cache", "from_png"}
        assert figures["decode_ceiling_images_per_s"] > 0
    assert steps["fusion-head-epoch"]["figures"]["epochs"] == 1
    assert steps["finetune-resnet50"]["figures"]["images_per_s"] > 0
    assert steps["clip-step"]["figures"]["pairs_per_s"] > 0
    assert steps["distributed-extraction"]["figures"]["backend"] == "gloo"
    assert steps["distributed-extraction"]["figures"]["all_reduced"] == 8
    assert steps["lightning-ddp"]["figures"]["strategy"] == "ddp"
    text = steps["text-embed"]["figures"]
    assert text["minilm_shape_bf16_reports"] == 32 and text["bert_base_shape_bf16_reports_per_s"] > 0
    assert set(text["projected_228k_seconds"]) == {"minilm_shape_bf16", "minilm_shape_fp32",
                                                   "bert_base_shape_bf16", "bert_base_shape_fp32"}
    rows = steps["generation"]["figures"]["rows"]
    assert [r["reports"] for r in rows[:2]] == [2, 2] and rows[2]["seconds"] > 0
    table = (out / "gpu_suite.md").read_text()
    assert "| embed-densenet121 | ok |" in table and "| lightning-ddp | ok |" in table
    assert "nvidia-smi" in (out / "header.txt").read_text()


def test_startup_times_a_verb_beside_the_torch_import(tmp_path: Path) -> None:
    path = tmp_path / "startup.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--verbs",
                           "ingest iu-xray,predict", "--repeats", "1", "--json", str(path)],
                          capture_output=True, text=True, env=_env(), timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["import_torch_cpu_s"] > 0 and "cores" in result["machine"]
    rows = {r["verb"]: r for r in result["rows"]}
    assert set(rows) == {"ingest iu-xray", "predict"}
    assert all(r["help_cpu_s"] > 0 and r["startup_cpu_s"] > 0 for r in rows.values())
    assert "lightning" not in rows["predict"]["heavy_modules"]  # predict must not load training
    assert "| `predict` |" in proc.stdout


def test_startup_packages_times_each_package_beside_the_torch_import(tmp_path: Path) -> None:
    path = tmp_path / "packages.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--packages",
                           "--repeats", "1", "--json", str(path)],
                          capture_output=True, text=True, env=_env(), timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(path.read_text())
    rows = {r["package"]: r for r in result["packages"]}
    assert set(rows) == {"inference", "serve", "evaluation"} and result["import_torch_cpu_s"] > 0
    assert all(r["cpu_s"] > 0 and r["ratio_to_torch"] > 0 for r in rows.values())
    assert all(isinstance(r["heavy_modules"], list) for r in rows.values())
    assert "sklearn" not in rows["serve"]["heavy_modules"]  # issue 22: estimators load where used
    assert "| `cxrfuse.serve` |" in proc.stdout


def test_embed_throughput_writes_images_per_s(tmp_path: Path) -> None:
    path = tmp_path / "embed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "embed_throughput.py"),
                           "--n", "4", "--image-size", "64", "--naive-n", "2", "--weights", "none",
                           "--json", str(path)], capture_output=True, text=True, env=_env(),
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = json.loads(path.read_text())["images_per_s"]
    assert {"a_bare_forward", "b_store_from_png", "c_naive_loop", "d_store_from_cache",
            "e_decode_ceiling", "b1_store_one_lane", "f_bare_forward_lanes"} <= set(figures)
    assert all(v > 0 for v in figures.values())


def test_near_duplicates_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/near_duplicates.py on six smooth synthetic images in the NIH layout."""
    import numpy as np
    from PIL import Image

    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = ["Image Index,Finding Labels,Patient ID,View Position"]
    yy, xx = np.mgrid[0:96, 0:80] / 96.0
    for i in range(6):
        a, b, c = rng.uniform(-3, 3, size=3)
        pixels = 127 + 100 * np.sin(a * xx * 6 + b * yy * 6 + c) * np.cos(c * yy * 4)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
        rows.append(f"{i}.png,No Finding,{i // 2},PA")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "near_duplicates.py"), "--data",
                           str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| byte-identical copy " in proc.stdout and "6/6" in proc.stdout
    same = next(line for line in proc.stdout.splitlines() if line.startswith("| same patient"))
    assert same.split("|")[2].strip() == "3"  # patients 0, 1, 2 have two images each


def test_serve_load_real_says_skipped_without_the_shared_data(tmp_path: Path) -> None:
    """benchmarks/serve_load.py --real DIR (the RESULTS.md real-data ONNX row) where DIR is
    absent: one "skipped" line naming it, exit 0, nothing trained or measured."""
    missing = tmp_path / "iu-nih-pairs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--real",
                           str(missing), "--out", str(tmp_path / "out.json")], capture_output=True,
                          text=True, env=_env(), timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"skipped: {missing} is absent (the real iu-nih-pairs "
                                   "radiographs are not in the repository); nothing measured")
    assert not (tmp_path / "out.json").exists()


def test_upload_memory_runs_both_scalings(tmp_path: Path) -> None:
    """benchmarks/upload_memory.py on a small 16-bit PNG: a row per path and scaling."""
    path = tmp_path / "upload.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "upload_memory.py"), "--side",
                           "300", "--repeats", "1", "--tmp", str(tmp_path), "--json", str(path)],
                          capture_output=True, text=True, env=_env(), timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(path.read_text())["rows"]
    assert {(r["file"], r["path"], r["scaling"]) for r in rows} == {
        (f, p, s) for f in ("png", "dicom") for p in ("model input", "full size") for s in ("wide", "blocks")}
    assert all(r["peak_mib"][0] >= 0 for r in rows)


def test_scale_dry_run_measures_every_stage(tmp_path: Path) -> None:
    """benchmarks/scale.py --dry-run: a 2k-study synthetic MIMIC-CXR tree through every stage."""
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--dry-run",
                           "--json", str(out), "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, env=_env(), timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    result = report["sizes"]["2000"]
    for stage in ("ingest", "split", "stats", "evaluation", "retrieval"):
        assert result[stage]["status"] == "ok", result[stage]
        assert result[stage]["cpu_s"] > 0 and result[stage]["peak_rss_mb"] >= result[stage]["rss_before_mb"] > 0
    for stage in ("assembly", "training"):  # benchmarks/_head_training.py, when the branch has it
        assert result[stage]["status"] in ("ok", "missing"), result[stage]
    assert result["ingest"]["manifest_studies"] == 2000
    assert result["stats"]["audits"] == 15 and result["stats"]["reports"] == 2000
    assert result["stats"]["surviving_label_hits"] == 0  # masking covers the synthetic reports
    assert result["audit_ms_per_report"] == result["stats"]["audit_ms_per_report"] > 0
    assert result["retrieval"]["queries"] > 100 and result["retrieval"]["bank"] > 1000
    assert {"audit_ms_per_report", "assembly_rss_ratio", "train_ratio"} <= set(result)
    assert "| stats |" in proc.stdout


def test_image_hash_cache_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/image_hash_cache.py on six synthetic images in the NIH layout (two MIMIC-sized)."""
    import numpy as np
    from PIL import Image

    (tmp_path / "images").mkdir()
    yy, xx = np.mgrid[0:96, 0:80] / 96.0
    for i in range(6):
        pixels = 127 + 100 * np.sin((i + 1) * xx * 6 + yy * 4) * np.cos(i * yy * 3)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp_path / "images" / f"{i}.png")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "image_hash_cache.py"), "--data",
                           str(tmp_path), "--mimic", "2"], capture_output=True, text=True, env=_env(),
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nih: 6 images; images/s cold 1 worker" in proc.stdout and "mimic: 2 images" in proc.stdout
    assert "MIMIC-CXR 377,110 images, 2 worker(s): cold" in proc.stdout
    assert "'distinct_pairs': 1" in proc.stdout
