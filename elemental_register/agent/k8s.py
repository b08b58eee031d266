"""rancher-system-agent's connection: a kubeconfig and the plan Secret through the Kubernetes API.

Elemental's register client writes ``elemental_connection.json`` as rancher-system-agent's
``{kubeConfig, namespace, secretName}``; the kubeconfig's server is the operator's
``<url>/k8s/clusters/local``. ``SecretClient`` offers the agent loop the same calls as
``OperatorClient`` (get_plan, post_status, post_progress) but speaks the Secret API the way
rancher-system-agent's pkg/k8splan does: GET the Secret, watch it with
``fieldSelector=metadata.name=<secret>``, and update it (PUT, with its resourceVersion) with the
agent's keys in that agent's encodings. Stdlib and PyYAML only: the OS ships no kubernetes client.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import logging
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from elemental_common.consts import PLAN_TYPE_ANNOTATION
from elemental_common.errors import die
from elemental_register.agent import plan as planlib
from elemental_register.agent.client import OperatorError, TlsFallbackOpener
from elemental_register.agent.config import check_permissions

log = logging.getLogger("elemental.agent")

CLUSTER_PATH = "/k8s/clusters/local"
CONFLICT_RETRIES = 5  # client-go's retry.DefaultBackoff has 4 steps; the update wins or gives up


def is_kube_connection(path: Path) -> bool:
    """True for rancher-system-agent's ``{kubeConfig, namespace, secretName}`` form (and not ours,
    which has a ``url``): the agent loads ours exactly as before."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and not d.get("url") and "kubeConfig" in d


def _pick(entries: Any, name: str, field: str) -> dict[str, Any]:
    """The ``field`` of the named kubeconfig entry (clusters, users, contexts); the only entry when
    there is no name (clientcmd's rules are richer; Elemental writes one of each)."""
    items = [e for e in entries or [] if isinstance(e, dict)]
    chosen = next((e for e in items if e.get("name") == name), None) if name else None
    if chosen is None and len(items) == 1 and not name:
        chosen = items[0]
    value = (chosen or {}).get(field)
    return value if isinstance(value, dict) else {}


@dataclass
class KubeConnection:
    server: str
    token: str
    ca_cert: str  # PEM, from certificate-authority-data; "" = the system trust store
    namespace: str
    secret_name: str
    insecure: bool = False

    @classmethod
    def load(cls, path: Path) -> KubeConnection:
        check_permissions(path)
        try:
            d = json.loads(path.read_text())
            kc = yaml.safe_load(str(d.get("kubeConfig") or ""))
        except (OSError, ValueError, yaml.YAMLError, AttributeError) as e:
            die(f"{path}: unreadable connection file: {e}")
        if not isinstance(kc, dict):
            die(f"{path}: kubeConfig is not a kubeconfig document")
        ctx = _pick(kc.get("contexts"), str(kc.get("current-context") or ""), "context")
        cluster = _pick(kc.get("clusters"), str(ctx.get("cluster") or ""), "cluster")
        user = _pick(kc.get("users"), str(ctx.get("user") or ""), "user")
        server = str(cluster.get("server") or "").rstrip("/")
        if not server:
            die(f"{path}: the kubeconfig names no cluster server")
        ca = ""
        if cluster.get("certificate-authority-data"):
            try:
                ca = base64.b64decode(str(cluster["certificate-authority-data"]), validate=True).decode()
            except (binascii.Error, ValueError) as e:
                die(f"{path}: certificate-authority-data is not base64 PEM: {e}")
        elif cluster.get("certificate-authority"):
            try:
                ca = Path(str(cluster["certificate-authority"])).read_text()
            except OSError as e:
                die(f"{path}: certificate-authority {cluster['certificate-authority']}: {e.strerror}")
        token = str(user.get("token") or "")
        if not token and user.get("tokenFile"):
            try:
                token = Path(str(user["tokenFile"])).read_text().strip()
            except OSError as e:
                die(f"{path}: tokenFile {user['tokenFile']}: {e.strerror}")
        if not (token and d.get("namespace") and d.get("secretName")):
            die(f"{path}: the connection needs a user token, a namespace and a secretName")
        return cls(
            server=server,
            token=token,
            ca_cert=ca,
            namespace=str(d["namespace"]),
            secret_name=str(d["secretName"]),
            insecure=bool(cluster.get("insecure-skip-tls-verify")),
        )

    @property
    def operator_url(self) -> str:
        """The operator's base URL (the kubeconfig server without /k8s/clusters/local: our
        operator serves the Secret API at both), for the install-progress endpoint, which has
        no Kubernetes shape."""
        return self.server[: -len(CLUSTER_PATH)] if self.server.endswith(CLUSTER_PATH) else self.server


