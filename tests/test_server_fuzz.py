"""The API fuzzed from its own OpenAPI document (schemathesis): no 5xx, and no answer outside it.

Every operation gets a few generated requests, valid and invalid, against the app served over
real HTTP; each answer must have a documented status, content type and body. The events stream
is left out: it follows the conversation for as long as the client stays, which a fuzzer's
request would do forever. Kept small (``max_examples``) so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.config import SchemathesisConfig

from tests.server_fixtures import LiveServer, bank_agent, guarded_agent, typed_agent
from timestep import ModelClient
from timestep.server import create_app
from timestep.testing import Reply, TestServer


@pytest.fixture
def api_url(tmp_path: Path, server: TestServer) -> Iterator[str]:
    server.responder = lambda body: Reply.text("ok")
    model = ModelClient(base_url=server.base_url, api_key="sk-test", max_retries=0)
    agents = [bank_agent(tmp_path / "ledger"), guarded_agent(), typed_agent()]
    app = create_app(agents, store=str(tmp_path / "c"), client=model)
    with LiveServer(app) as url:
        yield url


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]

# An invalid body may also be too large (413): as good a refusal as a 422.
REFUSALS = ["400", "401", "404", "405", "409", "413", "422"]
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})

# Valid requests to each served agent (so that they reach the runs: tool guardrails, message and
# answer guardrails, a typed answer), valid ones to any agent, and invalid ones: each must be
# answered as the document says.
VARIANTS = [
    (GenerationMode.POSITIVE, {"agent": "Bank"}),
    (GenerationMode.POSITIVE, {"agent": "Guarded"}),
    (GenerationMode.POSITIVE, {"agent": "Weather"}),
    (GenerationMode.POSITIVE, None),
    (GenerationMode.NEGATIVE, {"agent": "Bank"}),
]


def test_the_api_answers_within_its_own_description(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/api/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        if operation.path.endswith("/events"):
            continue
        for mode, path_parameters in VARIANTS:
            given_path = path_parameters if "{agent}" in operation.path else None
            strategy = operation.as_strategy(mode, path_parameters=given_path)

            @given(case=strategy)
            @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (GET /api/agents takes no input).
                assert mode is GenerationMode.NEGATIVE, operation.label
