"""Dashboard sessions: log in with the admin token or a viewer token, a signed session cookie, CSRF.

The session is a signed cookie, not a server-side table, so every operator replica accepts it.
It names the role and a fingerprint of the token it was opened with: rotating the admin token
(or removing a viewer token) ends the sessions opened with it at their next request. Actions
need the admin role (what the admin API's bearer token allows); a viewer may read every page.
Viewer tokens live in the Secret ``cattle-elemental-system/elemental-dashboard-viewers``
(data: user name → token), so they are set with the admin API or elementalctl like any object.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from elemental_operator.store.base import NotFound, Store

COOKIE = "elemental_dashboard"
LOGIN_COOKIE = "elemental_dashboard_login"  # double-submit token of the login form
SESSION_SECONDS = 8 * 3600
VIEWERS_NAMESPACE = "cattle-elemental-system"
VIEWERS_SECRET = "elemental-dashboard-viewers"
ADMIN, VIEWER = "admin", "viewer"


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:24]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    role: str
    user: str
    expires: int
    nonce: str
    fingerprint: str
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == ADMIN


class Sessions:
    """Issues and checks session cookies and CSRF tokens for one operator."""

    def __init__(self, store: Store, admin_token: str, secret_key: bytes, lifetime: int = SESSION_SECONDS):
        self.store = store
        self.admin_token = admin_token
        self.lifetime = lifetime
        # Bound to the admin token too: a new token gives a new key, so old cookies fail to verify.
        self._key = hmac.new(
            secret_key or admin_token.encode(),
            b"elemental-dashboard\0" + admin_token.encode(),
            hashlib.sha256,
        ).digest()
        self._revoked: dict[str, int] = {}  # nonce → expiry (logout; per process)

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def _csrf(self, nonce: str) -> str:
        return _b64(hmac.new(self._key, b"csrf\0" + nonce.encode(), hashlib.sha256).digest())

    def viewer_tokens(self) -> dict[str, str]:
        """fingerprint → user. Blocking store read."""
        try:
            secret = self.store.get("Secret", VIEWERS_NAMESPACE, VIEWERS_SECRET)
        except NotFound:
            return {}
        out: dict[str, str] = {}
        for user, raw in (secret.get("data") or {}).items():
            try:
                token = base64.b64decode(raw).decode().strip()
            except ValueError:
                continue
            if len(token) >= 16:  # a short token is a typo, never a credential
                out[_fingerprint(token)] = str(user)
        return out

    def authenticate(self, token: str) -> tuple[str, str, str] | None:
        """(role, user, fingerprint) for a token, or None. Constant-time against the admin token."""
        token = token.strip()
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return ADMIN, "admin", _fingerprint(token)
        fp = _fingerprint(token)
        user = self.viewer_tokens().get(fp)
        return (VIEWER, user, fp) if user else None

    def issue(self, role: str, user: str, fingerprint: str, now: float | None = None) -> tuple[str, Session]:
        expires = int((now or time.time()) + self.lifetime)
        nonce = secrets.token_urlsafe(18)
        payload = json.dumps({"r": role, "u": user, "e": expires, "n": nonce, "f": fingerprint}).encode()
        cookie = _b64(payload) + "." + self._sign(payload)
        return cookie, Session(role, user, expires, nonce, fingerprint, self._csrf(nonce))

    def check(self, cookie: str, now: float | None = None) -> Session | None:
        """The session a cookie carries, or None (bad signature, expired, logged out, token gone).
        May read the viewers Secret: call from a worker thread."""
        body, _, sig = cookie.partition(".")
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not sig or not hmac.compare_digest(sig.encode(), self._sign(payload).encode()):
            return None
        try:
            d = json.loads(payload)
            session = Session(
                str(d["r"]), str(d["u"]), int(d["e"]), str(d["n"]), str(d["f"]), self._csrf(str(d["n"]))
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= (now or time.time()) or session.nonce in self._revoked:
            return None
        if session.role == ADMIN:
            return session if session.fingerprint == _fingerprint(self.admin_token) else None
        if session.role == VIEWER and session.fingerprint in self.viewer_tokens():
            return session
        return None

    def csrf_ok(self, session: Session, value: str) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), session.csrf.encode())

    def revoke(self, session: Session) -> None:
        now = int(time.time())
        self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        self._revoked[session.nonce] = session.expires

    @staticmethod
    def login_nonce() -> str:
        return secrets.token_urlsafe(18)
