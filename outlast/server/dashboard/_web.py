"""The dashboard's small web layer: session, login and CSRF checks around every route,
templates, and the request context the views get.

Views are plain synchronous functions ``(ctx) -> Response`` run in the thread pool,
where the store's synchronous calls belong. Every POST carries the session's CSRF token
(a hidden ``csrf`` field) and the environment it was rendered for (``env``), so a forged
form is refused and an action never lands in an environment other than the one shown.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ... import __version__
from ..._errors import InvalidState, OutlastError, ValidationError
from ...store.base import DashboardStore
from . import _fmt
from ._session import COOKIE, MAX_AGE, Session, Signer
from ._throttle import LoginThrottle

log = logging.getLogger(__name__)

View = Callable[["Ctx"], Response]

_STATUS_BY_CODE = {
    "run_not_found": 404,
    "token_not_found": 404,
    "queue_not_found": 404,
    "unknown_task": 404,
    "invalid_state": 409,
    "token_timed_out": 409,
}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

NAV = [
    ("runs", "Runs", "/runs"),
    ("tasks", "Tasks", "/tasks"),
    ("queues", "Queues", "/queues"),
    ("waitpoints", "Waitpoints", "/waitpoints"),
    ("workers", "Workers", "/workers"),
    ("versions", "Versions", "/versions"),
    ("schedules", "Schedules", "/schedules"),
    ("errors", "Errors", "/errors"),
    ("alerts", "Alerts", "/alerts"),
    ("events", "Events", "/events"),
    ("webhooks", "Webhooks", "/webhooks"),
    ("usage", "Usage", "/usage"),
    ("advice", "Advice", "/advice"),
    ("test", "Test", "/test"),
]


def _static_version() -> str:
    h = hashlib.sha256(__version__.encode())
    folder = resources.files("outlast.server.dashboard").joinpath("static")
    for name in ("app.css", "app.js"):
        h.update(folder.joinpath(name).read_bytes())
    return h.hexdigest()[:10]


@dataclass
class Ctx:
    """What a view gets: the request, its session, the parsed form, and helpers."""

    app: Dashboard
    request: Request
    session: Session
    form: dict[str, list[str]] = field(default_factory=dict)

    @property
    def store(self) -> DashboardStore:
        return self.app.store

    @property
    def env(self) -> str:
        return self.session.env

    def arg(self, name: str, default: str = "") -> str:
        return str(self.request.query_params.get(name, default)).strip()

    def args(self, name: str) -> list[str]:
        return [v for v in self.request.query_params.getlist(name) if v.strip()]

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[-1] if values else default

    def fields(self, name: str) -> list[str]:
        return [v for v in self.form.get(name, []) if v.strip()]

    def path_param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A full page: with the environment selector and the pending flash message."""
        context.setdefault("flash", self.session.take_flash())
        context.setdefault("envs", self.app.envs(self.session.env))
        context.setdefault("active", "")
        return HTMLResponse(self.render_text(template, **context), status_code=status)

    def render_text(self, template: str, **context: Any) -> str:
        return self.app.templates.get_template(template).render(
            session=self.session,
            env=self.session.env,
            csrf=self.session.csrf,
            path=self.request.url.path,
            login_required=self.app.require_login,
            static_v=self.app.static_v,
            **context,
        )

    def redirect(self, url: str, message: tuple[str, str] | None = None) -> RedirectResponse:
        if message is not None:
            self.session.say(*message)
        return RedirectResponse(url, status_code=303)


class Dashboard:
    def __init__(self, store: DashboardStore, *, require_login: bool, password: str | None) -> None:
        self.store = store
        self.require_login = require_login
        self.password = password
        self.signer = Signer(store, password)
        self.throttle = LoginThrottle()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("outlast.server.dashboard", "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(_fmt.FILTERS)
        self.templates.globals.update(nav=NAV, version=__version__)
        self.static_v = _static_version()

    def route(self, path: str, view: View, *, methods: tuple[str, ...] = ("GET",),
              public: bool = False, api: bool = False) -> Route:
        async def endpoint(request: Request) -> Response:
            return await self._handle(request, view, public=public, api=api)

        return Route(path, endpoint, methods=list(methods), include_in_schema=False)

    async def _handle(self, request: Request, view: View, *, public: bool, api: bool
                      ) -> Response:
        cookie = request.cookies.get(COOKIE)
        session = await run_in_threadpool(self.signer.load, cookie)
        ctx = Ctx(self, request, session)
        response = await self._guarded(ctx, view, public=public, api=api)
        if session.dirty:
            value = await run_in_threadpool(self.signer.dumps, session)
            response.set_cookie(
                COOKIE, value, max_age=MAX_AGE, httponly=True, samesite="lax",
                secure=request.url.scheme == "https", path="/",
            )
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _guarded(self, ctx: Ctx, view: View, *, public: bool, api: bool) -> Response:
        request = ctx.request
        if self.require_login and not ctx.session.auth and not public:
            if api:
                return JSONResponse({"error": "login required"}, status_code=401)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":
                target = "/"
            return RedirectResponse(
                "/login?" + urllib.parse.urlencode({"next": target}), status_code=303
            )
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip()
            body = await request.body()
            if ctype not in ("application/x-www-form-urlencoded", ""):
                return self.error(ctx, 415, "Unsupported form encoding",
                                  "The dashboard accepts URL-encoded forms only.")
            try:
                ctx.form = urllib.parse.parse_qs(
                    body.decode("utf-8"), keep_blank_values=True, max_num_fields=5000
                )
            except (UnicodeDecodeError, ValueError):
                return self.error(ctx, 400, "Bad form", "The form could not be read.")
            token = ctx.field("csrf") or request.headers.get("x-csrf-token", "")
            if not ctx.session.check_csrf(token):
                return self.error(ctx, 403, "Forbidden",
                                  "The form's security token is missing or stale. Reload the "
                                  "page and try again.")
            form_env = ctx.field("env")
            if form_env and form_env != ctx.session.env:
                return self.error(
                    ctx, 409, "Environment changed",
                    f"This form was for environment {form_env!r}, but {ctx.session.env!r} "
                    "is selected now (changed in another tab?). Nothing was done.")
        try:
            return await run_in_threadpool(view, ctx)
        except ValidationError as exc:
            return self.error(ctx, 422, "Invalid input", f"[{exc.code}] {exc.message}")
        except OutlastError as exc:
            status = _STATUS_BY_CODE.get(exc.code, 400)
            if isinstance(exc, InvalidState):
                status = 409
            return self.error(ctx, status, "Not possible", f"[{exc.code}] {exc.message}")

    def error(self, ctx: Ctx, status: int, title: str, message: str) -> Response:
        if ctx.request.url.path.startswith("/dashboard-api/"):
            return JSONResponse({"error": message}, status_code=status)
        return ctx.render("error.html", status=status, title=title, message=message)

    def envs(self, current: str) -> list[str]:
        """Environments to offer: those the store has seen, plus dev and the current one.
        (A read of four small tables, cheap enough for every page.)"""
        names: list[str] = []
        try:
            names = self.store.known_envs()
        except Exception:  # a page must render even if this read fails
            log.exception("could not list environments")
        return sorted({*names, "dev", current})
