"""schemathesis against the served OpenAPI schema: no 5xx, and every response as the schema says."""

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from harness import TOKEN, Stack, wait_for

EXAMPLES = 80  # per operation, mode and caller: 3 routes x 2 modes x 80, plus /notify/

VALID = {"Authorization": f"Bearer {TOKEN}"}
# Callers of /notify/ without the token: none, the wrong one, the wrong scheme, garbage.
WRONG_CALLERS = st.one_of(
    st.just({}),
    st.from_regex(r"\ABearer [!-~]{0,64}\Z").filter(lambda value: value != VALID["Authorization"]),
    st.from_regex(r"\A[!-~][!-~ ]{0,79}\Z"),  # no leading space: no client would send it
).map(lambda value: value if isinstance(value, dict) else {"Authorization": value})


def _run(cases: st.SearchStrategy[Any], call: Callable[[Any], None], *, examples: int = EXAMPLES) -> None:
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # a failure prints its case; shrinking it against a live server is slow
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def check(case: Any) -> None:
        call(case)

    check()


class _Caller:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.statuses: Counter[tuple[str, int]] = Counter()

    def __call__(self, case: schemathesis.Case, headers: dict[str, str] | None = None) -> None:
        # pydantic's EmailStr is stricter than the schema's "format: email": it refuses reserved
        # domains such as .test. Only that route's schema-valid input may be refused.
        excluded = [positive_data_acceptance] if case.path == "/send-mail/" else None
        response = case.call_and_validate(base_url=self.base_url, headers=headers, excluded_checks=excluded)
        # call_and_validate already refuses a 5xx and a response outside the schema; say it here too.
        assert response.status_code < 500, (case.path, case.query, response.text)
        self.statuses[(case.path, response.status_code)] += 1


def test_schemathesis_finds_no_5xx_and_no_response_outside_the_schema(stack: Stack) -> None:
    server = stack.server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    call = _Caller(server.url)
    lines_before = len(server.log_file_lines())
    for path in ("/log/", "/send-mail/", "/send-message/"):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(schema[path]["POST"].as_strategy(generation_mode=mode), call)
    notify = schema["/notify/"]["POST"].as_strategy()
    _run(st.tuples(notify, st.just(VALID)), lambda pair: call(*pair), examples=EXAMPLES // 4)
    _run(st.tuples(notify, WRONG_CALLERS), lambda pair: call(*pair))

    sent = sum(call.statuses.values())
    assert sent >= 500, call.statuses
    assert {path for path, _ in call.statuses} == {"/log/", "/send-mail/", "/send-message/", "/notify/"}
    # Both kinds of caller reached /notify/, and valid input was accepted on every route.
    assert call.statuses[("/notify/", 200)] >= 1
    assert call.statuses[("/notify/", 401)] >= 1
    for path in ("/log/", "/send-mail/", "/send-message/"):
        assert call.statuses[(path, 200)] >= 1
        assert call.statuses[(path, 422)] >= 1

    # Every accepted request left exactly one line, and no refused one left any.
    accepted = sum(count for (_, status), count in call.statuses.items() if status == 200)
    wait_for(lambda: len(server.log_file_lines()) - lines_before >= accepted, timeout=60, what="every task's line")
    wait_for(lambda: server.metrics().get_value("background_tasks_pending") == 0, what="no task pending")
    assert len(server.log_file_lines()) - lines_before == accepted
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/healthz").status_code == 200
