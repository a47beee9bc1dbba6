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
page without it. Bodies over ``max_body`` bytes are refused (413) before they
are parsed; a submitted config may name only what the server registers
(:func:`search._worker.check_submission`, 422, nothing stored). Every error is
one line of JSON, ``{"error": "..."}``, with its status code.
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import secrets
import tempfile
import threading
import zipfile
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from search._api import (
    ErrorOut,
    FrontFigureOut,
    StudyDetailOut,
    StudyOut,
    SubmissionIn,
    SubmissionOut,
    TrialOut,
    candidate_out,
    study_out,
    submission_out,
    trial_out,
)
from search._worker import SubmissionError, check_submission
from spaces import PruneTuneError, UsageError, first_line
from storage import ReportExtras, StudyStore, Submissions

__all__ = ["create_app", "is_loopback", "read_token", "serve"]

COOKIE = "prunetune_token"
log = logging.getLogger("prunetune")
MIN_TOKEN = 16
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": what}
    for code, what in ((401, "no or wrong token"), (404, "no such study or trial"), (422, "invalid input"))
}


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


class _BodyLimit:
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


def create_app(
    url: str,
    token: str,
    *,
    factories: Collection[str] = (),
    max_body: int = 64 * 1024,
) -> FastAPI:
    """The service on store ``url`` (created if new); ``factories``: the ``package.module:factory`` specs
    that submitted studies may name."""
    from search._report import report_extras
    from storage import candidates_frame, front_figure, render_report

    writer = StudyStore(url)  # creates or upgrades the schema; only submissions are written through it
    reader = StudyStore.open_existing(url)
    queue = Submissions(writer)
    allowed = frozenset(factories)
    cache: dict[str, tuple[tuple[Any, ...], ReportExtras]] = {}
    lock = threading.Lock()
    bearer = HTTPBearer(auto_error=False, description="the server's token (PRUNETUNE_TOKEN or --token-file)")

    def auth(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        given = cred.credentials if cred is not None else request.cookies.get(COOKIE)
        if given is None and request.method == "GET":
            given = request.query_params.get("token")
        if given is None or not secrets.compare_digest(given.encode(), token.encode()):
            what = "a wrong token" if given is not None else "no token"
            raise HTTPException(401, f"{what}: send Authorization: Bearer TOKEN", {"WWW-Authenticate": "Bearer"})

    app = FastAPI(
        title="PruneTune",
        summary="Pareto fronts of compression studies, their candidates and exports; submit studies to workers.",
        version="1",
        docs_url=None,  # served below, behind the token, with local assets
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(auth)],
        responses=_ERRORS,
    )
    app.add_middleware(_BodyLimit, limit=max_body)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {err.get('msg')}" if where else err.get("msg")}, status_code=422)

    @app.exception_handler(PruneTuneError)
    async def _bad(_: Request, exc: PruneTuneError) -> JSONResponse:
        return JSONResponse({"error": first_line(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:  # a bug: logged with its traceback, one line out
        log.error("internal error", exc_info=exc)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)

    def study_or_404(name: str) -> Any:
        try:
            return reader.study(name)
        except ValueError:
            raise HTTPException(404, f"no study named {name!r}") from None

    def front_ids(study_id: int) -> set[int]:
        return {r.id for r in reader.front(study_id)}

    def row_or_404(name: str, n: int) -> Any:
        info = study_or_404(name)
        try:
            return info, reader.candidate(info.id, trial_number=n)
        except ValueError:
            raise HTTPException(404, f"study {name!r} has no trial {n}") from None

    # ------------------------------------------------------------------ API
    @app.get("/api/studies", response_model=list[StudyOut], tags=["studies"])
    def list_studies() -> list[StudyOut]:
        """Every study in the store, with its candidates' counts."""
        out = []
        for name in reader.study_names():
            info = reader.study(name)
            out.append(study_out(info, reader.candidates(info.id), len(front_ids(info.id))))
        return out

    @app.get("/api/studies/{name}", response_model=StudyDetailOut, tags=["studies"])
    def get_study(name: str) -> StudyDetailOut:
        """A study, its candidates and its Pareto front."""
        info = study_or_404(name)
        rows, front = reader.candidates(info.id), reader.front(info.id)
        ids = {r.id for r in front}
        return StudyDetailOut(
            study=study_out(info, rows, len(front)),
            candidates=[candidate_out(r, ids) for r in rows],
            front=[r.trial_number for r in front if r.trial_number is not None],
        )

    @app.get("/api/studies/{name}/figures/front", response_model=FrontFigureOut, tags=["studies"])
    def get_front_figure(name: str) -> FrontFigureOut:
        """The front's plotly figure, as the study's page draws it (the page polls this while a study runs)."""
        info = study_or_404(name)
        df = candidates_frame(reader, name)
        return FrontFigureOut(candidates=len(df), figure=json.loads(front_figure(df, info).to_json()))

    @app.get("/api/studies/{name}/trials/{n}", response_model=TrialOut, tags=["trials"])
    def get_trial(name: str, n: int) -> TrialOut:
        """One candidate by trial number: its plan, metrics, history and seconds per phase."""
        info, row = row_or_404(name, n)
        return trial_out(row, front_ids(info.id))

    @app.get(
        "/api/studies/{name}/trials/{n}/export",
        tags=["trials"],
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}, "description": "plan.json, weights.safetensors, "
                         "model.json: load the unzipped folder with search.load_exported"}},
    )  # fmt: skip
    def export_trial(name: str, n: int) -> Response:
        """A COMPLETE candidate as a zip of its export (the same files as `prunetune export`)."""
        from search._export import export_candidate

        row_or_404(name, n)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                d = export_candidate(reader, name, Path(tmp) / "export", trial=n)
            except ValueError as exc:
                raise HTTPException(409, first_line(exc)) from None
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for f in ("plan.json", "weights.safetensors", "model.json"):
                    z.write(d / f, f)
        disposition = f"attachment; filename={quote(name)}-trial-{n}.zip"
        return Response(buf.getvalue(), media_type="application/zip", headers={"Content-Disposition": disposition})

    @app.post("/api/studies", response_model=SubmissionOut, status_code=202, tags=["submissions"])
    def submit(body: SubmissionIn) -> SubmissionOut:
        """Queue a study for `prunetune worker`: a config with the TOML file's schema, naming only models and
        data this server registers (zoo:, torchvision:, built-in data, its --factory specs); the server's own
        store and artifacts folder are used."""
        try:
            cfg = check_submission(body.config.model_dump(mode="json"), allowed)
            record = queue.submit(str(cfg.search.study), cfg.model_dump(mode="json"))
        except SubmissionError as exc:
            raise HTTPException(422, first_line(exc)) from None
        except ValueError as exc:
            raise HTTPException(409, first_line(exc)) from None
        return submission_out(record)

    @app.get("/api/submissions", response_model=list[SubmissionOut], tags=["submissions"])
    def list_submissions() -> list[SubmissionOut]:
        return [submission_out(s) for s in queue.all()]

    @app.get("/api/submissions/{sid}", response_model=SubmissionOut, tags=["submissions"])
    def get_submission(sid: int) -> SubmissionOut:
        try:
            return submission_out(queue.get(sid))
        except ValueError as exc:
            raise HTTPException(404, first_line(exc)) from None

    # ------------------------------------------------------------------ pages and assets
    def extras_of(name: str) -> ReportExtras:
        info = reader.study(name)
        key = (reader.count(info.id), tuple(sorted(front_ids(info.id))))
        with lock:
            hit = cache.get(name)
            if hit is not None and hit[0] == key:
                return hit[1]
            try:
                extras = report_extras(reader, name, trusted=lambda spec: spec in allowed)
            except (PruneTuneError, ValueError, OSError) as exc:
                why = f"the base model could not be rebuilt: {first_line(exc)}"
                extras = ReportExtras(notes={"structure": why, "filters": why})
            cache[name] = (key, extras)
            return extras

    def page(request: Request, html: Callable[[], str]) -> Response:
        if "token" in request.query_params:  # a browser's first visit: keep the token in a cookie, not the URL
            resp: Response = RedirectResponse(request.url.remove_query_params("token").path, status_code=303)
            resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return resp
        return HTMLResponse(html())

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        from html import escape

        def html() -> str:
            items = "".join(
                f'<li><a href="/studies/{quote(s.name)}">{escape(s.name)}</a>: {escape(s.model)} on '
                f"{escape(s.data)}, {s.candidates} candidates, front {s.front}</li>"
                for s in list_studies()
            )
            subs = "".join(
                f"<li>{s.id}: {escape(s.study)} {s.status}{' — ' + escape(s.error) if s.error else ''}</li>"
                for s in queue.all()
            )
            return (
                f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>PruneTune</title></head><body>'
                f"<h1>PruneTune studies</h1><ul>{items or '<li>none yet</li>'}</ul><h2>Submissions</h2>"
                f'<ul>{subs or "<li>none</li>"}</ul><p><a href="/docs">API</a></p></body></html>'
            )

        return page(request, html)

    @app.get("/studies/{name}", include_in_schema=False)
    def study_page(request: Request, name: str) -> Response:
        info = study_or_404(name)
        live = f"/api/studies/{quote(name)}/figures/front"

        def html() -> str:
            df = candidates_frame(reader, name)
            return render_report(reader, info, df, extras_of(name), plotlyjs="/assets/plotly.min.js", live=live)

        return page(request, html)

    @app.get("/assets/{asset}", include_in_schema=False)
    def asset(asset: str) -> Response:
        if asset == "plotly.min.js":
            from plotly.offline import get_plotlyjs

            return Response(get_plotlyjs(), media_type="text/javascript")
        if asset not in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
            raise HTTPException(404, f"no asset {asset!r}")
        data = (resources.files("fastapi_offline") / "static" / asset).read_bytes()
        kinds = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        return Response(data, media_type=kinds[Path(asset).suffix])

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> Response:
        def html() -> str:
            return bytes(
                get_swagger_ui_html(
                    openapi_url="/openapi.json",
                    title="PruneTune API",
                    swagger_js_url="/assets/swagger-ui-bundle.js",
                    swagger_css_url="/assets/swagger-ui.css",
                    swagger_favicon_url="/assets/favicon.png",
                ).body
            ).decode()

        return page(request, html)

    return app


def serve(
    url: str, *, host: str, port: int, token: str, factories: Collection[str] = (), max_body: int = 64 * 1024
) -> None:
    """Run the service until interrupted (uvicorn)."""
    import uvicorn

    if not is_loopback(host):
        print(f"prunetune serve: listening on {host}, beyond this machine: plain HTTP, put TLS in front of it")
    app = create_app(url, token, factories=factories, max_body=max_body)
    print(f"prunetune serve: http://{host}:{port}/ (open /?token=TOKEN once in a browser; API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
