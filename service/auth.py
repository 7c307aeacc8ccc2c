"""Bearer API keys with scopes (query, ingest, admin; admin implies the others).

Only sha256 digests of the keys are kept. A presented token is hashed and compared with every stored
digest with :func:`hmac.compare_digest`, without stopping at the first match, so neither the
comparison nor the key's position in the list shows in the response time.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clipmc.service.errors import APIError
from clipmc.service.settings import APIKey, key_digest

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
# Declares the scheme in the OpenAPI document (the "Authorize" button of /docs); checks are ours.
_BEARER = HTTPBearer(auto_error=False, description="API key with the scope the route needs")


@dataclass(frozen=True)
class Principal:
    """Who made the request: the key's name (or "anonymous" with auth off) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


ANONYMOUS = Principal("anonymous", frozenset({"admin"}))


class KeyRing:
    """The configured keys; empty means auth is off (and the service binds loopback only)."""

    def __init__(self, keys: Sequence[APIKey]) -> None:
        self._keys = list(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, token: str) -> Principal | None:
        digest = key_digest(token).encode()
        found: APIKey | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest.encode()) and found is None:
                found = key
        if found is None:
            return None
        return Principal(found.name or found.digest[7:15], frozenset(found.scopes))

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization`` header; 401 when it is missing or wrong."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise APIError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'", _CHALLENGE)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "unauthorized", "expected 'Authorization: Bearer <key>'", _CHALLENGE)
        principal = self.identify(token.strip())
        if principal is None:
            raise APIError(401, "unauthorized", "invalid API key", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return principal


def require(scope: str) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the request's principal, which must hold ``scope`` (else 401/403)."""

    def dependency(request: Request, _: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Principal:
        keyring: KeyRing = request.app.state.keyring
        principal = keyring.authenticate(request.headers.get("authorization"))
        if not principal.allows(scope):
            raise APIError(403, "forbidden", f"this API key lacks the {scope!r} scope")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency
