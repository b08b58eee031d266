"""Each machine's plan Secret under ``/k8s/clusters/local``, in the Kubernetes core/v1 API shape.

rancher-system-agent (pkg/k8splan) reaches its plan through a kubeconfig whose server is the
operator's ``<url>/k8s/clusters/local``: it GETs ``/version``, lists and watches ``secrets`` in
its namespace with ``fieldSelector=metadata.name=<secret>``, and PUTs the Secret back with its
keys. This module serves exactly that subset, authorised by the machine's bearer token
(``OperatorContext.verify_agent_token``) for its own Secret only. Writes go to the same store
object the plan endpoint and the MachineInventory controller read, so applied-checksum et al.
reach the inventory's plan status the same way whichever agent wrote them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from elemental_common.consts import K8S_API_PREFIX, PLAN_SECRET_AGENT_KEYS
from elemental_operator.context import OperatorContext
from elemental_operator.store.base import Conflict, NotFound, Resource, StoreError

log = logging.getLogger("elemental_operator.server.k8s")

PREFIX = K8S_API_PREFIX

# The keys the machine's agent may write (elemental_common.consts): every other key is the operator's.
AGENT_KEYS = PLAN_SECRET_AGENT_KEYS
MAX_SECRET_DATA = 1 << 20  # Kubernetes' limit on a Secret's data
WATCH_POLL = 1.0  # seconds between change-log polls of an idle watch (one per machine)
DEFAULT_WATCH_TIMEOUT = 1800.0  # the API server ends watches after 30-60 min; clients re-list

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status(code: int, reason: str, message: str, name: str = "") -> web.Response:
    """A metav1.Status, as the API server answers every error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name:
        body["details"] = {"name": name, "kind": "secrets"}
    return web.json_response(body, status=code)


def _forbidden(inv: Resource, verb: str, ns: str, name: str = "") -> web.Response:
    meta = inv["metadata"]
    who = f"system:serviceaccount:{meta['namespace']}:{meta['name']}"
    what = f'secrets "{name}" is forbidden' if name else "secrets is forbidden"
    return status(
        403,
        "Forbidden",
        f'{what}: User "{who}" cannot {verb} resource "secrets" in API group "" in the namespace "{ns}"',
        name,
    )


def _own_secret(inv: Resource) -> tuple[str, str]:
    """(namespace, name) of the one Secret this machine may touch: its plan Secret."""
    meta = inv["metadata"]
    ref = ((inv.get("status") or {}).get("plan") or {}).get("secretRef") or {}
    return str(ref.get("namespace") or meta["namespace"]), str(ref.get("name") or meta["name"])


def _field_selector(raw: str) -> dict[str, str]:
    """``metadata.name=x,metadata.namespace=y`` -> {field: value}; ValueError for the rest."""
    out: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in raw.split(","))):
        if "!=" in term:
            raise ValueError(f"unsupported field selector operator in {term!r}")
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep or key.strip() not in ("metadata.name", "metadata.namespace", "type"):
            raise ValueError(
                f'"{key.strip()}" is not a known field selector: only "metadata.name", '
                '"metadata.namespace", "type"'
            )
        out[key.strip()] = value.strip()
    return out


def _decode_data(data: Any) -> dict[str, bytes]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("data must be a map of key to base64 value")
    out = {}
    for key, value in data.items():
        if value is None:
            # Go marshals a nil []byte as null (rancher-system-agent's applied-periodic-output
            # when a plan has no periodic instructions): the API server reads it as empty.
            out[str(key)] = b""
            continue
        if not isinstance(value, str):
            raise ValueError(f"data[{key}]: must be a base64 string")
        try:
            out[str(key)] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"data[{key}]: illegal base64 data: {e}") from e
    return out


def _merged(current: Resource, body: dict[str, Any]) -> Resource:
    """The stored Secret with the agent's keys from ``body``. PermissionError when the body
    changes something that is the operator's; ValueError when it is malformed."""
    data = _decode_data(body.get("data"))
    string_data = body.get("stringData") or {}
    if not isinstance(string_data, dict):
        raise ValueError("stringData must be a map of key to string")
    # As the API server does: stringData is merged over data on write.
    data.update({str(k): str(v).encode() for k, v in string_data.items()})
    if sum(len(v) for v in data.values()) > MAX_SECRET_DATA:
        raise ValueError(f"Too long: must have at most {MAX_SECRET_DATA} bytes")
    stored = _decode_data(current.get("data"))
    for key in sorted(set(stored) | set(data)):
        if key not in AGENT_KEYS and stored.get(key) != data.get(key):
            raise PermissionError(f'data key "{key}" is written by the operator, not by the agent')
    if body.get("type", current.get("type")) != current.get("type"):
        raise ValueError("type: field is immutable")
    cmeta, bmeta = current["metadata"], body.get("metadata") or {}
    # labels and annotations (the plan type) are the operator's; the rest of metadata is kept
    # from the stored object whatever the body says (a Go client drops fields it has no type for).
    for key in ("labels", "annotations"):
        if bmeta.get(key) and bmeta[key] != (cmeta.get(key) or {}):
            raise PermissionError(f"metadata.{key} is the operator's, not the agent's")
    out = {**current, "metadata": {**cmeta, "resourceVersion": cmeta["resourceVersion"]}}
    kept = {k: v for k, v in stored.items() if k not in AGENT_KEYS}
    kept.update({k: v for k, v in data.items() if k in AGENT_KEYS})
    out["data"] = {k: base64.b64encode(v).decode() for k, v in sorted(kept.items())}
    return out


