"""Dashboard pages and actions: machines, registrations and seed images, OS channels and rollouts.

Every handler reads and writes through the store exactly as the admin API does (the same
schema validation, the same body checks); the auth middleware (``app``) has already checked the
session, and for every POST the admin role and the CSRF token.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import yaml
from aiohttp import web

from elemental_common.consts import PLAN_SECRET_TYPE, SEEDIMAGE_ARTIFACT_ANNOTATION
from elemental_operator.api import API_VERSION, ValidationError
from elemental_operator.context import OperatorContext
from elemental_operator.dashboard import forms, present
from elemental_operator.dashboard.auth import COOKIE, LOGIN_COOKIE, Session, Sessions
from elemental_operator.dashboard.live import Hub, sse
from elemental_operator.dashboard.render import Renderer
from elemental_operator.store.base import AlreadyExists, Conflict, NotFound, Resource, StoreError

T = TypeVar("T")
PREFIX = "/dashboard"

CTX = web.AppKey("dashboard_ctx", OperatorContext)
SESSIONS = web.AppKey("dashboard_sessions", Sessions)
HUB = web.AppKey("dashboard_hub", Hub)
RENDER = web.AppKey("dashboard_render", Renderer)
STATE = web.AppKey("dashboard_state", Path)


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def _session(request: web.Request) -> Session | None:
    s = request.get("session")
    return s if isinstance(s, Session) else None


def page(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
    html = request.app[RENDER].page(
        template, session=_session(request), path=request.path, rv=request.get("rv", 0), **ctx
    )
    return web.Response(text=html, content_type="text/html", status=status)


def see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def _plan_secrets(ctx: OperatorContext, namespace: str | None) -> dict[tuple[str, str], Resource]:
    return {
        (s["metadata"].get("namespace", ""), s["metadata"]["name"]): s
        for s in ctx.store.list("Secret", namespace)
        if s.get("type") == PLAN_SECRET_TYPE
    }


# ---- log in / out --------------------------------------------------------------------------------


async def login_form(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    nonce = Sessions.login_nonce()
    resp = page(
        request,
        "login.html",
        status=status,
        login_nonce=nonce,
        error=error,
        next=_safe_next(request.query.get("next", "")),
    )
    resp.set_cookie(
        LOGIN_COOKIE, nonce, max_age=600, path=PREFIX, secure=True, httponly=True, samesite="Strict"
    )
    return resp


def _safe_next(target: str) -> str:
    # Only a path of this dashboard: never an open redirect.
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/machines"


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    nonce = str(form.get("login_nonce", ""))
    cookie_nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not secrets.compare_digest(nonce.encode(), cookie_nonce.encode()):
        return await login_form(request, "The login form expired; try again.", 403)
    sessions = request.app[SESSIONS]
    who = await _run(sessions.authenticate, str(form.get("token", "")))
    if who is None:
        return await login_form(request, "That token is not valid for this operator.", 401)
    cookie, _ = sessions.issue(*who)
    resp = see_other(_safe_next(str(form.get("next", ""))))
    resp.set_cookie(
        COOKIE, cookie, max_age=sessions.lifetime, path=PREFIX, secure=True, httponly=True, samesite="Strict"
    )
    resp.del_cookie(LOGIN_COOKIE, path=PREFIX)
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if session is not None:
        request.app[SESSIONS].revoke(session)
    resp = see_other(PREFIX + "/login")
    resp.del_cookie(COOKIE, path=PREFIX)
    raise resp


async def index(request: web.Request) -> web.StreamResponse:
    raise see_other(PREFIX + "/machines")


# ---- machines ------------------------------------------------------------------------------------


def _machine_rows(ctx: OperatorContext, render: Renderer) -> list[tuple[present.MachineRow, str]]:
    """Every machine's row and its HTML (cached per object version by the renderer)."""
    secrets_ = _plan_secrets(ctx, None)
    out = []
    for inv in ctx.store.list("MachineInventory"):
        secret = secrets_.get((inv["metadata"].get("namespace", ""), inv["metadata"]["name"]))
        row = present.machine_row(inv, secret)
        out.append((row, render.row_of(row, inv, secret)))
    return out


