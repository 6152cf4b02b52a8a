"""The one rule for a bearer token, on every port: the web side's routes (app/auth.py) and the
queue worker's `/metrics` (app/observability/worker_metrics.py). No web framework here, so a
worker process can use it.

`Authorization: <scheme> <token>`: the scheme is `Bearer` in any case (RFC 9110, 11.1), the token
follows after one or more spaces, and it is compared in constant time. No token configured lets no
caller in.
"""

import hmac

CHALLENGE = "Bearer"  # the WWW-Authenticate value of a refusal
REFUSAL = "Missing or invalid bearer token"


def authorized(authorization: str | None, expected: bytes | None) -> bool:
    """Whether the header carries the expected token. A header value arrives decoded as latin-1
    (HTTP's own and WSGI's rule), so it is compared as the bytes that were sent."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if expected is None or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("latin-1", errors="replace"), expected)
