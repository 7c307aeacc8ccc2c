"""Bearer API keys with scopes (query, ingest, admin; admin implies the others).

Only sha256 digests of the keys are kept. A presented token is hashed and compared with every stored
digest with :func:`hmac.compare_digest`, without stopping at the first match, so neither the
comparison nor the key's position in the list shows in the response time.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from clipmc.service.errors import APIError, error_body
from clipmc.service.settings import APIKey, is_loopback, key_digest

log = logging.getLogger("clipmc.service")

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


class FailedAuthLimiter:
    """Per-client limit on failed authentications: ``max_failures`` within ``window_s`` seconds, then 429.

    A client that presents wrong keys that often is refused (429 with Retry-After, even with a right key)
    until its oldest failure leaves the window, which makes guessing keys slow. Clients are keyed by
    address; at most ``max_clients`` are tracked (the least recently failing are forgotten), so a flood
    of addresses cannot grow memory without bound. ``max_failures=0`` turns the limit off.
    """

    def __init__(self, max_failures: int, window_s: float, max_clients: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not blocked."""
        if self.max_failures <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if times is None or len(times) < self.max_failures:
                return None
            return max(1, math.ceil(times[0] + self.window_s - now))

    def record_failure(self, client: str) -> None:
        if self.max_failures <= 0:
            return
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if times is None:
                times = self._failures[client] = deque()
            times.append(now)
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)


def require(scope: str) -> Callable[[Request], Principal]:
    """A FastAPI dependency: the request's principal, which must hold ``scope`` (else 401/403).

    A client that failed authentication too often recently gets 429 instead (see :class:`FailedAuthLimiter`).
    """

    def dependency(request: Request, _: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Principal:
        keyring: KeyRing = request.app.state.keyring
        limiter: FailedAuthLimiter | None = getattr(request.app.state, "auth_limiter", None)
        client = request.client.host if request.client else "local"
        if keyring.enabled and limiter is not None:
            wait = limiter.retry_after(client)
            if wait is not None:
                raise APIError(
                    429,
                    "too_many_failed_authentications",
                    f"too many failed authentications from {client}; try again in {wait} s",
                    {"Retry-After": str(wait)},
                )
        authorization = request.headers.get("authorization")
        try:
            principal = keyring.authenticate(authorization)
        except APIError:
            if limiter is not None and authorization:  # a presented, wrong credential
                limiter.record_failure(client)
                log.warning("failed authentication from %s", client)
            raise
        if not principal.allows(scope):
            raise APIError(403, "forbidden", f"this API key lacks the {scope!r} scope")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


class LoopbackOnlyMiddleware:
    """While no API key is configured, answer 403 to every client that is not on this machine.

    ``clipmc serve`` already binds 127.0.0.1 without keys, but ``uvicorn --factory ... --host 0.0.0.0``
    or a container port mapping bypass that; this check holds however the app is started. The client
    address is the one uvicorn reports (with ``--proxy-headers``, a trusted proxy's X-Forwarded-For),
    so a loopback reverse proxy in front passes its remote clients' addresses, which are refused too.
    A client with no address (a Unix socket) is local.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            host = client[0] if client else None
            if host is not None and not is_loopback(host):
                log.warning("refused %s: auth is off, so only loopback clients are served", host)
                body = json.dumps(
                    error_body(
                        "loopback_only",
                        "no API key is configured on this service, so it answers only clients on its own machine; "
                        "configure API keys (CLIPMC_API_KEYS) to serve the network",
                    )
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
