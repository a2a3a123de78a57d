"""The service's OpenAPI document fuzzed with schemathesis against the running process (valid and invalid
requests to every operation, a bounded number each): no 5xx, answers that conform to the document, every
error the one-line ``{"error": "..."}``. With an API key set, every route but /health and the page wants it:
without it or with a wrong one, 401 and no data; the key never reaches the log."""

import json

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fer_platform_tests.served import API_KEY, start_service

pytestmark = pytest.mark.slow

EXAMPLES = 15  # per operation and generation mode
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
ORIGIN = "https://app.example.com"
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def keyed_service(service_lake):
    served = start_service(service_lake, FER_API_KEY=API_KEY, FER_CORS_ORIGINS=ORIGIN)
    yield served
    served.stop()


def assert_one_line_error(response) -> None:
    content_type = response.headers["content-type"]  # schemathesis' responses hold lists of values
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type == "application/json", response.text[:200]
    assert "\n" not in response.text
    body = json.loads(response.text)
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"].strip(), body


def fuzz(url: str, key: str | None, check, modes=MODES, examples: int = EXAMPLES) -> dict:
    """Every operation of the service's document, ``examples`` generated requests per mode, each answer given
    to ``check(case, response)``; the answers' status codes, counted."""
    headers = {"api-key": key} if key else {}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers, timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/search",
        "/images/{image_id}/similar",
        "/health",
        "/plots/{name}",
    }
    seen: dict[int, int] = {}
    session = requests.Session()
    for operation in operations:
        strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

        @settings(
            max_examples=examples * len(modes),
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case):
            response = case.call(base_url=url, session=session, timeout=30)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            check(case, response)

        one()
    session.close()  # a kept-alive connection would hold up the server's graceful shutdown
    return seen


def test_fuzzing_the_document_finds_no_5xx_and_only_one_line_errors(service):
    def check(case, response):
        case.validate_response(response, checks=CONFORMANCE)
        if response.status_code >= 400:
            assert_one_line_error(response)

    seen = fuzz(service.url, None, check)
    assert all(code < 500 for code in seen) and 200 in seen and 422 in seen, seen


def test_with_an_api_key_every_route_but_health_and_the_page_wants_it(keyed_service):
    url, good = keyed_service.url, {"api-key": API_KEY}
    health = requests.get(f"{url}/health", timeout=30)
    assert health.status_code == 200 and health.json()["auth"] == "api-key" and API_KEY not in health.text
    assert requests.get(f"{url}/", timeout=30).status_code == 200  # the page holds no data
    listing = requests.get(f"{url}/images?limit=1", headers=good, timeout=30)
    assert listing.status_code == 200
    image = listing.json()["images"][0]
    similar = f"{url}/images/{image['image_id']}/similar?k=3"
    assert requests.get(similar, headers=good, timeout=30).status_code == 200
    for headers in (
        {},
        {"api-key": "wrong-key-0123456789abcdef"},
        {"api-key": API_KEY[:-1]},
        {"api-key": ""},
    ):
        for path in (
            "/openapi.json",
            "/images?limit=1",
            f"/images/{image['image_id']}",
            image["url"],
            "/plots",
        ):
            response = requests.get(f"{url}{path}", headers=headers, timeout=30)
            assert response.status_code == 401, (path, headers)
            assert_one_line_error(response)
            assert "image_id" not in response.text and "filepath" not in response.text
        response = requests.get(similar, headers=headers, timeout=30)
        assert response.status_code == 401 and "hits" not in response.text
    # an <img> cannot send a header: the page's cookie carries the key for image bytes and plots only
    cookie = {"fer-api-key": API_KEY}
    assert requests.get(f"{url}{image['url']}", cookies=cookie, timeout=30).status_code == 200
    assert requests.get(f"{url}/plots/class_balance", cookies=cookie, timeout=30).status_code == 200
    assert requests.get(similar, cookies=cookie, timeout=30).status_code == 401
    assert API_KEY not in keyed_service.log.read_text(errors="replace")


def test_fuzzing_without_the_key_gets_401_everywhere_but_health(keyed_service):
    def check(case, response):
        if case.operation.path == "/health":
            assert response.status_code == 200
        else:
            assert response.status_code == 401, (case.operation.path, response.text[:200])
            assert_one_line_error(response)

    # the document is read with the key; every generated request is sent without it
    seen = fuzz(keyed_service.url, API_KEY, check, modes=MODES[:1], examples=10)
    assert set(seen) == {200, 401}, seen


def test_cross_origin_access_only_for_the_configured_origins(service, keyed_service):
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "api-key",
    }
    # no origins configured: a browser gets no permission to read answers from another origin
    assert (
        "access-control-allow-origin"
        not in requests.get(f"{service.url}/health", headers={"Origin": ORIGIN}, timeout=30).headers
    )
    assert (
        "access-control-allow-origin"
        not in requests.options(f"{service.url}/images", headers=preflight, timeout=30).headers
    )
    # configured: that origin may send the key and read the answers; another may not
    allowed = requests.options(f"{keyed_service.url}/images", headers=preflight, timeout=30)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "api-key" in allowed.headers["access-control-allow-headers"].lower()
    answer = requests.get(
        f"{keyed_service.url}/images?limit=1", headers={"Origin": ORIGIN, "api-key": API_KEY}, timeout=30
    )
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    other = requests.options(
        f"{keyed_service.url}/images", headers={**preflight, "Origin": "https://evil.example"}, timeout=30
    )
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert other.json() == {"error": "Disallowed CORS origin"}
