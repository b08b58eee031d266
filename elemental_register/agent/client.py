"""HTTP client for the operator's agent endpoints (stdlib only: the OS ships no aiohttp)."""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Any

from elemental_register.agent.config import Connection

log = logging.getLogger("elemental.agent")


class OperatorError(Exception):
    pass


class TlsFallbackOpener:
    """HTTPS to the operator as rancher-system-agent does it: the connection's CA first and, without
    strict verify, the system trust store once when that CA does not sign the server (the operator
    may sit behind a public certificate). Shared by OperatorClient and the Secret API client."""

    strict: bool
    _ctx: ssl.SSLContext

    def _ca_cert(self) -> str:
        raise NotImplementedError

    def _context(self, with_ca: bool) -> ssl.SSLContext:
        if with_ca and self._ca_cert():
            return ssl.create_default_context(cadata=self._ca_cert())
        return ssl.create_default_context()

    def _urlopen(self, req: urllib.request.Request, timeout: float) -> Any:
        """The response (an HTTPError is raised as it is); anything else is an OperatorError."""
        url, method = req.full_url, req.get_method()
        for attempt in (0, 1):
            try:
                ctx = self._ctx if url.startswith("https:") else None
                return urllib.request.urlopen(req, timeout=timeout, context=ctx)
            except urllib.error.HTTPError:
                raise
            except urllib.error.URLError as e:
                if (
                    attempt == 0
                    and not self.strict
                    and isinstance(e.reason, ssl.SSLCertVerificationError)
                    and self._ca_cert()
                ):
                    log.warning("certificate not signed by the connection's CA; retrying with system CAs")
                    self._ctx = self._context(with_ca=False)
                    continue
                raise OperatorError(f"{method} {url}: {e.reason}") from e
            except OSError as e:
                raise OperatorError(f"{method} {url}: {e}") from e
        raise OperatorError(f"{method} {url}: failed")


class OperatorClient(TlsFallbackOpener):
    def __init__(self, conn: Connection, strict: bool = False, timeout: float = 30.0) -> None:
        self.conn = conn
        self.strict = strict
        self.timeout = timeout
        self._ctx = self._context(with_ca=True)

    def _ca_cert(self) -> str:
        return self.conn.ca_cert

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = self.conn.url + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.conn.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._urlopen(req, self.timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw) if raw else None
            except ValueError:
                return e.code, raw.decode(errors="replace")
        except (OSError, ValueError) as e:
            raise OperatorError(f"{method} {url}: {e}") from e

    def get_plan(self) -> dict[str, Any] | None:
        """The plan document, or None when the operator has none for us yet (404)."""
        code, body = self._request("GET", "/elemental/agent/v1/plan")
        if code == 404:
            return None
        if code != 200 or not isinstance(body, dict):
            raise OperatorError(f"GET plan: HTTP {code}: {body}")
        return body

    def post_status(self, status: dict[str, Any]) -> None:
        code, body = self._request("POST", "/elemental/agent/v1/plan/status", status)
        if code >= 300:
            raise OperatorError(f"POST plan status: HTTP {code}: {body}")

    def post_progress(self, stage: str, percent: int, message: str = "") -> None:
        code, body = self._request(
            "POST", "/elemental/agent/v1/progress", {"stage": stage, "percent": percent, "message": message}
        )
        if code >= 300:
            raise OperatorError(f"POST progress: HTTP {code}: {body}")
