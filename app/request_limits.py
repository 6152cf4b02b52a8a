"""What the tutorial endpoints refuse, with a 4xx that says why, so no input is silently altered or lost.

uvicorn already answers 400 to a request line over 64 KiB or with raw bytes that are not
HTTP. What passes it is checked here; the length of each value is checked by its Query().
"""

import re
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, status
from pydantic import AfterValidator

MAX_QUERY_PARAMETERS = 16

# C0 controls but tab, DEL, C1 controls, and the Unicode line and paragraph separators: one
# message must stay one log line, and a message that would need escaping is refused instead.
# One pattern for the check and for the OpenAPI schema, so a generated valid value is valid.
_BREAKERS = r"\x00-\x08\x0A-\x1F\x7F-\x9F\u2028\u2029"
SINGLE_LINE = f"^[^{_BREAKERS}]*$"
_LINE_BREAKER = re.compile(f"[{_BREAKERS}]")


def _single_line(text: str) -> str:
    if found := _LINE_BREAKER.search(text):
        raise ValueError(
            f"must be a single line of text: U+{ord(found.group()):04X} at position {found.start()} "
            "is a control character or line separator"
        )
    return text


SingleLine = AfterValidator(_single_line)


async def plain_query(request: Request) -> None:
    """A router dependency: no body, few parameters, each once, all UTF-8."""
    headers = request.headers
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            "These endpoints take no request body: send the parameters in the query string",
        )
    raw: bytes = request.scope["query_string"]
    # Counted on the raw bytes, before anything parses thousands of them.
    if raw.count(b"&") >= MAX_QUERY_PARAMETERS:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Too many query parameters: at most {MAX_QUERY_PARAMETERS}")
    try:
        if b"%" in raw or not raw.isascii():  # plain ASCII, the usual case, needs no decoding
            unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        # Starlette would turn these bytes into U+FFFD, logging a message that nobody sent.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "The query string, percent-decoded, is not UTF-8") from None
    params = request.query_params
    if len(params.multi_items()) != len(params):
        # FastAPI would keep only the last value and drop the others without a word.
        repeated = next(key for key in params if len(params.getlist(key)) > 1)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"Query parameter {repeated!r} is given more than once")


DETAIL: dict[str, Any] = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        }
    }
}
# What a task route can answer besides 200 and FastAPI's own 422, for clients and for schemathesis.
REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Query string refused: not UTF-8, too many or repeated parameters", **DETAIL},
    413: {"description": "A request body was sent; these endpoints take none", **DETAIL},
    503: {
        "description": "Too many background tasks pending, or the task queue unavailable; retry after Retry-After",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        **DETAIL,
    },
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "Missing or invalid bearer token", **DETAIL}}
