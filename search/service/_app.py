"""``prunetune serve``: the report pages of every study in a store, live, and a small token-guarded JSON API.

Routes (every one behind the bearer token, the OpenAPI page included):

* pages: ``/`` (studies and submissions), ``/studies/{name}`` (the study's
  report; its front redraws every few seconds from the API while a study runs);
* API: ``GET /api/studies``, ``GET /api/studies/{name}``,
  ``GET /api/studies/{name}/trials/{n}``, ``GET /api/studies/{name}/trials/{n}/export``
  (a zip of ``plan.json``, ``weights.safetensors``, ``model.json``, written by
  :func:`search.export_candidate`), ``GET /api/studies/{name}/figures/front``,
  ``POST /api/studies`` (queue a study for ``prunetune worker``),
  ``GET /api/submissions[/{id}]``; docs at ``/docs`` (assets served here, no CDN).

Security: the server binds 127.0.0.1 unless told otherwise and never starts
without a token (``PRUNETUNE_TOKEN`` or ``--token-file``). A request carries it
as ``Authorization: Bearer TOKEN``; a browser may open a page once with
``?token=TOKEN``, which sets an HttpOnly, same-site cookie and redirects to the
page without it. The token is checked before a request takes a place in the
admission queue (:mod:`search.service._admission`): requests without it are
answered 401 at once and cannot crowd out users. Bodies over ``max_body`` bytes
are refused (413) before they are parsed; a submitted config may name only what the server registers
(:func:`search.service._worker.check_submission`, 422, nothing stored). Every error is
one line of JSON, ``{"error": "..."}``, with its status code.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from search.service import _routes_api, _routes_pages
from search.service._admission import Admission
from search.service._api_models import ErrorOut
from search.service._security import BodyLimit, authorize, is_loopback, read_token
from search.service._state import ServiceState
from spaces import PruneTuneError, UsageError, first_line

__all__ = ["create_app", "is_loopback", "read_token", "serve"]

log = logging.getLogger("prunetune")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in ((401, "no or wrong token"), (404, "no such study or trial"), (422, "invalid input"))
}


def create_app(
    url: str,
    token: str,
    *,
    factories: Collection[str] = (),
    max_body: int = 64 * 1024,
    max_concurrent: int = 8,
    max_waiting: int = 64,
) -> FastAPI:
    """The service on store ``url`` (created if new); ``factories``: the ``package.module:factory`` specs
    that submitted studies may name; ``max_concurrent`` authenticated requests at once, ``max_waiting``
    more queued, then 503; a request without the token is answered 401 before it takes a place
    (:mod:`search.service._admission`)."""
    if max_concurrent < 1 or max_waiting < 0:
        raise UsageError(
            f"--max-concurrent must be >= 1 and --max-waiting >= 0, got {max_concurrent} and {max_waiting}"
        )
    app = FastAPI(
        title="PruneTune",
        summary="Pareto fronts of compression studies, their candidates and exports; submit studies to workers.",
        version="1",
        docs_url=None,  # served by the pages' router, behind the token, with local assets
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(authorize)],
        responses=_ERRORS,
    )
    app.state.token = token
    app.state.service = ServiceState.open(url, factories)
    app.add_middleware(BodyLimit, limit=max_body)
    # outermost, before any work: the token first (401 at the door), then a place (503 when full)
    app.add_middleware(Admission, token=token, concurrent=max_concurrent, waiting=max_waiting)
    _errors_as_json(app)
    app.include_router(_routes_api.router)
    app.include_router(_routes_pages.router)
    return app


def _errors_as_json(app: FastAPI) -> None:
    """Every error is one line of JSON, ``{"error": "..."}``, with its status code (a bug: 500, logged)."""

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        # the body's name and the submitted config's schema tag (vision, decoder, other) are not keys the user wrote
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "vision", "decoder", "other"))
        return JSONResponse({"error": f"{where}: {err.get('msg')}" if where else err.get("msg")}, status_code=422)

    @app.exception_handler(PruneTuneError)
    async def _bad(_: Request, exc: PruneTuneError) -> JSONResponse:
        return JSONResponse({"error": first_line(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:  # a bug: logged with its traceback, one line out
        log.error("internal error", exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def serve(
    url: str,
    *,
    host: str,
    port: int,
    token: str,
    factories: Collection[str] = (),
    max_body: int = 64 * 1024,
    max_concurrent: int = 8,
    max_waiting: int = 64,
) -> None:
    """Run the service until interrupted (uvicorn)."""
    import uvicorn

    if not is_loopback(host):
        print(f"prunetune serve: listening on {host}, beyond this machine: plain HTTP, put TLS in front of it")
    app = create_app(
        url, token, factories=factories, max_body=max_body, max_concurrent=max_concurrent, max_waiting=max_waiting
    )
    print(f"prunetune serve: http://{host}:{port}/ (open /?token=TOKEN once in a browser; API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
