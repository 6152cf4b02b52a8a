"""Bearer-token authentication: /notify/ always, /metrics when METRICS_TOKEN is set."""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="The API_TOKEN setting")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _check(credentials: HTTPAuthorizationCredentials | None, expected: bytes | None) -> None:
    given = credentials.credentials.encode() if credentials else b""
    # Constant time, and no token configured means no caller is let in.
    if expected is None or not hmac.compare_digest(given, expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="Missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _secret(token: SecretStr | None) -> bytes | None:
    return token.get_secret_value().encode() if token else None


def bearer_user(settings: Settings) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[str]]:
    """A dependency that returns the caller's username, or answers 401."""
    expected = _secret(settings.api_token)

    async def current_user(credentials: Credentials) -> str:
        _check(credentials, expected)
        return settings.api_username

    return current_user


def metrics_reader(settings: Settings) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[None]]:
    """A dependency that lets every scrape in, or with METRICS_TOKEN set only those that carry it."""
    expected = _secret(settings.metrics_token)

    async def check(credentials: Credentials) -> None:
        if expected is not None:
            _check(credentials, expected)

    return check
