"""/openapi.json describes the routes, and a property-based test (schemathesis, bounded) against
the live app finds no 500 and no response that breaks the description."""
from __future__ import annotations

import pytest
import schemathesis
from conftest import make_settings, photo, save_image
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

import API


@pytest.fixture
def api_app(tmp_path, random_weights, runtime):
    root = tmp_path / "OpenCloneFS"
    (root / "Clones" / "4").mkdir(parents=True)
    save_image(root / "Clones/4/clone-image-with-bg.png", photo(64, 48))
    return API.create_app(make_settings(root, random_weights), runtime=runtime)


EXAMPLES_PER_OPERATION = 25  # bounded: the whole property test runs in well under a minute


@pytest.mark.slow  # keeps `pytest -m "not slow"` under a minute
def test_api_conforms_to_its_description(api_app):
    """Every described operation, with generated valid and invalid inputs: no 500, and every
    status, content type, header and body as described."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", api_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        def conforms(case):
            # Not checked: "schema-valid data must be accepted". The service also validates what a
            # schema cannot say (a path must stay inside the shared root; a threshold goes with
            # mode threshold only) and rightly answers 400. Everything else is: no 5xx, status
            # codes, content types, headers and bodies as described.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        conforms()


def test_every_route_is_described(api_app):
    spec = api_app.test_client().get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    for rule in api_app.url_map.iter_rules():
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (rule.rule, method) in described, f"{method} {rule.rule} is not described"