# ---- rancher-system-agent's encodings of its Secret keys --------------------------------------


def encode_output(packed: str) -> bytes:
    """Our packed outputs (base64 of gzip of JSON {name: text}) -> rancher-system-agent's
    applied-output/failed-output bytes: gzip of JSON {name: base64(output)} (Go marshals a
    map[string][]byte with base64 values). Empty stays empty, as that agent blanks it."""
    if not packed:
        return b""
    outputs = planlib.unpack_output(packed)
    wire = {k: base64.b64encode(str(v).encode()).decode() for k, v in outputs.items()}
    return gzip.compress(json.dumps(wire, sort_keys=True).encode())


def decode_output(raw: bytes) -> dict[str, str]:
    """rancher-system-agent's applied-output bytes -> {instruction name: output text}."""
    if not raw:
        return {}
    d = json.loads(gzip.decompress(raw))
    return {str(k): base64.b64decode(v).decode(errors="replace") for k, v in d.items()}


def encode_status(status: dict[str, Any]) -> dict[str, bytes]:
    """The agent's status (as posted to our plan endpoint) -> Secret data bytes per key."""
    out: dict[str, bytes] = {}
    for key, value in status.items():
        if value is None:
            continue
        if key in ("applied-output", "failed-output"):
            out[key] = encode_output(str(value))
        elif key == "applied-periodic-output":
            # already rancher-system-agent's records (stdout base64); only our outer base64 goes
            out[key] = base64.b64decode(str(value)) if value else b""
        elif key == "probe-statuses":
            out[key] = json.dumps(value, separators=(",", ":")).encode()
        else:
            out[key] = str(value).encode()
    return out


def secret_value(secret: dict[str, Any], key: str) -> bytes:
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw) if raw else b""


