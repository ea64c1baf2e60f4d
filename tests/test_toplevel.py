"""The top level: ``cxrfuse.__version__`` and the notebook names, loaded lazily (PEP 562)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cxrfuse

SRC = Path(__file__).resolve().parents[1] / "src"


def _fresh(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter that imports this checkout's cxrfuse."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300, check=True)  # fmt: skip
    return done.stdout


def test_import_is_cheap_and_names_load_on_first_use() -> None:
    out = json.loads(_fresh(
        "import json, sys, cxrfuse\n"
        "before = sorted(m for m in ('torch', 'lightning', 'pandas', 'cxrfuse.data') if m in sys.modules)\n"
        "cxrfuse.read_manifest\n"
        "print(json.dumps({'before': before, 'data': 'cxrfuse.data' in sys.modules,\n"
        "                  'training': 'cxrfuse.training' in sys.modules,\n"
        "                  'version': cxrfuse.__version__}))"
    ))  # fmt: skip
    assert out["before"] == []  # no torch, no pandas, no stage before a name is used
    assert out["data"] and not out["training"]  # read_manifest loads data only
    assert out["version"] and out["version"][0].isdigit()


@pytest.mark.parametrize("package", ["inference", "serve", "evaluation"])
def test_serving_packages_import_no_heavy_estimator_library(package: str) -> None:
    """Issue 22: scipy, scikit-learn, matplotlib, FastAPI and the training stack load where they
    are used, not when ``cxrfuse.inference`` / ``serve`` / ``evaluation`` is imported."""
    heavy = ("scipy", "sklearn", "matplotlib", "lightning", "transformers", "pytorch_grad_cam", "cv2",
             "fastapi")
    out = json.loads(_fresh(
        f"import json, sys, cxrfuse.{package}\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    ))  # fmt: skip
    assert out == []


@pytest.mark.parametrize("name", sorted(set(cxrfuse.__all__) - {"__version__"}))
def test_every_name_is_the_object_of_its_package(name: str) -> None:
    module = importlib.import_module(cxrfuse._LAZY[name])
    assert getattr(cxrfuse, name) is getattr(module, name)
    assert name in dir(cxrfuse)


def test_version_matches_the_installed_distribution_or_says_unknown() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        expected = version("cxrfuse")
    except PackageNotFoundError:
        expected = "0+unknown"
    assert cxrfuse.__version__ == expected


def test_version_without_an_installed_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert cxrfuse._version() == "0+unknown"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'train_runs'"):
        cxrfuse.train_runs  # noqa: B018
    assert not hasattr(cxrfuse, "Predictorr")
