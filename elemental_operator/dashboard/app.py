"""The dashboard as an aiohttp sub-application: routes, the session/CSRF gate, security headers.

Mounted by ``elemental_operator.server.app.make_app`` under ``/dashboard/`` on the operator's
own port, so it shares the connection guard, TLS and the store with the admin API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from elemental_operator.context import OperatorContext
from elemental_operator.dashboard import views
from elemental_operator.dashboard.auth import COOKIE, Sessions
from elemental_operator.dashboard.live import Hub
from elemental_operator.dashboard.render import STATIC, Renderer

log = logging.getLogger(__name__)

# Strict: scripts and styles only from our own files, nothing inline, no framing, forms post
# only back here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer makes Chromium send Origin: null on POSTs
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=31536000",
}
PUBLIC = frozenset({"login", "login_post", "static"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _same_origin(request: web.Request) -> bool:
    """A browser's POST says where it comes from; anything but this origin is refused."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    # The scheme aiohttp reports may be http behind the guard's TLS wrapper: host and port decide.
    scheme, _, netloc = origin.partition("://")
    return scheme in ("https", request.scheme) and netloc == request.host


def _refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await _gate(request, handler)
    except web.HTTPException as exc:
        resp = exc
    for key, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(key, value)
    if request.match_info.route.name != "static":
        resp.headers.setdefault("Cache-Control", "no-store")
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    name = request.match_info.route.name or ""
    unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
    if unsafe and not _same_origin(request):
        return _refuse(403, "cross-site request refused")
    if name in PUBLIC:
        return await handler(request)
    sessions = request.app[views.SESSIONS]
    cookie = request.cookies.get(COOKIE, "")
    session = await asyncio.to_thread(sessions.check, cookie) if cookie else None
    if session is None:
        if unsafe or name == "events":
            return _refuse(401, "not logged in (or the session expired): log in again")
        resp = web.HTTPSeeOther(f"{views.PREFIX}/login?next={request.rel_url.path}")
        if cookie:
            resp.del_cookie(COOKIE, path=views.PREFIX)
        return resp
    request["session"] = session
    if not unsafe and name != "events":
        # The version the page is rendered at: its stream replays what changes after it.
        request["rv"] = await asyncio.to_thread(request.app[views.CTX].store.current_version)
    if unsafe:
        form = await request.post()
        if not sessions.csrf_ok(session, str(form.get("_csrf", ""))):
            return _refuse(403, "missing or wrong CSRF token: reload the page and try again")
        if name != "logout" and not session.admin:
            return _refuse(403, "read-only session: this action needs the admin token")
    return await handler(request)


def dashboard_app(ctx: OperatorContext, admin_token: str, state_dir: Path) -> web.Application:
    app = web.Application(middlewares=[gate])
    app[views.CTX] = ctx
    app[views.STATE] = Path(state_dir)
    app[views.SESSIONS] = Sessions(ctx.store, admin_token, ctx.secret_key)
    renderer = Renderer(views.PREFIX)
    app[views.RENDER] = renderer
    hub = Hub(ctx.store, renderer.row)
    app[views.HUB] = hub
    app.on_startup.append(hub.start)
    app.on_shutdown.append(hub.stop)
    r = app.router
    r.add_get("", views.index)
    r.add_get("/", views.index)
    r.add_get("/login", views.login_form, name="login")
    r.add_post("/login", views.login, name="login_post")
    r.add_post("/logout", views.logout, name="logout")
    r.add_get("/events", views.events, name="events")
    r.add_get("/machines", views.machines)
    r.add_get("/machines/{ns}/{name}", views.machine)
    r.add_get("/machines/{ns}/{name}/delete", views.machine_delete_confirm)
    r.add_post("/machines/{ns}/{name}/delete", views.machine_delete)
    r.add_get("/machines/{ns}/{name}/labels", views.machine_labels_form)
    r.add_post("/machines/{ns}/{name}/labels", views.machine_labels)
    r.add_get("/registrations", views.registrations)
    r.add_get("/registrations/new", views.registration_new_form)
    r.add_post("/registrations/new", views.registration_create)
    r.add_get("/registrations/{ns}/{name}", views.registration)
    r.add_get("/registrations/{ns}/{name}/registration.yaml", views.registration_file)
    r.add_post("/registrations/{ns}/{name}/seedimages", views.seedimage_create)
    r.add_get("/seedimages/{ns}/{name}/{file}", views.seedimage_download)
    r.add_get("/os", views.os_page)
    r.add_post("/os/rollout", views.rollout_create)
    r.add_static("/static/", STATIC, name="static", append_version=False)
    return app
