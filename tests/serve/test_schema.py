"""The OpenAPI schema exercised with schemathesis (15 examples per operation, derandomised):
no 5xx, responses as the schema declares them, every error a JSON body with a message."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from cxrfuse.serve import Limits, Service, create_app


@pytest.fixture(scope="module")
def api_schema(served_run: Path):
    app = create_app(service=Service(served_run), limits=Limits(max_request_bytes=1_000_000))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def check(case) -> None:
    # schema-valid is not image-valid (random bytes are no PNG): a 400 naming the file is right
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"]
        assert "Traceback" not in response.text


def test_api_conforms_to_its_schema_and_never_fails_on_the_server(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /health", "GET /v1/model", "POST /v1/predict"}
    for operation in operations:
        test = settings(max_examples=15, deadline=None, derandomize=True,
                        suppress_health_check=list(HealthCheck))(
            given(case=operation.as_strategy())(check))  # fmt: skip
        test()