class SecretClient(TlsFallbackOpener):
    """The plan Secret through the Kubernetes API, with OperatorClient's calls."""

    def __init__(self, conn: KubeConnection, strict: bool = False, timeout: float = 30.0) -> None:
        self.conn = conn
        self.strict = strict
        self.timeout = timeout
        self.resource_version = ""  # of the Secret as last read or written
        self._ctx = self._context(with_ca=True)

    def _ca_cert(self) -> str:
        return self.conn.ca_cert

    def _context(self, with_ca: bool) -> ssl.SSLContext:
        if self.conn.insecure and not self.strict:
            return ssl._create_unverified_context()  # the kubeconfig asked for it explicitly
        return super()._context(with_ca)

    @property
    def _secret_path(self) -> str:
        ns, name = (urllib.parse.quote(x, safe="") for x in (self.conn.namespace, self.conn.secret_name))
        return f"/api/v1/namespaces/{ns}/secrets/{name}"

    def _open(self, url: str, method: str, body: Any, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.conn.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        return self._urlopen(req, timeout)

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.conn.server + path
        try:
            with self._open(url, method, body, self.timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, raw.decode(errors="replace")
        except ValueError as e:
            raise OperatorError(f"{method} {url}: {e}") from e

    @staticmethod
    def _why(body: Any) -> str:
        return str(body.get("message")) if isinstance(body, dict) and body.get("message") else str(body)

    # ------------------------------------------------------------------ reads
    def get_secret(self) -> dict[str, Any] | None:
        """The plan Secret, or None while it does not exist (404)."""
        code, body = self._request("GET", self._secret_path)
        if code == 404:
            return None
        if code != 200 or not isinstance(body, dict):
            raise OperatorError(
                f"GET secret {self.conn.namespace}/{self.conn.secret_name}: HTTP {code}: {self._why(body)}"
            )
        self.resource_version = str(body.get("metadata", {}).get("resourceVersion") or "")
        return body

    def get_plan(self) -> dict[str, Any] | None:
        """The plan document in OperatorClient.get_plan's shape, read from the Secret."""
        secret = self.get_secret()
        if secret is None:
            return None
        plan = secret_value(secret, "plan")
        max_failures = secret_value(secret, "max-failures").decode(errors="replace").strip()
        meta = secret.get("metadata") or {}
        return {
            "name": meta.get("name", self.conn.secret_name),
            "namespace": meta.get("namespace", self.conn.namespace),
            "planType": (meta.get("annotations") or {}).get(PLAN_TYPE_ANNOTATION, ""),
            "plan": plan.decode(errors="replace"),
            "checksum": planlib.checksum(plan),
            "maxFailures": int(max_failures) if max_failures.isdigit() else 0,
            "appliedChecksum": secret_value(secret, "applied-checksum").decode(errors="replace"),
        }

    def wait_for_change(self, timeout: float) -> bool:
        """Watch the Secret (field selector on its name) from the last resourceVersion; True as
        soon as it changed, False when ``timeout`` passed without a change."""
        query = {
            "watch": "true",
            "fieldSelector": f"metadata.name={self.conn.secret_name}",
            "timeoutSeconds": str(max(1, math.ceil(timeout))),
        }
        if self.resource_version:
            query["resourceVersion"] = self.resource_version
        ns = urllib.parse.quote(self.conn.namespace, safe="")
        url = f"{self.conn.server}/api/v1/namespaces/{ns}/secrets?{urllib.parse.urlencode(query)}"
        try:
            # the read timeout bounds each line; the server ends the stream at timeoutSeconds
            with self._open(url, "GET", None, timeout + self.timeout) as resp:
                for line in resp:
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        # 410 Expired: our resourceVersion left the server's log; re-read
                        self.resource_version = ""
                        return True
                    if ev.get("type") == "BOOKMARK":
                        continue
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                    if rv and rv == self.resource_version:
                        continue
                    return True
        except urllib.error.HTTPError as e:
            raise OperatorError(f"watch secret: HTTP {e.code}: {e.read().decode(errors='replace')}") from e
        except (OSError, ValueError) as e:
            raise OperatorError(f"watch secret: {e}") from e
        return False

    # ----------------------------------------------------------------- writes
    def post_status(self, status: dict[str, Any]) -> None:
        """Write the agent's keys into the Secret (read, modify, PUT with its resourceVersion; a
        409 from a concurrent write is retried on the fresh Secret, as client-go's retry does)."""
        values = encode_status(status)
        for _ in range(CONFLICT_RETRIES):
            secret = self.get_secret()
            if secret is None:
                raise OperatorError(f"secret {self.conn.namespace}/{self.conn.secret_name} does not exist")
            data = dict(secret.get("data") or {})
            data.update({k: base64.b64encode(v).decode() for k, v in values.items()})
            if data == (secret.get("data") or {}):
                return  # nothing changed: no write (as rancher-system-agent skips it)
            code, body = self._request("PUT", self._secret_path, {**secret, "data": data})
            if code == 409:
                continue
            if code != 200 or not isinstance(body, dict):
                raise OperatorError(f"PUT secret: HTTP {code}: {self._why(body)}")
            self.resource_version = str(body.get("metadata", {}).get("resourceVersion") or "")
            return
        raise OperatorError("PUT secret: it kept changing (409 Conflict)")

    def post_progress(self, stage: str, percent: int, message: str = "") -> None:
        """Install progress has no Kubernetes shape: it goes to the operator's progress endpoint
        (beside the cluster path) with the same token, to the InstallProgress condition."""
        url = self.conn.operator_url + "/elemental/agent/v1/progress"
        try:
            with self._open(
                url, "POST", {"stage": stage, "percent": percent, "message": message}, self.timeout
            ):
                return
        except urllib.error.HTTPError as e:
            raise OperatorError(f"POST progress: HTTP {e.code}: {e.read().decode(errors='replace')}") from e
