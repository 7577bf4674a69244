"""The whole API fuzzed from its OpenAPI schema with schemathesis: no answer is a 5xx, anonymous
or with a write token (a bounded number of examples per operation, ``HUB_FUZZ_EXAMPLES``)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .conftest import Hub, lora_bert

EXAMPLES = int(os.environ.get("HUB_FUZZ_EXAMPLES", "25"))
schemathesis.serializer.alias("application/x-ndjson", "text/plain")  # commit bodies are text lines


@pytest.fixture(scope="module")
def api_schema(hub: Hub) -> schemathesis.BaseSchema:
    lora_bert().kit.push("a", "alice/target", token=hub.alice, endpoint=hub.url)  # something to find
    return schemathesis.openapi.from_url(hub.url + "/openapi.json")


def test_no_server_errors(api_schema: schemathesis.BaseSchema, hub: Hub) -> None:
    """Every operation, EXAMPLES generated cases each, sent anonymously and with a write token.
    (schemathesis' own pytest plugin predates this pytest, so hypothesis drives each operation.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    sent = 0
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            nonlocal sent
            for token in (None, hub.alice):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                response = case.call(headers=headers, timeout=30)
                case.validate_response(response, checks=[not_a_server_error])
                sent += 1

        fuzz()
    assert sent >= len(operations) * 2
    print(f"schemathesis: {len(operations)} operations, {sent} requests, no 5xx")


def test_the_schema_covers_the_api(api_schema: schemathesis.BaseSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    for path in ("/{owner}/{name}/resolve/{revision}/{path}",
                 "/api/models/{owner}/{name}/revision/{revision}",
                 "/api/models/{owner}/{name}/commit/{revision}", "/{owner}/{name}.git/info/lfs/objects/batch",
                 "/api/repos/create", "/api/repos/delete", "/api/whoami-v2", "/api/models"):
        assert path in paths, path
