"""Fixtures for the text tests: the 3,955 bundled IU X-ray reports and their leakage audits.

The reports come from the real IU ingester (``cxrfuse.data.iu_xray.ingest_iu_xray``), through
the session-wide ``iu_manifest`` fixture of ``tests/conftest.py``; every audit below is run
once per session.
"""

from __future__ import annotations

import pytest

from cxrfuse.data import Manifest
from cxrfuse.text import LeakageAudit, TextConfig, audit_leakage

MULTILABEL = "multilabel"
NORMAL_ABNORMAL = "normal-abnormal"


@pytest.fixture(scope="session")
def iu(iu_manifest: Manifest) -> Manifest:
    """The IU manifest, checked to hold the tasks these tests audit."""
    assert {MULTILABEL, NORMAL_ABNORMAL} <= set(iu_manifest.tasks)
    return iu_manifest


@pytest.fixture(scope="session")
def audit_multilabel_masked(iu: Manifest) -> LeakageAudit:
    return audit_leakage(iu, TextConfig(), MULTILABEL)


@pytest.fixture(scope="session")
def audit_multilabel_unmasked(iu: Manifest) -> LeakageAudit:
    return audit_leakage(iu, TextConfig(mask_labels=False), MULTILABEL)


@pytest.fixture(scope="session")
def audit_abnormal_masked(iu: Manifest) -> LeakageAudit:
    return audit_leakage(iu, TextConfig(), NORMAL_ABNORMAL)
