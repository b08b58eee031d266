"""The operator's one HTTP(S) server: registration, seed images, agent plans, admin API.

Store calls are synchronous (SQLAlchemy); handlers run them in worker threads so a slow
write never stalls the event loop that also carries registration websockets.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import WSMsgType, web

from elemental_common import protocol as P
from elemental_common.consts import (
    PLAN_SECRET_AGENT_KEYS,
    PLAN_TYPE_ANNOTATION,
    SEEDIMAGE_ARTIFACT_ANNOTATION,
)
from elemental_operator.api import KindInfo, ValidationError, kinds, validate
from elemental_operator.api import patch as patches
from elemental_operator.context import OperatorContext
from elemental_operator.controllers.base import (
    plan_checksum,
    secret_get,
    set_condition,
)
from elemental_operator.controllers.seedimage import artifact_path, valid_artifact_ref
from elemental_operator.server import k8s_api
from elemental_operator.server.guard import Guard
from elemental_operator.server.wsmask import require_masked_frames
from elemental_operator.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    Resource,
    StorageFull,
    StoreError,
)
from elemental_operator.store.selector import matches, parse_label_selector

log = logging.getLogger("elemental_operator.server")

T = TypeVar("T")
CTX_KEY = web.AppKey("ctx", OperatorContext)
ADMIN_KEY = web.AppKey("admin_token", str)
STATE_KEY = web.AppKey("state_dir", Path)
# Largest request body (admin objects, agent status): a MachineInventory with Kubernetes' 256 KiB
# of annotations plus spec fits many times over. Bigger is 413 (aiohttp's client_max_size).
MAX_BODY = 4 << 20


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "message": message}
    return web.json_response({**body, "code": code}, status=code)


def _error(exc: Exception) -> web.Response:
    if isinstance(exc, BodyTooLarge):
        return _status(413, "RequestEntityTooLarge", str(exc))
    if isinstance(exc, StorageFull):
        return _status(507, "InsufficientStorage", str(exc))
    if isinstance(exc, ValidationError):
        return _status(422, "Invalid", str(exc))
    if isinstance(exc, patches.PatchError):
        return _status(422, "Invalid", str(exc))
    if isinstance(exc, UnsupportedPatch):
        return _status(415, "UnsupportedMediaType", str(exc))
    if isinstance(exc, BadQuery):
        return _status(400, "BadRequest", str(exc))
    if isinstance(exc, NotFound):
        return _status(404, "NotFound", str(exc))
    if isinstance(exc, AlreadyExists):
        return _status(409, "AlreadyExists", str(exc))
    if isinstance(exc, Conflict):
        return _status(409, "Conflict", str(exc))
    if type(exc).__name__ == "Gone":
        return _status(410, "Expired", str(exc))
    if isinstance(exc, StoreError):
        return _status(400, "BadRequest", str(exc))
    log.exception("internal error", exc_info=exc)
    return _status(500, "InternalError", f"{type(exc).__name__}: {exc}")


def _bearer(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


# ---- registration --------------------------------------------------------------------------


class WebSocketConn:
    """Binary-frame adapter the registration handler talks through (``recv``/``send``)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def recv(self) -> bytes:
        msg = await self.ws.receive()
        if msg.type == WSMsgType.BINARY:
            return bytes(msg.data)
        if msg.type == WSMsgType.TEXT:
            # The protocol is binary frames only (Elemental's server refuses text too).
            raise P.ProtocolError("text frames are refused: the registration protocol is binary")
        raise ConnectionError(f"websocket closed ({msg.type.name})")

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def close(self) -> None:
        await self.ws.close()


async def registration(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    token = request.match_info["token"]
    found = await _run(ctx.store.find_by_token, "MachineRegistration", token)
    ready = [
        r
        for r in found
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in r.get("status", {}).get("conditions", [])
        )
    ]
    if len(ready) != 1:
        return web.Response(status=404, text="MachineRegistration not found\n")
    reg = ready[0]
    try:
        from elemental_operator.registration import handler
    except ImportError as exc:
        return web.Response(status=503, text=f"registration handler not available: {exc}\n")
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse(max_msg_size=P.LIMITS["max-client-frame-bytes"])
        await ws.prepare(request)
        require_masked_frames(request)
        conn = WebSocketConn(ws)
        remote = request.remote or ""
        try:
            await handler.serve_registration(conn, request.headers.get("Authorization"), reg, ctx, remote)
        except Exception:
            log.exception("registration from %s failed", remote)
        finally:
            await ws.close()
        return ws
    data = await _run(handler.registration_file, reg, ctx)
    return web.Response(text=yaml.safe_dump(data, sort_keys=False), content_type="application/yaml")


