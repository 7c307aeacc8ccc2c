"""Docker HEALTHCHECK probe of the clipmc image: exit 0 when ``/readyz`` answers 200, 1 otherwise.

``/readyz`` (not ``/healthz``) because a container is only worth routing to once the model is warmed up
at its micro-batch sizes and the gallery is open. Standard library only, and nothing of clipmc is
imported: Docker runs this every few seconds. It probes the address the service binds (loopback when
that is a wildcard address) on ``CLIPMC_PORT``, without any HTTP proxy from the environment.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0  # below the HEALTHCHECK --timeout of 5 s, so a hung service reads as unhealthy, not killed
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def readyz_url(environ: dict[str, str]) -> str:
    """The ``/readyz`` URL of the service configured by ``environ`` (CLIPMC_HOST, CLIPMC_PORT)."""
    host = environ.get("CLIPMC_HOST", "127.0.0.1").strip()
    if host in _WILDCARDS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    port = environ.get("CLIPMC_PORT", "8000").strip() or "8000"
    return f"http://{host}:{port}/readyz"


def probe(url: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(ready, one line for Docker's health log)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:  # 503 while the engine is built or warmed up
        detail = exc.read(300).decode("utf-8", "replace").strip()
        return False, f"{url}: HTTP {exc.code} {detail}"
    except (OSError, ValueError) as exc:  # refused (not listening yet), timeout, bad port
        return False, f"{url}: {exc}"


def main() -> int:
    ready, line = probe(readyz_url(dict(os.environ)))
    print(line)
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
