"""Property-based tests of the OpenAPI schema: schemathesis generates requests for every
operation (valid and invalid, within bounded examples) and checks that none gets a 5xx, that
every status and content type is declared, and that bodies match their declared schemas."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import WEIGHTS_DIR

MAX_EXAMPLES = 15  # per operation and generation mode: bounded, the whole file runs in seconds


def _app():
    from app.main import create_app
    from app.settings import Settings

    # Its own app: schemathesis runs the lifespan (model loading) once, in its own event-loop thread.
    return create_app(Settings(models_dir=WEIGHTS_DIR, device="cpu", log_level="warning"))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    response = case.call()
    if response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable":
        pytest.skip(f"no model loaded for {case.path}")  # a deployment without this model's weights
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                             content_type_conformance, response_schema_conformance])