def routes(ctx_key: web.AppKey[OperatorContext]) -> list[web.RouteDef]:
    """The routes to register on the operator's app (``ctx_key`` finds the OperatorContext)."""

    async def caller(request: web.Request) -> Resource | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token:
            return None
        return await asyncio.to_thread(request.app[ctx_key].verify_agent_token, token)

    def authenticated(handler: Callable[[web.Request, Resource], Awaitable[web.StreamResponse]]) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            inv = await caller(request)
            if inv is None:
                # The API server answers an unknown bearer token with 401, before authorisation.
                return status(401, "Unauthorized", "Unauthorized")
            return await handler(request, inv)

        return wrapped

    async def version(request: web.Request, inv: Resource) -> web.StreamResponse:
        # rancher-system-agent's validateKC GETs /version before anything else.
        return web.json_response(
            {"major": "1", "minor": "31", "gitVersion": "v1.31.0-elemental", "platform": "linux/amd64"}
        )

    async def api_versions(request: web.Request, inv: Resource) -> web.StreamResponse:
        return web.json_response(
            {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        )

    async def api_groups(request: web.Request, inv: Resource) -> web.StreamResponse:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(request: web.Request, inv: Resource) -> web.StreamResponse:
        # Discovery (client-go's REST mapper): only secrets, with the verbs a machine has.
        secrets = {
            "name": "secrets",
            "singularName": "secret",
            "namespaced": True,
            "kind": "Secret",
            "verbs": ["get", "list", "update", "watch"],
        }
        return web.json_response(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": [secrets]}
        )

    async def get_secret(request: web.Request, inv: Resource) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if (ns, name) != _own_secret(inv):
            return _forbidden(inv, "get", ns, name)
        try:
            return web.json_response(
                await asyncio.to_thread(request.app[ctx_key].store.get, "Secret", ns, name)
            )
        except NotFound:
            return status(404, "NotFound", f'secrets "{name}" not found', name)

    async def list_secrets(request: web.Request, inv: Resource) -> web.StreamResponse:
        ns = request.match_info["namespace"]
        watching = request.query.get("watch", "").lower() in ("true", "1")
        verb = "watch" if watching else "list"
        try:
            fields = _field_selector(request.query.get("fieldSelector", ""))
        except ValueError as e:
            return status(400, "BadRequest", f"unable to parse requirement: {e}")
        own_ns, own_name = _own_secret(inv)
        # Like RBAC with resourceNames: a list or watch is allowed only when the field selector
        # names the one Secret the machine may read.
        if ns != own_ns or fields.get("metadata.name") != own_name:
            return _forbidden(inv, verb, ns)
        if fields.get("metadata.namespace", ns) != ns:
            return _list_reply([], await _current_version(request))
        if watching:
            return await _watch(request, ns, own_name, fields.get("type"))
        store = request.app[ctx_key].store

        def read() -> tuple[list[Resource], int]:
            items, rv = store.list_with_version("Secret", ns)
            return [s for s in items if _selected(s, own_name, fields.get("type"))], rv

        items, rv = await asyncio.to_thread(read)
        return _list_reply(items, rv)

    async def _current_version(request: web.Request) -> int:
        return await asyncio.to_thread(request.app[ctx_key].store.current_version)

    def _list_reply(items: list[Resource], rv: int) -> web.Response:
        return web.json_response(
            {
                "kind": "SecretList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
        )

    def _selected(secret: Resource, name: str, type_: str | None) -> bool:
        return secret["metadata"]["name"] == name and (type_ is None or secret.get("type") == type_)

    async def _watch(request: web.Request, ns: str, name: str, type_: str | None) -> web.StreamResponse:
        """Newline-delimited JSON watch events ({"type", "object"}), as the API server streams."""
        store = request.app[ctx_key].store
        try:
            timeout = float(request.query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
            since_q = request.query.get("resourceVersion", "")
            start = int(since_q) if since_q not in ("", "0") else None
        except ValueError:
            return status(400, "BadRequest", "resourceVersion and timeoutSeconds must be integers")
        resp = web.StreamResponse(
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        )
        await resp.prepare(request)

        async def send(kind: str, obj: Resource) -> None:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        since = start or 0
        if start is None:
            # resourceVersion unset or "0": the current state first, as ADDED (the API server's
            # "get state and start at most recent").
            def initial() -> tuple[list[Resource], int]:
                items, rv = store.list_with_version("Secret", ns)
                return [s for s in items if _selected(s, name, type_)], rv

            items, since = await asyncio.to_thread(initial)
            for obj in items:
                await send("ADDED", obj)

        def batch(after: int) -> list[Any]:
            out = []
            for ev in store.watch(("Secret",), since=after, timeout=0):
                out.append(ev)
                if len(out) >= 500:
                    break
            return out

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while loop.time() < deadline:
                try:
                    events = await asyncio.to_thread(batch, since)
                except StoreError as exc:
                    # The log moved past the client's resourceVersion: 410 Expired, as an ERROR
                    # event, which makes reflectors re-list.
                    code, reason = (
                        (410, "Expired") if type(exc).__name__ == "Gone" else (500, "InternalError")
                    )
                    body = json.loads(status(code, reason, str(exc)).text or "{}")
                    await resp.write(json.dumps({"type": "ERROR", "object": body}).encode() + b"\n")
                    break
                for ev in events:
                    since = ev.resource_version
                    meta = ev.object["metadata"]
                    if meta.get("namespace") == ns and _selected(ev.object, name, type_):
                        await send(ev.type, ev.object)
                if not events:
                    if request.transport is None or request.transport.is_closing():
                        return resp
                    await asyncio.sleep(min(WATCH_POLL, max(deadline - loop.time(), 0)))
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        await resp.write_eof()
        return resp

    async def update_secret(request: web.Request, inv: Resource) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        if (ns, name) != _own_secret(inv):
            return _forbidden(inv, "update", ns, name)
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if ctype not in ("application/json", ""):
            return status(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}"
            )
        try:
            body = json.loads(await request.read())
        except ValueError:
            return status(400, "BadRequest", "the body of the request is not JSON")
        # a typed Go client may leave TypeMeta empty: kind "" is a Secret here
        if not isinstance(body, dict) or (body.get("kind") or "Secret") != "Secret":
            return status(400, "BadRequest", "the body of the request must be a v1 Secret")
        bmeta = body.get("metadata") or {}
        if bmeta.get("name", name) != name:
            return status(
                400,
                "BadRequest",
                f"the name of the object ({bmeta.get('name')}) does not match the name on the URL ({name})",
            )
        if bmeta.get("namespace", ns) != ns:
            return status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        store = request.app[ctx_key].store

        def write() -> Resource:
            current = store.get("Secret", ns, name)
            cmeta = current["metadata"]
            want_rv, want_uid = str(bmeta.get("resourceVersion") or ""), str(bmeta.get("uid") or "")
            if want_uid and want_uid != cmeta.get("uid"):
                raise Conflict(
                    f"Precondition failed: UID in precondition: {want_uid}, "
                    f"UID in object meta: {cmeta.get('uid')}"
                )
            if want_rv and want_rv != cmeta["resourceVersion"]:
                raise Conflict(
                    f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                )
            return store.update(_merged(current, body))

        try:
            return web.json_response(await asyncio.to_thread(write))
        except NotFound:
            return status(404, "NotFound", f'secrets "{name}" not found', name)
        except Conflict as e:
            msg = str(e)
            if "the object has been modified" not in msg and "Precondition" not in msg:
                msg = (
                    f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again"
                )
            return status(409, "Conflict", msg, name)
        except PermissionError as e:
            return status(403, "Forbidden", f'secrets "{name}" is forbidden: {e}', name)
        except ValueError as e:
            return status(422, "Invalid", f'Secret "{name}" is invalid: {e}', name)
        except StoreError as e:
            return status(500, "InternalError", str(e), name)

    async def refused(request: web.Request, inv: Resource) -> web.StreamResponse:
        # Whatever else a machine asks for: it has no rights there (create, delete, patch, other
        # resources), as RBAC would answer; unknown paths are 404.
        ns = request.match_info.get("namespace", "")
        if ns and request.match_info.get("resource") == "secrets":
            verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(
                request.method, request.method.lower()
            )
            return _forbidden(inv, verb, ns, request.match_info.get("name", ""))
        return status(404, "NotFound", "the server could not find the requested resource")

    def api(prefix: str) -> list[web.RouteDef]:
        secret_path = prefix + "/api/v1/namespaces/{namespace}/secrets"
        return [
            web.get(prefix + "/version", authenticated(version)),
            web.get(prefix + "/api", authenticated(api_versions)),
            web.get(prefix + "/apis", authenticated(api_groups)),
            web.get(prefix + "/api/v1", authenticated(api_v1)),
            web.get(secret_path, authenticated(list_secrets)),
            web.get(secret_path + "/{name}", authenticated(get_secret)),
            web.put(secret_path + "/{name}", authenticated(update_secret)),
            web.route("*", prefix + "/api/v1/namespaces/{namespace}/{resource}", authenticated(refused)),
            web.route(
                "*", prefix + "/api/v1/namespaces/{namespace}/{resource}/{name}", authenticated(refused)
            ),
        ]

    # Under /k8s/clusters/local as upstream's Config names it; and at the root too, because our
    # Config still sends system-agent.url = <url>, so Elemental's register client writes a
    # kubeconfig whose server is the bare URL. No catch-all at the root: other paths keep their
    # answers.
    return [*api(PREFIX), web.route("*", PREFIX + "/{tail:.*}", authenticated(refused)), *api("")]
