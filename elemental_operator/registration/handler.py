"""Registration endpoint logic: the registration file (plain GET) and the websocket session.

The HTTP layer looks the MachineRegistration up by token and calls:

* ``registration_file(registration, ctx)`` for a plain GET (raises ``RegistrationNotReady``
  → 404), serialised as YAML;
* ``await serve_registration(conn, authorization, registration, ctx, remote_ip)`` after the
  websocket upgrade. It never raises for anything the peer sends: protocol errors are
  answered with an ``Error`` frame and the function returns; the caller then closes.

The MachineInventory is written exactly once per session, at ``Get``, in one store
transaction (look the machine up, create or update), so a session that breaks off midway
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from elemental_common import attestation
from elemental_common import protocol as P
from elemental_common.consts import K8S_API_PREFIX, LABEL_PREFIX
from elemental_operator.api import API_VERSION, ValidationError
from elemental_operator.context import OperatorContext
from elemental_operator.registration.templater import (
    MAX_NAME_LEN,
    TemplateError,
    Templater,
    ValueNotFound,
    default_machine_name,
    is_random_template,
    sanitize_label_value,
    sanitize_machine_name,
)
from elemental_operator.store.base import AlreadyExists, Conflict, NotFound, Resource, StoreError

log = logging.getLogger(__name__)

RESETTABLE = LABEL_PREFIX + "resettable"
UNMANAGED = LABEL_PREFIX + "os.unmanaged"
# Go's html.EscapeString, applied to client-sent annotation keys and values.
_HTML_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&#39;", '"': "&#34;"})
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Bounds a session independently of the deadline (a normal one has < 10 messages).
MAX_MESSAGES = 64
COMMIT_RETRIES = 5
NAME_CONFLICT_RETRIES = 3
NAME_CONFLICT = LABEL_PREFIX + "name-conflict"


class RegistrationNotReady(LookupError):
    """The registration has no URL or is not Ready: answer 404."""


class RegistrationFailed(Exception):
    """Ends the session with an Error frame carrying this message."""


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def is_ready(registration: Resource) -> bool:
    for cond in _get(registration, "status", "conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def registration_url(registration: Resource, ctx: OperatorContext) -> str:
    url = _get(registration, "status", "registrationURL")
    if url:
        return str(url)
    token = _get(registration, "status", "registrationToken")
    return f"{ctx.public_url}/elemental/registration/{token}" if token else ""


def client_registration_config(registration: Resource, ctx: OperatorContext) -> dict[str, Any]:
    """``elemental.registration`` as clients get it (Go's GetClientRegistrationConfig).

    Client-only settings (no-toolkit, labels) are dropped; false/zero values are omitted like
    Go's ``omitempty``.
    """
    if not is_ready(registration):
        raise RegistrationNotReady("registration is not ready")
    url = registration_url(registration, ctx)
    if not url:
        raise RegistrationNotReady("registration has no URL")
    reg = _get(registration, "spec", "config", "elemental", "registration") or {}
    out: dict[str, Any] = {"url": url}
    if ctx.ca_cert_pem:
        out["ca-cert"] = ctx.ca_cert_pem
    if reg.get("emulate-tpm"):
        out["emulate-tpm"] = True
    if reg.get("emulated-tpm-seed"):
        out["emulated-tpm-seed"] = int(reg["emulated-tpm-seed"])
    if reg.get("no-smbios"):
        out["no-smbios"] = True
    out["auth"] = reg.get("auth") or "tpm"
    return out


def registration_file(registration: Resource, ctx: OperatorContext) -> dict[str, Any]:
    """The YAML served on a plain GET of the registration URL (the seed image's registration)."""
    return {"elemental": {"registration": client_registration_config(registration, ctx)}}


def label_prefix(registration: Resource) -> str:
    prefix = _get(registration, "spec", "labelPrefix") or ""
    if prefix == "":
        return LABEL_PREFIX
    if prefix == "-":
        return ""
    return f"{prefix}/"


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(_LABEL_NAME.match(name))


def _html_escape(value: str) -> str:
    return value.translate(_HTML_ESCAPES)


@dataclass
class _Identity:
    auth: str  # "tpm" | "plain"
    tpm_hash: str = ""
    machine_hash: str = ""

    def find(self, ctx: OperatorContext) -> Resource | None:
        return ctx.store.find_inventory_by_hash(**self.hashes())

    def hashes(self) -> dict[str, str | None]:
        if self.tpm_hash:
            return {"tpm_hash": self.tpm_hash}
        return {"machine_hash": self.machine_hash}


@dataclass
class _Prepared:
    """Everything a session derives from client data, computed before the store transaction
    opens: inside it only dict merges run (issue 11: templating a 4 MB label inside the write
    transaction held SQLite's write lock for minutes)."""

    name: str
    # key -> (value, sticky): a sticky (Random) value never replaces one already stored.
    client_labels: dict[str, tuple[str, bool]]
    client_annotations: dict[str, str]
    reg_labels: dict[str, tuple[str, bool]]
    reg_annotations: dict[str, tuple[str, bool]]
    unmanaged: bool
    resettable: bool
    # The name another machine's inventory already had (see _Session.commit).
    name_conflict: str = ""


@dataclass
class _Session:
    registration: Resource
    ctx: OperatorContext
    identity: _Identity
    # Set when the client sent Update: its inventory must still exist at Get.
    updating: bool = False
    templater: Templater = field(default_factory=Templater)
    client_labels: dict[str, str] = field(default_factory=dict)
    client_annotations: dict[str, str] = field(default_factory=dict)
    data_bytes: int = 0
    version: int = 0
    prepared: _Prepared | None = None

    # -- receiving client data (bounded: see protocol.LIMITS) -------------------------------

    def add_data(self, payload: bytes) -> None:
        data = P.decode_data_object(payload)
        self.data_bytes += len(payload)
        P.check_limit("max-data-total-bytes", "SMBIOS/SystemData bytes of the session", self.data_bytes)
        self.templater.fill(data)

    def add_labels(self, payload: bytes) -> None:
        _add_string_map(self.client_labels, P.decode_string_map(payload), "label")

    def add_annotations(self, payload: bytes) -> None:
        _add_string_map(self.client_annotations, P.decode_string_map(payload), "annotation")

    # -- building the inventory -------------------------------------------------------------

    def _machine_name(self) -> str:
        template = _get(self.registration, "spec", "machineName") or ""
        name = default_machine_name()
        if template:
            try:
                rendered = self.templater.render(template)
            except ValueNotFound as exc:
                log.warning("cannot render machineName %r (%s), falling back to %s", template, exc, name)
            except TemplateError as exc:
                raise RegistrationFailed(f"cannot decode MachineInventory name {template!r}: {exc}") from None
            else:
                name = sanitize_machine_name(rendered)
                if not name:
                    raise RegistrationFailed(f"invalid MachineInventory name: {rendered[:80]!r}")
        return name

    def _render_map(self, templates: dict[str, Any]) -> dict[str, tuple[str, bool]]:
        out: dict[str, tuple[str, bool]] = {}
        for key, template in templates.items():
            if not isinstance(template, str):
                continue
            try:
                value = self.templater.render(template)
            except ValueNotFound as exc:
                log.warning("cannot render %s=%r: %s", key, template[:80], exc)
                continue
            except TemplateError as exc:
                raise RegistrationFailed(f"failed to decode {key!r}: {exc}") from None
            out[key] = (value, is_random_template(template))
        return out

    def prepare(self) -> _Prepared:
        """Render every template over the client's data (outside any store transaction)."""
        reg = self.registration
        prefix = label_prefix(reg)
        annotations: dict[str, str] = {}
        for key, value in self.client_annotations.items():
            full = prefix + _html_escape(key)
            if valid_label_key(full):
                annotations[full] = _html_escape(value)
            else:
                log.warning("skipping invalid annotation key %r", full[:80])
        labels: dict[str, tuple[str, bool]] = {}
        for key, template in self.client_labels.items():
            full = prefix + key
            if not valid_label_key(full):
                log.warning("skipping invalid label key %r", full[:80])
                continue
            try:
                value = sanitize_label_value(self.templater.render(template))
            except TemplateError as exc:
                log.warning("cannot render client label %s: %s", key[:80], exc)
                continue
            labels[full] = (value, is_random_template(template))
        reg_labels: dict[str, tuple[str, bool]] = {}
        for key, (value, sticky) in self._render_map(
            _get(reg, "spec", "machineInventoryLabels") or {}
        ).items():
            clean = sanitize_label_value(value)
            if not valid_label_key(key) or not clean:
                log.warning("skipping label %r: invalid key or empty value %r", key, value[:80])
                continue
            reg_labels[key] = (clean, sticky)
        return _Prepared(
            name=self._machine_name(),
            client_labels=labels,
            client_annotations=annotations,
            reg_labels=reg_labels,
            reg_annotations=self._render_map(_get(reg, "spec", "machineInventoryAnnotations") or {}),
            unmanaged=self.client_annotations.get("os.unmanaged") == "true",
            resettable=bool(_get(reg, "spec", "config", "elemental", "reset", "enabled")),
        )

    def _new_inventory(self) -> Resource:
        reg = self.registration
        assert self.prepared is not None
        spec: dict[str, Any] = {}
        if self.identity.tpm_hash:
            spec["tpmHash"] = self.identity.tpm_hash
        else:
            spec["machineHash"] = self.identity.machine_hash
        network = _get(reg, "spec", "config", "network")
        if isinstance(network, dict):
            net: dict[str, Any] = {"configurator": network.get("configurator") or "none"}
            if network.get("config") is not None:
                net["config"] = copy.deepcopy(network["config"])
            spec["network"] = net
            if network.get("ipAddresses"):
                spec["ipAddressPools"] = copy.deepcopy(network["ipAddresses"])
        return {
            "apiVersion": API_VERSION,
            "kind": "MachineInventory",
            "metadata": {
                "name": self.prepared.name,
                "namespace": reg["metadata"]["namespace"],
                "labels": {},
                "annotations": {},
            },
            "spec": spec,
        }

    def apply(self, inventory: Resource) -> Resource:
        """Labels and annotations of this registration merged into the stored (or new) object.
        Runs inside the store's write transaction: dict merges only, all values pre-rendered."""
        prep = self.prepared
        assert prep is not None
        meta = inventory.setdefault("metadata", {})
        labels: dict[str, str] = dict(meta.get("labels") or {})
        annotations: dict[str, str] = dict(meta.get("annotations") or {})
        annotations.update(prep.client_annotations)
        # Elemental looks for this exact key whatever the prefix (its issue #1023): set both.
        if prep.unmanaged:
            annotations[UNMANAGED] = "true"
        # Registration labels come last: they override client labels with the same key.
        for rendered in (prep.client_labels, prep.reg_labels):
            for key, (value, sticky) in rendered.items():
                if not (sticky and key in labels):
                    labels[key] = value
        for key, (value, sticky) in prep.reg_annotations.items():
            if not (sticky and key in annotations):
                annotations[key] = value
        if prep.resettable:
            annotations[RESETTABLE] = "true"
        total = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        P.check_limit("max-annotations-total-bytes", "annotations of the MachineInventory (bytes)", total)
        meta["labels"] = labels
        meta["annotations"] = annotations
        return inventory

    def commit(self) -> tuple[Resource, bool]:
        """Create or update the machine's inventory in one store transaction: ``(inventory,
        created)``. Blocking store call: run it in a worker thread.

        Identity rule: an inventory belongs to its TPM hash (or PLAIN machine hash), never to
        its name. When a new hash renders a name that another machine's inventory already
        has (both claim the same SMBIOS UUID, say), the newcomer gets the name plus a random
        suffix and a ``name-conflict`` annotation: nothing is overwritten, and a machine that
        spoofs another's UUID first cannot lock the real one out."""
        assert self.prepared is not None
        wanted = self.prepared.name
        for attempt in range(NAME_CONFLICT_RETRIES + 1):
            try:
                return self.ctx.store.upsert_inventory(
                    **self.identity.hashes(),
                    new=None if self.updating else self._new_applied,
                    modify=self.apply,
                    retries=COMMIT_RETRIES,
                )
            except AlreadyExists:
                if attempt == NAME_CONFLICT_RETRIES:
                    raise RegistrationFailed(
                        f"MachineInventory {self.prepared.name} already exists"
                    ) from None
                log.warning(
                    "registration: MachineInventory %s already belongs to another machine; "
                    "this one (%s) is registered under a suffixed name",
                    wanted,
                    self.identity.tpm_hash or self.identity.machine_hash,
                )
                self.prepared.name = f"{wanted[: MAX_NAME_LEN - 6].rstrip('-.')}-{secrets.token_hex(3)[:5]}"
                self.prepared.name_conflict = wanted
            except ValidationError as exc:
                raise RegistrationFailed(f"invalid MachineInventory: {exc}") from None
            except NotFound:
                raise RegistrationFailed(P.MSG_INVENTORY_NOT_FOUND) from None
            except Conflict:
                # The hash index refused a create, or a concurrent writer kept winning.
                raise RegistrationFailed("a MachineInventory for this machine already exists") from None
        raise AssertionError("unreachable")

    def _new_applied(self) -> Resource:
        inventory = self.apply(self._new_inventory())
        assert self.prepared is not None
        if self.prepared.name_conflict:
            inventory["metadata"]["annotations"][NAME_CONFLICT] = self.prepared.name_conflict
        return inventory

    def config(self, inventory: Resource) -> dict[str, Any]:
        """Config returned on Get (Go's writeMachineInventoryCloudConfig)."""
        reg = self.registration
        out: dict[str, Any] = {"elemental": _static_config(reg, self.ctx)["elemental"]}
        out["elemental"]["system-agent"] = self._agent_config(inventory)
        cloud_config = _get(reg, "spec", "config", "cloud-config")
        if cloud_config:
            out["cloud-config"] = P.encode_cloud_config(cloud_config)
        network = self._network_config(inventory)
        if network is not None:
            out["network"] = network
        return out

    def config_yaml(self, inventory: Resource) -> bytes:
        """``encode_yaml(self.config(inventory))``, with the parts that depend only on the
        registration rendered once per registration resourceVersion (``_static_yaml``)."""
        head, cloud_config = _static_yaml(self.registration, self.ctx)
        agent = P.encode_yaml({"system-agent": self._agent_config(inventory)})
        out = head + b"".join(b"  " + line for line in agent.splitlines(keepends=True)) + cloud_config
        network = self._network_config(inventory)
        if network is not None:
            out += P.encode_yaml({"network": network})
        return out

    def _agent_config(self, inventory: Resource) -> dict[str, Any]:
        meta = inventory["metadata"]
        return {
            # the Secret API rancher-system-agent speaks (server/k8s_api.py), as upstream sends it
            "url": f"{self.ctx.public_url}{K8S_API_PREFIX}",
            "token": self.ctx.agent_token(inventory),
            "secret-name": meta["name"],
            "secret-namespace": meta["namespace"],
            "strictTLSMode": True,
        }

    def _network_config(self, inventory: Resource) -> dict[str, Any] | None:
        network = _get(inventory, "spec", "network")
        if self.version >= P.MsgType.NETWORK_CONFIG and isinstance(network, dict):
            if (network.get("configurator") or "none") != "none":
                # Elemental appends this as a second YAML map to the same document; a key is cleaner.
                return {
                    "configurator": network.get("configurator"),
                    "ipAddresses": copy.deepcopy(network.get("ipAddresses") or {}),
                    "config": copy.deepcopy(network.get("config") or {}),
                }
        return None


def _static_config(registration: Resource, ctx: OperatorContext) -> dict[str, Any]:
    elemental = _get(registration, "spec", "config", "elemental") or {}
    return {
        "elemental": {
            "install": copy.deepcopy(elemental.get("install") or {}),
            "reset": copy.deepcopy(elemental.get("reset") or {}),
            "registration": client_registration_config(registration, ctx),
        }
    }


# (uid, resourceVersion, public URL, CA) of a registration → its rendered static config parts.
_STATIC_YAML: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}
_STATIC_YAML_MAX = 256


def _static_yaml(registration: Resource, ctx: OperatorContext) -> tuple[bytes, bytes]:
    """YAML of ``elemental.{install,reset,registration}`` (the head of the Config, to which the
    per-machine ``system-agent`` is appended at indent 2) and of ``cloud-config``."""
    meta = registration.get("metadata") or {}
    key = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")), ctx.public_url, ctx.ca_cert_pem)
    cached = _STATIC_YAML.get(key) if key[0] and key[1] else None
    if cached is not None:
        return cached
    head = P.encode_yaml(_static_config(registration, ctx))
    cloud_config = _get(registration, "spec", "config", "cloud-config")
    # upstream's encoding (map of RawExtension through yaml.v3), which Elemental's Go client needs
    tail = P.encode_yaml({"cloud-config": P.encode_cloud_config(cloud_config)}) if cloud_config else b""
    if key[0] and key[1]:
        if len(_STATIC_YAML) >= _STATIC_YAML_MAX:
            _STATIC_YAML.clear()
        _STATIC_YAML[key] = (head, tail)
    return head, tail


def _allows_emulated(registration: Resource) -> bool:
    return _get(registration, "spec", "tpm", "allowEmulated") is not False


def _add_string_map(into: dict[str, str], items: dict[str, str], what: str) -> None:
    """Merge a client's Labels/Annotations map, refusing anything over the per-value, per-key
    and per-session count limits."""
    for key, value in items.items():
        P.check_limit(f"max-{what}-key-bytes", f"{what} key bytes", len(key.encode()))
        P.check_limit(f"max-{what}-value-bytes", f"{what} {key[:63]!r} value bytes", len(value.encode()))
        into[key] = value
        P.check_limit(f"max-{what}s", f"{what}s of the session", len(into))


async def _store(fn: Any, *args: Any) -> Any:
    # The store is synchronous (SQLAlchemy); keep the event loop free for other machines.
    return await asyncio.to_thread(fn, *args)


async def _send_error(ch: P.ServerChannel, version: int, message: str) -> None:
    # Clients older than protocol 8 do not know Error frames (Go's writeError skips them).
    if version and version < P.MsgType.ERROR:
        return
    try:
        await ch.write(P.MsgType.ERROR, P.encode_error(message))
    except Exception:
        pass  # the peer is gone or the deadline passed: nothing left to tell


async def _authenticate(
    ch: P.ServerChannel, authorization: str | None, registration: Resource, ctx: OperatorContext
) -> _Identity | None:
    """Run the auth exchange; None when the header carried no auth (answered already)."""
    try:
        auth = P.parse_authorization(authorization)
    except P.ProtocolError as exc:
        log.warning("registration: malformed authorization header: %s", exc)
        raise RegistrationFailed("authentication failure") from None
    if auth is None:
        if authorization:
            raise RegistrationFailed("unrecognized authentication method")
        # No credentials: like Elemental, answer with the unauthenticated registration file.
        await ch.send_raw(P.encode_yaml(registration_file(registration, ctx)))
        return None

    method = (_get(registration, "spec", "config", "elemental", "registration", "auth") or "tpm").lower()
    if isinstance(auth, P.PlainAuth):
        # PLAIN identities are guessable: only accept them where the registration asks for them
        # (Elemental accepted them on any registration).
        if method not in ("mac", "sys-uuid"):
            raise RegistrationFailed("authentication failure")
        ident = auth.identifier.strip().lower()
        if method == "sys-uuid" and P.unusable_sys_uuid(ident):
            raise RegistrationFailed(f"authentication failure: sys-uuid {ident!r} is not a machine's UUID")
        return _Identity(auth="plain", machine_hash=hashlib.sha256(auth.identifier.encode()).hexdigest())

    policy = _get(registration, "spec", "tpm") or {}
    try:
        ek = attestation.parse_ek(auth.ek_pem)
        if ctx.tpm_ca_pem:
            attestation.verify_ek_certificate(ek, ctx.tpm_ca_pem)
        if policy.get("ekCABundle"):
            attestation.verify_ek_certificate(ek, str(policy["ekCABundle"]))
        if policy.get("allowEmulated") is False and ek.certificate is None:
            raise attestation.AttestationError("this registration refuses TPMs without an EK certificate")
        ak_name = attestation.check_ak_parameters(auth.ak)
        challenge = attestation.make_challenge(ek, ak_name)
    except attestation.AttestationError as exc:
        log.warning("registration: TPM attestation refused: %s", exc)
        raise RegistrationFailed("authentication failure") from None
    await ch.send_raw(P.encode_challenge(challenge.credential, challenge.encrypted_secret))
    answer = P.decode_challenge_response(await ch.recv_raw())
    if not attestation.verify_answer(challenge, answer):
        log.warning("registration: wrong activation answer for TPM hash %s", ek.tpm_hash)
        raise RegistrationFailed("authentication failure")
    return _Identity(auth="tpm", tpm_hash=ek.tpm_hash)


async def serve_registration(
    conn: P.FrameConn,
    authorization: str | None,
    registration: Resource,
    ctx: OperatorContext,
    remote_ip: str,
) -> None:
    """One registration websocket session (Elemental's apiRegistration + serveLoop)."""
    ch = P.ServerChannel(conn)
    session: _Session | None = None
    try:
        identity = await _authenticate(ch, authorization, registration, ctx)
        if identity is None:
            return
        session = _Session(registration=registration, ctx=ctx, identity=identity)
        await ch.write(P.MsgType.READY)
        for _ in range(MAX_MESSAGES):
            msg_type, payload = await ch.read()
            reply = P.MsgType.READY
            reply_payload = b""
            if msg_type == P.MsgType.VERSION:
                session.version = P.negotiate_version(payload)
                reply, reply_payload = P.MsgType.VERSION, P.encode_version(session.version)
            elif msg_type in (P.MsgType.SMBIOS, P.MsgType.SYSTEM_DATA_V2, P.MsgType.SYSTEM_DATA):
                session.add_data(payload)
            elif msg_type == P.MsgType.LABELS:
                session.add_labels(payload)
            elif msg_type == P.MsgType.ANNOTATIONS:
                session.add_annotations(payload)
                if session.client_annotations.get("auth") == "emulated-tpm" and not _allows_emulated(
                    registration
                ):
                    raise RegistrationFailed("this registration refuses emulated TPMs")
            elif msg_type == P.MsgType.UPDATE:
                session.updating = True
                if await _store(identity.find, ctx) is None:
                    log.warning(
                        "registration from %s: MachineInventory not found but the machine is "
                        "still running; reprovisioning is needed",
                        remote_ip,
                    )
                    raise RegistrationFailed(P.MSG_INVENTORY_NOT_FOUND)
            elif msg_type == P.MsgType.GET:
                session.prepared = session.prepare()
                inventory, created = await _store(session.commit)
                data = session.config_yaml(inventory)
                if session.version and session.version < P.MsgType.CONFIG:
                    await ch.send_raw(data)  # pre-1.1.1 clients read raw YAML
                else:
                    await ch.write(P.MsgType.CONFIG, data)
                log.info(
                    "registration from %s: %s MachineInventory %s/%s",
                    remote_ip,
                    "created" if created else "updated",
                    inventory["metadata"]["namespace"],
                    inventory["metadata"]["name"],
                )
                return
            else:
                raise P.ProtocolError(f"got unexpected message: {msg_type.name}")
            await ch.write(reply, reply_payload)
        raise P.ProtocolError("too many messages")
    except RegistrationFailed as exc:
        await _send_error(ch, session.version if session else 0, str(exc))
    except P.ProtocolError as exc:
        log.warning("registration from %s: protocol error: %s", remote_ip, exc)
        await _send_error(ch, session.version if session else 0, str(exc))
    except TimeoutError:
        log.warning("registration from %s: deadline exceeded", remote_ip)
        await _send_error(ch, session.version if session else 0, "registration deadline exceeded")
    except RegistrationNotReady as exc:
        await _send_error(ch, session.version if session else 0, str(exc))
    except StoreError as exc:
        log.error("registration from %s: store error: %s", remote_ip, exc)
        await _send_error(ch, session.version if session else 0, f"cannot store MachineInventory: {exc}")
    except (ConnectionError, EOFError) as exc:
        log.info("registration from %s: connection closed: %s", remote_ip, exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug must not take the server down, nor leave the peer hanging
        log.exception("registration from %s: internal error", remote_ip)
        await _send_error(ch, session.version if session else 0, f"internal error: {type(exc).__name__}")
