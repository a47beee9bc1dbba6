"""The service's guards: the bearer token (header, cookie, or once in a page's URL) and the request body limit."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from spaces import UsageError

__all__ = ["COOKIE", "MIN_TOKEN", "BodyLimit", "authorize", "is_loopback", "read_token", "refusal", "unauthorized"]

COOKIE = "prunetune_token"
MIN_TOKEN = 16
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
_bearer = HTTPBearer(auto_error=False, description="the server's token (PRUNETUNE_TOKEN or --token-file)")


def refusal(request: Request, cred: HTTPAuthorizationCredentials | None, token: str) -> HTTPException | None:
    """The 401 for a request that does not carry ``token``, or None when it does.

    The token is read from the ``Authorization: Bearer`` header, else the page
    cookie, else (GET only) a ``?token=`` in the URL, and compared in constant
    time. This is the one test of "is this request authenticated":
    :func:`authorize` (every route's dependency) and
    :class:`~search.service._admission.Admission` (before a request takes a
    place) both ask it.
    """
    given = cred.credentials if cred is not None else request.cookies.get(COOKIE)
    if given is None and request.method == "GET":
        given = request.query_params.get("token")
    if given is not None and secrets.compare_digest(given.encode(), token.encode()):
        return None
    what = "a wrong token" if given is not None else "no token"
    return HTTPException(401, f"{what}: send Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"})


def authorize(request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Every route's dependency (and the OpenAPI page's security scheme): raise :func:`refusal`'s 401, if any."""
    refused = refusal(request, cred, request.app.state.token)
    if refused is not None:
        raise refused


async def unauthorized(scope: Scope, token: str) -> JSONResponse | None:
    """The 401 response (the JSON error and headers :func:`authorize` gives) for a request without ``token``,
    else None; it reads only the request's headers and URL, never its body."""
    request = Request(scope)
    refused = refusal(request, await _bearer(request), token)
    if refused is None:
        return None
    return JSONResponse({"error": str(refused.detail)}, status_code=refused.status_code, headers=refused.headers)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str:
    """The server's token: ``token_file``'s first line, else ``$PRUNETUNE_TOKEN``; UsageError if none or short."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {token_file!r}: {exc.strerror or exc}") from None
    else:
        token = os.environ.get("PRUNETUNE_TOKEN", "").strip()
    if not token:
        raise UsageError("refusing to start without a token: set PRUNETUNE_TOKEN or pass --token-file FILE")
    if len(token) < MIN_TOKEN:
        raise UsageError(f"the token must have at least {MIN_TOKEN} characters, got {len(token)}")
    return token


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413) before any route reads them, chunked ones too."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await self._refuse(send)
        body, sent = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        resp = JSONResponse({"error": f"request body over {self.limit} bytes"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})
