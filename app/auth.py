"""Bearer-token authentication: /notify/ and the task API always, /metrics when METRICS_TOKEN is set.

The header is read by the one rule of app/bearer.py, which the queue worker's /metrics uses too;
FastAPI's HTTPBearer stays only to describe the scheme in the OpenAPI document.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.bearer import CHALLENGE, REFUSAL, authorized
from app.settings import Settings

_scheme = HTTPBearer(auto_error=False, description="The API_TOKEN setting")
Documented = Annotated[HTTPAuthorizationCredentials | None, Security(_scheme)]  # never read


def _check(request: Request, expected: bytes | None) -> None:
    if not authorized(request.headers.get("authorization"), expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED, detail=REFUSAL, headers={"WWW-Authenticate": CHALLENGE}
        )


def _secret(token: SecretStr | None) -> bytes | None:
    return token.get_secret_value().encode() if token else None


def bearer_user(settings: Settings) -> Callable[[Request, Documented], Awaitable[str]]:
    """A dependency that returns the caller's username, or answers 401."""
    expected = _secret(settings.api_token)

    async def current_user(request: Request, _documented: Documented) -> str:
        _check(request, expected)
        return settings.api_username

    return current_user


def metrics_reader(settings: Settings) -> Callable[[Request, Documented], Awaitable[None]]:
    """A dependency that lets every scrape in, or with METRICS_TOKEN set only those that carry it."""
    expected = _secret(settings.metrics_token)

    async def check(request: Request, _documented: Documented) -> None:
        if expected is not None:
            _check(request, expected)

    return check
