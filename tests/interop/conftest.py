"""Interop tests: a tiny image-only run (64-px phantoms, evaluated: val-chosen thresholds) and
Debian's Orthanc with its DICOMweb plugin on loopback (a throwaway config and storage folder;
skipped with the reason when Orthanc or the plugin is not installed: `make system-deps`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxrfuse.store.distributed import free_port

ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
REAL_PAIRS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "iu-nih-pairs"


def _orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None)


def _dicomweb_plugin() -> Path | None:
    for folder in ORTHANC_PLUGIN_DIRS:
        for path in sorted(Path(folder).glob(f"{DICOMWEB_PLUGIN}*")) if Path(folder).is_dir() else []:
            return path
    return None


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DICOMweb root of a fresh Orthanc on 127.0.0.1 (a free port, no DICOM port,
    loopback clients only), stopped at the end of the session."""
    binary, plugin = _orthanc_binary(), _dicomweb_plugin()
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb, "
                    "or `make system-deps` as root)")
    if plugin is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install "
                    "orthanc-dicomweb, or `make system-deps` as root)")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "cxrfuse-test", "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"), "HttpPort": port, "DicomServerEnabled": False,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpTimeout": 60,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": f"127.0.0.1:{port}"},
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=root)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited ({process.returncode}): "
                            f"{(root / 'orthanc.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/dicom-web/studies", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("Orthanc did not answer within 30 s")
        yield f"{base}/dicom-web"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def image_run(tiny_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished, evaluated image-only run (EfficientNet-Lite0 at 64 px, mean view fusion)."""
    from cxrfuse.config import validate_run
    from cxrfuse.evaluation import evaluate_run
    from cxrfuse.runtime import quiet_lightning
    from cxrfuse.training import train_run

    tmp = tmp_path_factory.mktemp("interop-run")
    config = {
        "name": "pacs",
        "runs_dir": str(tmp / "runs"),
        "data": {"manifest": str(tiny_phantoms), "task": "normal-abnormal",
                 "store": str(tmp / "store")},
        "image": {"encoder": "efficientnet-lite0", "input_size": 64, "views": "mean",
                  "embed_batch_size": 16},
        "model": {"kind": "concat-mlp", "modalities": ["image"], "hidden": [8]},
        "training": {"max_epochs": 2, "batch_size": 8, "early_stopping": {"patience": 2}},
        "evaluation": {"n_boot": 10},
    }  # fmt: skip
    with quiet_lightning():
        run_dir = train_run(validate_run(config, "interop-test"), progress=False)
    evaluate_run(run_dir, "f1", 10, 0)
    return Path(run_dir)


@pytest.fixture(scope="session")
def real_pngs() -> list[Path]:
    """Real NIH radiographs (512 px PNG) of the shared data; skipped when absent."""
    folder = REAL_PAIRS / "images" / "images_normalized"
    pngs = sorted(folder.glob("*.png"))[:3] if folder.is_dir() else []
    if not pngs:
        pytest.skip(f"real radiographs not found under {folder.resolve()}")
    return pngs


@pytest.fixture(scope="session")
def phantom_pngs(tiny_phantoms: Path) -> list[Path]:
    """Phantom frontal PNGs of the tiny manifest's test split."""
    from cxrfuse.data import read_manifest

    df = read_manifest(tiny_phantoms).df
    paths = [v["path"] for views in df[df["split"] == "test"]["views"] for v in views
             if v["view"] == "PA"]  # fmt: skip
    return [Path(p) for p in paths[:4]]
