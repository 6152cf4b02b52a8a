"""Bearer-token authentication for /notify/."""

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="The API_TOKEN setting")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def bearer_user(settings: Settings) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[str]]:
    """A dependency that returns the caller's username, or answers 401."""
    expected = settings.api_token.get_secret_value().encode() if settings.api_token else None

    async def current_user(credentials: Credentials) -> str:
        given = credentials.credentials.encode() if credentials else b""
        # Constant time, and no token configured means no caller is let in.
        if expected is None or not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="Missing or invalid bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return settings.api_username

    return current_user
