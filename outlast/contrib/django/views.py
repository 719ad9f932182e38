"""The dashboard inside a Django project, behind Django's staff login.

A catch-all view hands each request to outlast's dashboard app (an ASGI app) in
process and returns its answer; links in the pages are moved under the path the URLconf
mounted it at. The dashboard's forms carry their own CSRF token (bound to its session),
so Django's CSRF check is not applied to them twice.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from asgiref.sync import async_to_sync
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .._mount import embedded_app
from ._trigger import client

_apps: dict[str, tuple[Any, Any]] = {}  # prefix -> (the store it serves, the app)
_lock = threading.Lock()
# Hop-by-hop headers, and the length the dashboard's response is re-measured for.
_SKIP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def _app_for(prefix: str) -> Any:
    store = client().store
    with _lock:
        served, app = _apps.get(prefix, (None, None))
        if served is not store:  # first use, or the client was made anew (settings changed)
            app = embedded_app(store, prefix)
            _apps[prefix] = (store, app)
        return app


async def _forward(app: Any, request: HttpRequest, path: str) -> httpx.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://outlast") as http:
        return await http.request(
            request.method or "GET", path, params=request.GET.urlencode() or None,
            headers=headers, content=request.body,
        )


@csrf_exempt
@staff_member_required
def dashboard(request: HttpRequest, path: str = "") -> HttpResponse:
    if path.startswith("api/"):
        # Answers are relayed whole, and the API's run event stream never ends while its
        # run lives: programs reach the API on an `outlast server`, not through here.
        return HttpResponse("outlast's HTTP API is served by `outlast server`, not here",
                            status=404, content_type="text/plain")
    prefix = request.path[: len(request.path) - len(path)].rstrip("/")
    answer = async_to_sync(_forward)(_app_for(prefix), request, "/" + path)
    response = HttpResponse(answer.content, status=answer.status_code)
    for name, value in answer.headers.multi_items():
        lower = name.lower()
        if lower == "set-cookie":
            # Through Django's cookie jar: a response may set several, and Django sends
            # (and its test client reads) cookies from there, not from raw headers.
            response.cookies.load(value)
        elif lower not in _SKIP and lower != "content-encoding":
            response.headers[name] = value
    return response
