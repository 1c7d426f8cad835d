"""Property-based requests against the service's own OpenAPI schema (schemathesis strategies driven by
Hypothesis): more than 2,000 generated requests over every operation, valid and invalid; none may answer
500, and every answer to a valid request must match the schema (documented status, documented body).

A schema-valid request may still break a rule no JSON Schema can state (the same new item twice in one
request, an item id that already exists, a rating for an item the catalogue does not hold): those answer a
4xx whose detail is one sentence naming the rule. What must never happen is a schema-valid request failing
*schema* validation (a detail list of field errors): that would mean the published schema lies."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from recforge.models import create_model
from recforge.serving.app import create_app
from recforge.serving.service import RecommenderService
from tests.serving.test_api import TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving")]
EXAMPLES = 150  # per operation and mode (operations without inputs run once): > 2,000 requests in all
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def schema(ml100k):
    """A two-tower rating model with user and item features: every endpoint has something to answer."""
    model = create_model("two_tower", preset="rating", user_features=True, item_features=True, n_epochs=1)
    app = create_app(RecommenderService(model.fit(ml100k)), write_token=TOKEN)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def operations(schema) -> list:
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.path not in ("/", "/metrics", "/metrics/json")]  # HTML, text, free-form JSON


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_generated_requests_never_get_a_500_and_valid_ones_match_the_schema(schema, mode):
    statuses: list[int] = []
    ops = operations(schema)
    paths = {"/users/{user_id}/recommendations", "/recommendations", "/items", "/predict", "/predict/new-user"}
    assert {op.path for op in ops} >= paths
    for op in ops:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            if mode is GenerationMode.POSITIVE:
                response = case.call_and_validate(headers=HEADERS, excluded_checks=[positive_data_acceptance])
                if response.status_code == 422:
                    detail = response.json()["detail"]
                    assert isinstance(detail, str), f"schema-valid request failed validation: {detail}"
            else:
                response = case.call(headers=HEADERS)
            statuses.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"

        try:
            check()
        except Unsatisfiable:  # an operation with no inputs has no invalid request to generate
            assert mode is GenerationMode.NEGATIVE and not (op.body or op.path_parameters or op.query), op.path
    assert len(statuses) >= 1000, len(statuses)  # with the other mode: more than 2,000 requests
    print(mode.value, len(statuses), "requests; statuses", sorted(set(statuses)))
