"""The annotator's guard against cross-site requests: a web page the user visits elsewhere must not be able to
change their labels (a form or ``fetch`` POST to ``http://127.0.0.1:8000/api/...`` needs no permission).

Every state-changing request (any method but GET, HEAD, OPTIONS) must

* come from this server's own page: its ``Origin`` (else its ``Referer``), when sent, names the host:port the
  request was sent to (the ``Host`` header) - 403 otherwise;
* carry the server's random token in the ``X-Samforge-Token`` header (the page reads it from its
  ``<meta name="samforge-token">``, which another site cannot read) - 403 otherwise;
* say ``Content-Type: application/json`` (which a cross-site form cannot send) - 415 otherwise.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_HEADER = "X-Samforge-Token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def new_token() -> str:
    """A random per-server token (URL-safe, 32 bytes of entropy)."""
    return secrets.token_urlsafe(32)


def origin_host(value: str) -> str | None:
    """``"http://127.0.0.1:8000/path"`` -> ``"127.0.0.1:8000"``; None for ``null`` or a value without a host."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    try:
        port = parts.port or default
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}".lower()


def request_host(host_header: str, scheme: str) -> str:
    """The Host header as ``host:port`` (the scheme's default port filled in), lower case."""
    return origin_host(f"{scheme}://{host_header}") or host_header.lower()


class SameOriginGuard:
    """ASGI middleware enforcing the rules of this module's docstring with ``token``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError(f"token must be a random string of at least 16 characters, got {token!r}")
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            return await self.app(scope, receive, send)
        status, detail = self.refusal(scope)
        if status:
            return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str]:
        """(status, why) of a refused request, or (0, "") when it may pass."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        here = request_host(headers.get("host", ""), scope.get("scheme", "http"))
        for name in ("origin", "referer"):
            if name in headers:
                there = origin_host(headers[name])
                if there != here:
                    return 403, (f"cross-origin request refused: {name.title()} {headers[name]!r} is not this "
                                 f"server ({here}); changes come from the annotator's own page only")
                break
        if not secrets.compare_digest(headers.get(TOKEN_HEADER.lower(), "").encode(), self.token.encode()):
            return 403, (f"request refused: a {scope['method']} needs the header {TOKEN_HEADER} with this server's "
                         "token, which its page sends (reload the page if the server was restarted)")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return 415, (f"the body must be JSON sent with Content-Type: application/json, got "
                         f"{media or 'no Content-Type'}")
        return 0, ""
