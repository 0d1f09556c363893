"""Bearer tokens: reading one from a request and checking it in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from flask import request


def presented_token() -> str | None:
    """The request's ``Authorization: Bearer <token>``, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_is_valid(token: str | None, tokens: Iterable[str]) -> bool:
    """Whether ``token`` is one of ``tokens``; every one is compared, so timing reveals nothing."""
    if token is None:
        return False
    matches = [hmac.compare_digest(token.encode(), known.encode()) for known in tokens]
    return any(matches)