# ---- seed images -----------------------------------------------------------------------------


async def seedimage(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    token, name = request.match_info["token"], request.match_info["file"]
    found = await _run(ctx.store.find_by_token, "SeedImage", token)
    if len(found) != 1:
        return web.Response(status=404, text="seed image not found\n")
    si = found[0]
    conds = (si.get("status") or {}).get("conditions") or []
    if not conds or any(c.get("status") != "True" for c in conds):
        return web.Response(status=404, text="seed image not ready\n")
    artifact = (si["metadata"].get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION, "")
    # Resolved and confined to this SeedImage's build directory, whatever wrote the annotation.
    path = await _run(artifact_path, request.app[STATE_KEY], str(artifact), name)
    if path is None:
        return web.Response(status=404, text="no such file\n")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})


# ---- agent -----------------------------------------------------------------------------------


async def _agent_inventory(request: web.Request) -> Resource | None:
    token = _bearer(request)
    if not token:
        return None
    return await _run(request.app[CTX_KEY].verify_agent_token, token)


async def agent_plan(request: web.Request) -> web.Response:
    inv = await _agent_inventory(request)
    if inv is None:
        return _status(401, "Unauthorized", "invalid agent credentials")
    meta = inv["metadata"]
    try:
        secret = await _run(request.app[CTX_KEY].store.get, "Secret", meta["namespace"], meta["name"])
    except NotFound:
        return _status(404, "NotFound", "no plan yet")
    plan = secret_get(secret, "plan")
    max_failures = secret_get(secret, "max-failures")
    return web.json_response(
        {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "planType": (secret["metadata"].get("annotations") or {}).get(PLAN_TYPE_ANNOTATION, ""),
            "plan": plan,
            "checksum": plan_checksum(plan.encode()),
            # 0 = no limit (rancher-system-agent's default when max-failures is unset)
            "maxFailures": int(max_failures) if max_failures.strip().isdigit() else 0,
            "appliedChecksum": secret_get(secret, "applied-checksum"),
        }
    )


def _retry_on_conflict(write: Callable[[], None], what: str, attempts: int = 10) -> None:
    """Re-read and re-apply a small change when a controller wrote the object in between."""
    for _ in range(attempts):
        try:
            write()
            return
        except Conflict:
            continue
    raise Conflict(f"{what} kept changing")


def _merge_plan_status(ctx: OperatorContext, inv: Resource, values: dict[str, str]) -> None:
    import base64

    meta = inv["metadata"]

    def write() -> None:
        secret = ctx.store.get("Secret", meta["namespace"], meta["name"])
        data = secret.setdefault("data", {})
        for key, value in values.items():
            data[key] = base64.b64encode(value.encode()).decode()
        ctx.store.update(secret)

    _retry_on_conflict(write, "plan secret")


async def agent_plan_status(request: web.Request) -> web.Response:
    inv = await _agent_inventory(request)
    if inv is None:
        return _status(401, "Unauthorized", "invalid agent credentials")
    try:
        body = await request.json()
    except ValueError:
        return _status(400, "BadRequest", "body must be JSON")
    if not isinstance(body, dict):
        return _status(400, "BadRequest", "body must be a JSON object")
    unknown = sorted(set(body) - PLAN_SECRET_AGENT_KEYS)
    if unknown:
        return _status(422, "Invalid", f"unknown keys: {', '.join(unknown)}")
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items() if v is not None}
    try:
        await _run(_merge_plan_status, request.app[CTX_KEY], inv, values)
    except Exception as exc:
        return _error(exc)
    return web.json_response({"status": "ok"})


