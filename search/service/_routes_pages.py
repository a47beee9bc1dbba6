"""The pages (the index, each study's live report, the API docs) and their assets, served without a CDN."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from importlib import resources
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from search.service._routes_api import studies
from search.service._security import COOKIE
from search.service._state import ServiceState, state_of
from search.tasks import task_of_study
from storage import candidates_frame, render_report

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
State = Annotated[ServiceState, Depends(state_of)]
_KINDS = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


def _page(request: Request, html: Callable[[], str]) -> Response:
    """The page; on a browser's first visit with ``?token=``, a cookie and a redirect to the page without it."""
    if "token" in request.query_params:
        resp: Response = RedirectResponse(request.url.remove_query_params("token").path, status_code=303)
        resp.set_cookie(COOKIE, request.app.state.token, httponly=True, samesite="strict")
        return resp
    return HTMLResponse(html())


@router.get("/")
def index(request: Request, state: State) -> Response:
    def html() -> str:
        items = "".join(
            f'<li><a href="/studies/{quote(s.name)}">{escape(s.name)}</a>: {escape(s.model)} on '
            f"{escape(s.data)}, {s.candidates} candidates, front {s.front}</li>"
            for s in studies(state)
        )
        subs = "".join(
            f"<li>{s.id}: {escape(s.study)} {s.status}{' — ' + escape(s.error) if s.error else ''}</li>"
            for s in state.queue.all()
        )
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>PruneTune</title></head><body>'
            f"<h1>PruneTune studies</h1><ul>{items or '<li>none yet</li>'}</ul><h2>Submissions</h2>"
            f'<ul>{subs or "<li>none</li>"}</ul><p><a href="/docs">API</a></p></body></html>'
        )

    return _page(request, html)


@router.get("/studies/{name}")
def study_page(request: Request, name: str, state: State) -> Response:
    info = state.study_or_404(name)
    live = f"/api/studies/{quote(name)}/figures/front"

    def html() -> str:
        if (task := task_of_study(info)) is not None:  # a language-model study: its own page
            return task.page(state.reader, info, plotlyjs="/assets/plotly.min.js")[0]
        df = candidates_frame(state.reader, name)
        return render_report(state.reader, info, df, state.extras_of(name), plotlyjs="/assets/plotly.min.js", live=live)

    return _page(request, lambda: state.cached(name, "page", html))


@router.get("/assets/{asset}")
def asset(asset: str) -> Response:
    if asset == "plotly.min.js":
        from plotly.offline import get_plotlyjs  # heavy: the whole plotly.js bundle

        return Response(get_plotlyjs(), media_type="text/javascript")
    if asset not in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        raise HTTPException(404, f"no asset {asset!r}")
    data = (resources.files("fastapi_offline") / "static" / asset).read_bytes()
    return Response(data, media_type=_KINDS[Path(asset).suffix])


@router.get("/openapi.json")
def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
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

    return _page(request, html)
