"""The reproducible environment: requirements.lock pins every dependency pyproject.toml names,
at versions its ranges allow, and results record the environment they came from."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cxrfuse.runtime import environment_info

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not name==version"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_lock_pins_every_dependency_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = locked()
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock does not pin {req.name} (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_environment_records_torch_threads_and_packages() -> None:
    env = environment_info()
    assert env["torch"] and env["cpu_threads"] >= 1
    assert {"transformers", "pillow", "sentence-transformers", "numpy"} <= set(env["packages"])