async def machines(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    q = request.query.get("q", "")
    label = request.query.get("label", "")
    sort = request.query.get("sort", "name")
    sort = sort if sort in present.SORT_KEYS else "name"
    desc = request.query.get("dir") == "desc"
    pairs = await _run(_machine_rows, ctx, request.app[RENDER])
    total = len(pairs)
    labels = present.parse_label_filter(label)
    html = {id(r): h for r, h in pairs}
    rows = present.sort_rows([r for r, _ in pairs if present.row_matches(r, q, labels)], sort, desc)

    def sort_link(key: str) -> str:
        d = "desc" if key == sort and not desc else "asc"
        return "?" + urlencode(
            {k: v for k, v in (("q", q), ("label", label), ("sort", key), ("dir", d)) if v}
        )

    return page(
        request,
        "machines.html",
        rows=rows,
        row_html=[html[id(r)] for r in rows],
        total=total,
        q=q,
        label=label,
        sort=sort,
        desc=desc,
        sort_link=sort_link,
        sort_keys=present.SORT_KEYS,
    )


def _machine(ctx: OperatorContext, ns: str, name: str) -> tuple[Resource, Resource | None]:
    inv = ctx.store.get("MachineInventory", ns, name)
    try:
        secret: Resource | None = ctx.store.get("Secret", ns, name)
    except NotFound:
        secret = None
    if secret is not None and secret.get("type") != PLAN_SECRET_TYPE:
        secret = None
    return inv, secret


async def _load_machine(request: web.Request) -> tuple[Resource, Resource | None]:
    try:
        return await _run(_machine, request.app[CTX], request.match_info["ns"], request.match_info["name"])
    except NotFound:
        raise web.HTTPNotFound(text="no such machine") from None


async def machine(request: web.Request) -> web.Response:
    inv, secret = await _load_machine(request)
    return page(
        request,
        "machine.html",
        inv=inv,
        row=present.machine_row(inv, secret),
        plan=present.plan_view(secret),
        conditions=(inv.get("status") or {}).get("conditions") or [],
        history=request.app[HUB].conditions_history(request.match_info["ns"], request.match_info["name"]),
    )


async def machine_delete_confirm(request: web.Request) -> web.Response:
    inv, secret = await _load_machine(request)
    return page(request, "confirm_delete.html", inv=inv, row=present.machine_row(inv, secret))


async def machine_delete(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    ns, name = request.match_info["ns"], request.match_info["name"]
    try:
        await _run(ctx.store.delete, "MachineInventory", ns, name)
    except NotFound:
        pass
    raise see_other(
        f"{PREFIX}/machines/{ns}/{name}" if await _exists(ctx, ns, name) else PREFIX + "/machines"
    )


async def _exists(ctx: OperatorContext, ns: str, name: str) -> bool:
    try:
        await _run(ctx.store.get, "MachineInventory", ns, name)
        return True
    except NotFound:
        return False


async def machine_labels_form(
    request: web.Request, error: str = "", text: str | None = None, status: int = 200
) -> web.Response:
    inv, secret = await _load_machine(request)
    if text is None:
        text = "\n".join(f"{k}={v}" for k, v in sorted((inv["metadata"].get("labels") or {}).items()))
    return page(
        request,
        "labels.html",
        status=status,
        inv=inv,
        row=present.machine_row(inv, secret),
        text=text,
        error=error,
    )


def _set_labels(ctx: OperatorContext, ns: str, name: str, labels: dict[str, str], rv: str) -> None:
    inv = ctx.store.get("MachineInventory", ns, name)
    inv["metadata"]["labels"] = labels
    inv["metadata"]["resourceVersion"] = rv  # the version the form was made from: no lost update
    inv.pop("status", None)
    ctx.store.update(inv)


async def machine_labels(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    text = str(form.get("labels", ""))
    ns, name = request.match_info["ns"], request.match_info["name"]
    try:
        labels = forms.parse_pairs(text, "labels")
        await _run(_set_labels, request.app[CTX], ns, name, labels, str(form.get("resourceVersion", "")))
    except forms.FormError as exc:
        return await machine_labels_form(request, str(exc), text, 422)
    except ValidationError as exc:
        return await machine_labels_form(request, str(exc), text, 422)
    except Conflict:
        return await machine_labels_form(
            request, "The machine changed since this form was opened: review and save again.", None, 409
        )
    except NotFound:
        raise web.HTTPNotFound(text="no such machine") from None
    raise see_other(f"{PREFIX}/machines/{ns}/{name}")


# ---- registrations and seed images ------------------------------------------------------------------


async def registrations(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    regs = await _run(ctx.store.list, "MachineRegistration")
    seeds = await _run(ctx.store.list, "SeedImage")
    counts: dict[tuple[str, str], int] = {}
    for si in seeds:
        ref = (si.get("spec") or {}).get("registrationRef") or {}
        key = (str(ref.get("namespace") or si["metadata"].get("namespace", "")), str(ref.get("name", "")))
        counts[key] = counts.get(key, 0) + 1
    return page(request, "registrations.html", regs=regs, seed_counts=counts, badge=present.badge)


def _new_defaults() -> dict[str, str]:
    return {
        "namespace": forms.DEFAULT_NAMESPACE,
        "machineName": "m-${System Information/UUID}",
        "auth": "tpm",
        "device": "/dev/vda",
        "reset": "on",
        "labels": "serialNumber=${System Information/Serial Number}",
    }


async def registration_new_form(request: web.Request) -> web.Response:
    values = _new_defaults()
    obj = forms.registration_from_form(values)
    obj["metadata"]["name"] = "my-registration"
    return page(
        request,
        "registration_new.html",
        values=values,
        errors={},
        yaml_text=forms.dump_yaml(obj),
        mode=request.query.get("mode", "form"),
    )


async def registration_create(request: web.Request) -> web.StreamResponse:
    form = {k: str(v) for k, v in (await request.post()).items()}
    mode = form.get("mode", "form")
    errors: dict[str, str] = {}
    yaml_text = form.get("yaml", "")
    try:
        obj = forms.load_yaml(yaml_text) if mode == "yaml" else forms.registration_from_form(form)
        obj = forms.checked(obj, "MachineRegistration")
        created = await _run(request.app[CTX].store.create, obj)
    except forms.FormError as exc:
        errors[exc.field] = str(exc)
    except ValidationError as exc:
        field = forms.field_for_error(str(exc), forms.REGISTRATION_FIELDS) if mode == "form" else ""
        errors[field or ("yaml" if mode == "yaml" else "")] = str(exc)
    except AlreadyExists as exc:
        errors["yaml" if mode == "yaml" else "name"] = str(exc)
    except StoreError as exc:
        errors[""] = str(exc)
    else:
        meta = created["metadata"]
        raise see_other(f"{PREFIX}/registrations/{meta['namespace']}/{meta['name']}")
    if mode == "form" and not yaml_text:
        try:
            yaml_text = forms.dump_yaml(forms.registration_from_form(form))
        except forms.FormError:
            yaml_text = ""
    return page(
        request,
        "registration_new.html",
        status=422,
        values=form,
        errors=errors,
        yaml_text=yaml_text,
        mode=mode,
    )


def _registration(ctx: OperatorContext, ns: str, name: str) -> tuple[Resource, list[Resource]]:
    reg = ctx.store.get("MachineRegistration", ns, name)
    seeds = [
        si
        for si in ctx.store.list("SeedImage", ns)
        if ((si.get("spec") or {}).get("registrationRef") or {}).get("name") == name
    ]
    seeds.sort(key=lambda s: s["metadata"].get("creationTimestamp") or "", reverse=True)
    return reg, seeds


async def registration(request: web.Request) -> web.Response:
    try:
        reg, seeds = await _run(
            _registration, request.app[CTX], request.match_info["ns"], request.match_info["name"]
        )
    except NotFound:
        raise web.HTTPNotFound(text="no such registration") from None
    return page(
        request,
        "registration.html",
        reg=reg,
        seeds=seeds,
        yaml_text=forms.dump_yaml(reg.get("spec")),
        badge=present.badge,
        artifact=_artifact_name,
        seed_progress=present.seed_progress,
    )


def _artifact_name(si: Resource) -> str:
    ref = str((si["metadata"].get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION, ""))
    return ref.partition("/")[2]


async def registration_file(request: web.Request) -> web.StreamResponse:
    from elemental_operator.registration import handler

    ctx = request.app[CTX]
    ns, name = request.match_info["ns"], request.match_info["name"]
    try:
        reg = await _run(ctx.store.get, "MachineRegistration", ns, name)
    except NotFound:
        raise web.HTTPNotFound(text="no such registration") from None
    ready = present.condition(reg, "Ready")
    if ready is None or ready.get("status") != "True":
        raise web.HTTPConflict(text="the registration is not Ready yet")
    data = await _run(handler.registration_file, reg, ctx)
    return web.Response(
        text=yaml.safe_dump(data, sort_keys=False),
        content_type="application/yaml",
        headers={"Content-Disposition": f'attachment; filename="{name}-registration.yaml"'},
    )


async def seedimage_create(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    ns, name = request.match_info["ns"], request.match_info["name"]
    obj = {
        "apiVersion": API_VERSION,
        "kind": "SeedImage",
        "metadata": {"generateName": f"{name}-", "namespace": ns},
        "spec": {
            "type": str(form.get("type", "iso")),
            "registrationRef": {
                "apiVersion": API_VERSION,
                "kind": "MachineRegistration",
                "name": name,
                "namespace": ns,
            },
        },
    }
    try:
        await _run(request.app[CTX].store.create, forms.checked(obj, "SeedImage"))
    except ValidationError as exc:
        raise web.HTTPUnprocessableEntity(text=str(exc)) from None
    raise see_other(f"{PREFIX}/registrations/{ns}/{name}#seedimages")


async def seedimage_download(request: web.Request) -> web.StreamResponse:
    from elemental_operator.controllers.seedimage import artifact_path

    ctx = request.app[CTX]
    ns, name, file = request.match_info["ns"], request.match_info["name"], request.match_info["file"]
    try:
        si = await _run(ctx.store.get, "SeedImage", ns, name)
    except NotFound:
        raise web.HTTPNotFound(text="no such seed image") from None
    ref = str((si["metadata"].get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION, ""))
    path = await _run(artifact_path, request.app[STATE], ref, file)
    if path is None or (si.get("status") or {}).get("state") != "Completed":
        raise web.HTTPNotFound(text="the seed image is not built (or has expired)")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{file}"'})


# ---- OS management -----------------------------------------------------------------------------


def _os(ctx: OperatorContext) -> dict[str, Any]:
    invs = ctx.store.list("MachineInventory")
    secrets_ = _plan_secrets(ctx, None)
    images = ctx.store.list("ManagedOSImage")
    rollouts = {}
    for mos in images:
        ns = mos["metadata"].get("namespace", "")
        mine = {n: s for (sns, n), s in secrets_.items() if sns == ns}
        rollouts[(ns, mos["metadata"]["name"])] = present.rollout(
            mos,
            [
                i
                for i in invs
                if i["metadata"].get("namespace") == ns and not i["metadata"].get("deletionTimestamp")
            ],
            mine,
        )
    versions = ctx.store.list("ManagedOSVersion")
    versions.sort(
        key=lambda v: ((v.get("spec") or {}).get("version") or "", v["metadata"]["name"]), reverse=True
    )
    return {
        "channels": ctx.store.list("ManagedOSVersionChannel"),
        "versions": versions,
        "images": images,
        "rollouts": rollouts,
    }


async def os_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    data = await _run(_os, request.app[CTX])
    return page(request, "os.html", status=status, badge=present.badge, error=error, **data)


async def rollout_create(request: web.Request) -> web.StreamResponse:
    form = {k: str(v) for k, v in (await request.post()).items()}
    ns = form.get("namespace") or forms.DEFAULT_NAMESPACE
    spec: dict[str, Any] = {"managedOSVersionName": form.get("version", "")}
    try:
        selector = forms.parse_pairs(form.get("selector", ""), "selector")
        if selector:
            spec["nodeSelector"] = {"matchLabels": selector}
        if form.get("concurrency", "").strip():
            spec["concurrency"] = int(form["concurrency"])
        obj = {
            "apiVersion": API_VERSION,
            "kind": "ManagedOSImage",
            "metadata": {"generateName": "upgrade-", "namespace": ns},
            "spec": spec,
        }
        await _run(request.app[CTX].store.create, forms.checked(obj, "ManagedOSImage"))
    except (forms.FormError, ValidationError, StoreError) as exc:
        return await os_page(request, str(exc), 422)
    except ValueError:
        return await os_page(request, "concurrency: must be a whole number", 422)
    raise see_other(PREFIX + "/os#images")


# ---- live updates ------------------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    assert session is not None
    hub = request.app[HUB]
    since = request.query.get("since", "")
    q = hub.subscribe(int(since) if since.isdigit() else None)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    try:
        await resp.write(b"retry: 2000\n: connected\n\n")
        while loop.time() < session.expires - _wall_offset(loop):
            try:
                msg = await asyncio.wait_for(q.get(), 10.0)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if msg is None:
                break
            await resp.write(sse(msg))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.unsubscribe(q)
    return resp


def _wall_offset(loop: asyncio.AbstractEventLoop) -> float:
    import time

    return time.time() - loop.time()