def _reason(stage: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", stage)
    reason = "".join(w[:1].upper() + w[1:] for w in words if w)
    return reason if reason[:1].isalpha() else "Stage" + reason


def _record_progress(ctx: OperatorContext, inv: Resource, stage: str, percent: float, message: str) -> None:
    meta = inv["metadata"]
    failed = stage.lower() in ("failed", "failure", "error")
    status = "False" if failed else ("True" if percent >= 100 else "Unknown")
    text = f"{stage}: {percent:g}%" + (f" {message}" if message else "")

    def write() -> None:
        cur = ctx.store.get("MachineInventory", meta["namespace"], meta["name"])
        set_condition(cur, "InstallProgress", status, _reason(stage) or "Unknown", text[:32000])
        ctx.store.update_status(cur)

    _retry_on_conflict(write, "inventory")


async def agent_progress(request: web.Request) -> web.Response:
    inv = await _agent_inventory(request)
    if inv is None:
        return _status(401, "Unauthorized", "invalid agent credentials")
    try:
        body = await request.json()
        stage = str(body["stage"])
        percent = float(body.get("percent") or 0)
        message = str(body.get("message") or "")
    except (ValueError, KeyError, TypeError):
        return _status(400, "BadRequest", 'body must be JSON {"stage", "percent", "message"}')
    try:
        await _run(_record_progress, request.app[CTX_KEY], inv, stage, percent, message)
    except Exception as exc:
        return _error(exc)
    return web.json_response({"status": "ok"})


# ---- admin REST API --------------------------------------------------------------------------


def _kind_for(plural: str) -> KindInfo:
    for info in kinds().values():
        if info.plural == plural:
            return info
    raise web.HTTPNotFound(text=json.dumps({"kind": "Status", "message": f"unknown resource {plural}"}))


@web.middleware
async def admin_auth(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    if request.path.startswith("/elemental/admin/"):
        token = _bearer(request)
        if not token or not hmac.compare_digest(token.encode(), request.app[ADMIN_KEY].encode()):
            return _status(401, "Unauthorized", "admin bearer token required")
    result: web.StreamResponse = await handler(request)
    return result


def _list_object(info: KindInfo, items: list[Resource], rv: int) -> dict[str, Any]:
    return {
        "apiVersion": info.api_version,
        "kind": info.kind + "List",
        "metadata": {"resourceVersion": str(rv)},
        "items": items,
    }


async def admin_discovery(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "resources": [
                {
                    "kind": i.kind,
                    "apiVersion": i.api_version,
                    "plural": i.plural,
                    "singular": i.singular,
                    "shortNames": list(i.short_names),
                    "namespaced": i.namespaced,
                    "printerColumns": i.printer_columns,
                }
                for i in kinds().values()
            ]
        }
    )


async def admin_list(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    info = _kind_for(request.match_info["plural"])
    ns = request.match_info.get("namespace")
    try:
        selector = parse_label_selector(request.query.get("labelSelector", ""))
        if request.query.get("watch") in ("1", "true"):
            return await _admin_watch(request, info, ns, selector)
        items, rv = await _run(ctx.store.list_with_version, info.kind, ns, selector or None)
    except Exception as exc:
        return _error(exc)
    return web.json_response(_list_object(info, items, rv))


async def _admin_watch(
    request: web.Request, info: KindInfo, ns: str | None, selector: dict[str, Any]
) -> web.StreamResponse:
    """Newline-delimited JSON events ({"type", "object"}), as ``kubectl get -w`` consumes them."""
    ctx = request.app[CTX_KEY]
    timeout = float(request.query.get("timeoutSeconds", "0") or 0)
    since_q = request.query.get("resourceVersion", "")
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    if since_q and since_q != "0":
        since = int(since_q)
    else:
        # Like Kubernetes with resourceVersion unset: current objects first, as ADDED.
        items, since = await _run(ctx.store.list_with_version, info.kind, ns, selector or None)
        for obj in items:
            await resp.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None

    def batch(after: int) -> list[Any]:
        out = []
        for ev in ctx.store.watch((info.kind,), since=after, timeout=0):
            out.append(ev)
            if len(out) >= 500:
                break
        return out

    try:
        while deadline is None or loop.time() < deadline:
            try:
                events = await _run(batch, since)
            except StoreError as exc:
                # Like Kubernetes: an ERROR event carrying a Status (410 when the log moved on).
                status = json.loads(_error(exc).text or "{}")
                await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                break
            for ev in events:
                since = ev.resource_version
                meta = ev.object["metadata"]
                if ns and meta.get("namespace") != ns:
                    continue
                if selector and not matches(selector, meta.get("labels")):
                    continue
                await resp.write(json.dumps({"type": ev.type, "object": ev.object}).encode() + b"\n")
            if not events:
                # A client that went away is only noticed on a write: check, or an idle watch
                # would hold its connection (and the server's shutdown) forever.
                if request.transport is None or request.transport.is_closing():
                    return resp
                await asyncio.sleep(0.2)
    except (ConnectionResetError, asyncio.CancelledError):
        return resp
    await resp.write_eof()
    return resp


class BodyTooLarge(Exception):
    """Request body over MAX_BODY: 413."""


class UnsupportedPatch(Exception):
    """A PATCH whose Content-Type is none of the patch types: 415, as the API server answers."""


class BadQuery(Exception):
    """A ``dryRun`` other than ``All`` or a ``fieldValidation`` other than Strict/Warn/Ignore: 400."""


def _dry_run(request: web.Request) -> bool:
    """``?dryRun=All``: the request runs every check (schema, existence, resourceVersion) and answers
    with the object it would store, and nothing is written (the Kubernetes API server's dry run)."""
    values = request.query.getall("dryRun", [])
    if any(v != "All" for v in values):
        raise BadQuery(f'dryRun: Unsupported value: {values[0]!r}: supported values: "All"')
    return bool(values)


FIELD_VALIDATION = ("Strict", "Warn", "Ignore")


class Lenient:
    """``?fieldValidation=``: ``Strict`` (our default, and kubectl's) refuses unknown fields;
    ``Warn`` drops them and names each in a ``Warning`` header, ``Ignore`` drops them silently —
    the API server's three modes (its own default without the parameter is Warn)."""

    def __init__(self, request: web.Request) -> None:
        self.mode = request.query.get("fieldValidation", "Strict")
        if self.mode not in FIELD_VALIDATION:
            raise BadQuery(
                f'fieldValidation: Unsupported value: "{self.mode}": '
                'supported values: "Ignore", "Strict", "Warn"'
            )
        self.warnings: list[str] = []

    def __call__(self, obj: Resource) -> Resource:
        if self.mode == "Strict":
            return obj
        pruned: list[str] = []
        out = validate(obj, pruned)
        if self.mode == "Warn":
            self.warnings += [f'unknown field "{path}"' for path in pruned]
        return out

    def response(self, body: Any, status: int = 200) -> web.Response:
        resp = web.json_response(body, status=status)
        for text in self.warnings:  # RFC 7234's form, as the API server sends them
            resp.headers.add("Warning", "299 - " + json.dumps(text))
        return resp


def _write(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a store write, rolled back when the request is a dry run (in the worker thread)."""
    if not _dry_run(request):
        return fn(*args)
    with request.app[CTX_KEY].store.dry_run():
        return fn(*args)


def _parse_body(raw: bytes) -> Any:
    """JSON, else YAML without aliases. Runs in a worker thread: a big body must not stall the
    event loop (issue 11: a 48 MB body stopped /healthz for 15 s)."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        pass
    try:
        text = raw.decode("utf-8")
        # An alias is a pointer: a 517-byte "billion laughs" expanded to a 33.6 MB object. The
        # Kubernetes API server bounds them; manifests do not need them, so they are refused.
        # Events come from libyaml's parser without building anything, so this scan is cheap.
        for event in yaml.parse(text, Loader=P._Loader):
            if isinstance(event, yaml.AliasEvent):
                raise ValidationError("YAML aliases (*name) are not accepted")
        return yaml.load(text, Loader=P._Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValidationError(f"body is neither JSON nor YAML: {exc}") from None


async def _body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds {MAX_BODY}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {MAX_BODY} bytes") from None
    return await _run(_parse_body, raw)


def _checked_object(obj: Any, info: KindInfo) -> dict[str, Any]:
    """Top-level shape of an admin body; the store validates the rest against the schema."""
    if not isinstance(obj, dict):
        raise ValidationError("body must be an object")
    obj.setdefault("apiVersion", info.api_version)
    obj.setdefault("kind", info.kind)
    if obj["kind"] != info.kind:
        raise ValidationError(f"kind: {obj['kind']} posted to {info.plural}")
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise ValidationError("metadata: must be an object")
    for key in ("name", "namespace", "generateName"):
        if key in meta and not isinstance(meta[key], str):
            raise ValidationError(f"metadata.{key}: must be a string")
    for key in ("labels", "annotations"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ValidationError(f"metadata.{key}: must be a map of strings")
    if info.kind == "SeedImage":
        ref = (meta.get("annotations") or {}).get(SEEDIMAGE_ARTIFACT_ANNOTATION)
        if ref is not None and not valid_artifact_ref(str(ref)):
            raise ValidationError(
                f"metadata.annotations.{SEEDIMAGE_ARTIFACT_ANNOTATION}: invalid artifact {ref!r}"
            )
    return obj


async def admin_create(request: web.Request) -> web.Response:
    ctx = request.app[CTX_KEY]
    info = _kind_for(request.match_info["plural"])
    try:
        lenient = Lenient(request)
        obj = _checked_object(await _body(request), info)
        # Like Kubernetes with a status subresource: status is written only through /status.
        obj.pop("status", None)
        meta = obj["metadata"]
        ns = request.match_info.get("namespace")
        if ns and meta.get("namespace", ns) != ns:
            raise ValidationError("metadata.namespace: does not match the request path")
        if ns:
            meta["namespace"] = ns
        created = await _run(_write, request, ctx.store.create, await _run(lenient, obj))
    except AlreadyExists:  # the API server's words: resource.group "name"
        group = f".{info.api_version.split('/')[0]}" if "/" in info.api_version else ""
        return _status(
            409, "AlreadyExists", f'{info.plural}{group} "{obj["metadata"].get("name")}" already exists'
        )
    except Exception as exc:
        return _error(exc)
    return lenient.response(created, status=201)


async def admin_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX_KEY]
    info = _kind_for(request.match_info["plural"])
    try:
        obj = await _run(
            ctx.store.get, info.kind, request.match_info.get("namespace", ""), request.match_info["name"]
        )
    except Exception as exc:
        return _error(exc)
    return web.json_response(obj)


async def admin_update(request: web.Request) -> web.Response:
    ctx = request.app[CTX_KEY]
    info = _kind_for(request.match_info["plural"])
    status_only = request.path.endswith("/status")
    try:
        lenient = Lenient(request)
        obj = _checked_object(await _body(request), info)
        if not status_only:
            obj.pop("status", None)  # the store keeps the current status on a main-resource update
        meta = obj["metadata"]
        if meta.get("name", request.match_info["name"]) != request.match_info["name"]:
            raise ValidationError("metadata.name: does not match the request path")
        meta["name"] = request.match_info["name"]
        if request.match_info.get("namespace"):
            meta["namespace"] = request.match_info["namespace"]
        fn = ctx.store.update_status if status_only else ctx.store.update
        out = await _run(_write, request, fn, await _run(lenient, obj))
    except Exception as exc:
        return _error(exc)
    return lenient.response(out)


PATCH_TYPES = {v: k for k, v in patches.CONTENT_TYPES.items()}
PATCH_RETRIES = 5


def _patched(
    store: Any, info: KindInfo, ns: str, name: str, kind: str, body: Any, status_only: bool, lenient: Lenient
) -> Any:
    """Apply a patch to the stored object and write it with the resourceVersion it was read at;
    a concurrent write (409) re-reads and re-applies, unless the patch itself names a
    resourceVersion (then the 409 is the answer, as in Kubernetes)."""
    pinned = isinstance(body, dict) and "resourceVersion" in (body.get("metadata") or {})
    for attempt in range(PATCH_RETRIES):
        cur = store.get(info.kind, ns, name)
        new = patches.apply(kind, cur, body)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise ValidationError("metadata: must be an object")
        for key in ("name", "namespace"):
            if meta.get(key, cur["metadata"].get(key)) != cur["metadata"].get(key):
                raise ValidationError(f"metadata.{key}: a patch cannot change it")
        if not pinned:
            meta["resourceVersion"] = cur["metadata"].get("resourceVersion")
        lenient.warnings.clear()  # a retry re-applies the patch: its warnings, once
        new = lenient(new)
        try:
            return (store.update_status if status_only else store.update)(new)
        except Conflict:
            if pinned or attempt == PATCH_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


async def admin_patch(request: web.Request) -> web.Response:
    """PATCH as the Kubernetes API server takes it: ``application/merge-patch+json`` (RFC 7386),
    ``application/json-patch+json`` (RFC 6902) and ``application/strategic-merge-patch+json`` (which
    Kubernetes refuses for custom resources; here a merge whose condition lists merge by type)."""
    ctx = request.app[CTX_KEY]
    info = _kind_for(request.match_info["plural"])
    status_only = request.path.endswith("/status")
    try:
        lenient = Lenient(request)
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        kind = PATCH_TYPES.get(ctype)
        if kind is None:
            raise UnsupportedPatch(
                f"the body of the request was in an unknown format ({ctype or 'none'}) - accepted media "
                f"types include: {', '.join(patches.CONTENT_TYPES.values())}"
            )
        body = await _body(request)
        ns = request.match_info.get("namespace", "")
        name = request.match_info["name"]
        out = await _run(
            _write, request, _patched, ctx.store, info, ns, name, kind, body, status_only, lenient
        )
    except Exception as exc:
        return _error(exc)
    return lenient.response(out)


async def admin_delete(request: web.Request) -> web.Response:
    ctx = request.app[CTX_KEY]
    info = _kind_for(request.match_info["plural"])
    try:
        out = await _run(
            _write,
            request,
            ctx.store.delete,
            info.kind,
            request.match_info.get("namespace", ""),
            request.match_info["name"],
        )
    except Exception as exc:
        return _error(exc)
    if out is None:
        return web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200})
    return web.json_response(out, status=202)


async def healthz(request: web.Request) -> web.Response:
    health = getattr(request.app[CTX_KEY].store, "health", None)
    reason = await _run(health) if health is not None else None
    if reason:
        return web.Response(status=503, text=f"unhealthy: {reason}\n")
    return web.Response(text="ok\n")


async def unknown_api(request: web.Request) -> web.Response:
    # Elemental answers unknown /elemental/{api} with 400.
    return web.Response(status=400, text=f"unknown API {request.match_info.get('api', '')}\n")


def make_app(
    ctx: OperatorContext, admin_token: str, state_dir: Path, conn_guard: Guard | None = None
) -> web.Application:
    middlewares: list[Any] = [admin_auth]
    if conn_guard is not None:
        middlewares.insert(0, conn_guard.middleware())
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[CTX_KEY] = ctx
    app[ADMIN_KEY] = admin_token
    app[STATE_KEY] = Path(state_dir)
    admin = "/elemental/admin/v1"
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/elemental/registration/{token}", registration),
            web.get("/elemental/seedimage/{token}/{file}", seedimage),
            web.get("/elemental/agent/v1/plan", agent_plan),
            web.post("/elemental/agent/v1/plan/status", agent_plan_status),
            web.post("/elemental/agent/v1/progress", agent_progress),
            web.get(admin, admin_discovery),
            web.get(admin + "/{plural}", admin_list),
            web.get(admin + "/namespaces/{namespace}/{plural}", admin_list),
            web.post(admin + "/namespaces/{namespace}/{plural}", admin_create),
            web.get(admin + "/namespaces/{namespace}/{plural}/{name}", admin_get),
            web.put(admin + "/namespaces/{namespace}/{plural}/{name}", admin_update),
            web.put(admin + "/namespaces/{namespace}/{plural}/{name}/status", admin_update),
            web.patch(admin + "/namespaces/{namespace}/{plural}/{name}", admin_patch),
            web.patch(admin + "/namespaces/{namespace}/{plural}/{name}/status", admin_patch),
            web.delete(admin + "/namespaces/{namespace}/{plural}/{name}", admin_delete),
            # install progress beside the Secret API, for a system-agent url of <url>/k8s/clusters/local
            web.post(k8s_api.PREFIX + "/elemental/agent/v1/progress", agent_progress),
            *k8s_api.routes(CTX_KEY),  # rancher-system-agent's plan Secret API
            web.route("*", "/elemental/{api}/{tail:.*}", unknown_api),
        ]
    )
    from elemental_operator.dashboard import mount as mount_dashboard  # browser UI at /dashboard/

    mount_dashboard(app)
    return app
