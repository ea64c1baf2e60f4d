"""Encoder tests run offline: hub and download caches point at empty temporary folders
(``offline_caches`` in tests/conftest.py, autouse here and in tests/store)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import pytest


def _hub_reachable() -> bool:
    if os.environ.get("CXRFUSE_ONLINE") == "1":
        return True
    try:
        urllib.request.urlopen(
            urllib.request.Request("https://huggingface.co", method="HEAD"), timeout=3
        )
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """For @pytest.mark.network tests: skip offline, else lift the offline flag."""
    if not _hub_reachable():
        pytest.skip("needs a model hub (set CXRFUSE_ONLINE=1 or be online)")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants  # reads the flag at import: lift it there too

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
