"""The admin-API HTTP client of ``elementalctl`` and its one error type."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import IO, Any

from elemental_common.errors import Die
from elemental_operator.api import KindInfo

ADMIN_PREFIX = "/elemental/admin/v1"


class CtlError(Die):
    """A failure to show the user (the one user-error type); ``status`` is the HTTP status when the
    server answered."""

    def __init__(self, message: str, status: int | None = None, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


def _warning_text(header: str) -> str:
    """The text of a ``299 - "text"`` Warning header (RFC 7234), as the API server sends them."""
    code, _, quoted = header.partition(" - ")
    try:
        text = json.loads(quoted)
    except ValueError:
        return header
    return str(text) if code.strip() == "299" else header


class Client:
    def __init__(self, server: str, token: str, ca: str | None, insecure: bool) -> None:
        self.warn: Callable[[str], None] | None = None  # the server's Warning headers go here
        # fieldValidation of writes (apply/create --validate): Strict, Warn or Ignore
        self.field_validation = "Strict"
        self.server = server
        self.base = server.rstrip("/") + ADMIN_PREFIX
        self.token = token
        if server.startswith("https"):
            self.ssl: ssl.SSLContext | None = ssl.create_default_context(cafile=ca if ca else None)
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        else:
            self.ssl = None

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float | None = 60,
        content_type: str = "application/json",
    ) -> IO[bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            resp: IO[bytes] = urllib.request.urlopen(req, timeout=timeout, context=self.ssl)
            return resp
        except urllib.error.HTTPError as exc:
            # kubectl's form: the Status reason (NotFound, Invalid, Conflict…), else the HTTP code.
            try:
                body = json.loads(exc.read())
                message, reason = body.get("message") or exc.reason, body.get("reason") or exc.code
            except (ValueError, AttributeError):
                message, reason = exc.reason, exc.code
            raise CtlError(f"Error from server ({reason}): {message}", exc.code) from None
        except urllib.error.URLError as exc:
            raise CtlError(f"cannot reach {self.base}: {exc.reason}") from None
        except OSError as exc:  # timeouts, resets
            raise CtlError(f"cannot reach {self.base}: {exc}") from None

    def _not_json(self, path: str) -> CtlError:
        return CtlError(
            f"{self.base}{path.split('?')[0]}: the answer is not JSON (is {self.server} an operator?)"
        )

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        dry_run: bool = False,
        content_type: str = "application/json",
    ) -> Any:
        """One request; ``dry_run`` adds ``?dryRun=All`` (the server checks everything, stores nothing)."""
        if dry_run:
            path += ("&" if "?" in path else "?") + "dryRun=All"
        if method in ("POST", "PUT", "PATCH") and self.field_validation != "Strict":
            path += ("&" if "?" in path else "?") + f"fieldValidation={self.field_validation}"
        with self._open(method, path, body, content_type=content_type) as resp:
            headers = getattr(resp, "headers", None)  # an http.client.HTTPResponse's
            for header in (headers.get_all("Warning") if headers is not None else None) or []:
                if self.warn is not None:
                    self.warn(_warning_text(header))
            try:
                return json.loads(resp.read() or b"null")
            except ValueError:
                raise self._not_json(path) from None
            except OSError as exc:
                raise CtlError(f"{self.base}: the connection broke: {exc}") from None

    def stream(self, path: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Newline-delimited JSON watch events; the server ends the stream at ``timeoutSeconds``."""
        with self._open("GET", path, timeout=timeout) as resp:
            try:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
            except ValueError:
                raise self._not_json(path) from None
            except OSError as exc:
                raise CtlError(f"{self.base}: the watch broke: {exc}") from None

    # ---- paths ------------------------------------------------------------------------------

    @staticmethod
    def collection(info: KindInfo, namespace: str | None, selector: str = "") -> str:
        path = f"/namespaces/{namespace}/{info.plural}" if namespace else f"/{info.plural}"
        return path + (f"?labelSelector={urllib.parse.quote(selector)}" if selector else "")

    @staticmethod
    def item(info: KindInfo, namespace: str, name: str) -> str:
        return f"/namespaces/{namespace}/{info.plural}/{urllib.parse.quote(name)}"

    def get(self, info: KindInfo, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.call("GET", self.item(info, namespace, name))
        return out

    def list(self, info: KindInfo, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.call("GET", self.collection(info, namespace, selector))["items"]
        return items
