"""Fleet dashboard (elemental_operator.dashboard): presentation, forms and sessions as units; then
sessions, CSRF and the security headers over HTTPS against a real ``elemental-operator serve``."""

from __future__ import annotations

import base64
import gzip
import http.cookiejar
import json
import re
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elemental_operator.api import API_VERSION, ValidationError
from elemental_operator.dashboard import forms, present
from elemental_operator.dashboard.auth import ADMIN, VIEWER, Sessions

sys.path.insert(0, str(Path(__file__).resolve().parent / "e2e"))
from harness import NAMESPACE, Operator  # noqa: E402

# ---- units ----------------------------------------------------------------------------------------


def _inv(name: str, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineInventory",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"pool": "a"}},
        "spec": {"tpmHash": "ab" * 32},
        "status": status,
    }


def test_progress_parsed_from_install_progress_condition() -> None:
    cond = {
        "type": "InstallProgress",
        "status": "Unknown",
        "reason": "Copying",
        "message": "copying: 42.5% slot A",
    }
    p = present.progress(_inv("m", conditions=[cond]))
    assert (p.percent, p.stage, p.message, p.css) == (42.5, "copying", "slot A", "wait")
    failed = {**cond, "status": "False", "message": "failed: 10% disk gone"}
    assert present.progress(_inv("m", conditions=[failed])).css == "bad"
    assert present.progress(_inv("m")).percent is None
    stale = {
        **cond,
        "reason": "Stale",
        "message": "copying: 50% (stale: no progress since 2026-12-02T00:00:00Z)",
    }
    p = present.progress(_inv("m", conditions=[stale]))
    assert (p.percent, p.stage, p.css) == (
        50.0,
        "copying (stale)",
        "bad",
    ) and "no progress since" in p.message


def test_plan_view_and_both_output_encodings() -> None:
    plan = b'{"instructions":[]}\n'
    import hashlib

    checksum = hashlib.sha256(plan).hexdigest()
    go = gzip.compress(json.dumps({"run": base64.b64encode(b"boom\n").decode()}).encode())
    ours = base64.b64encode(gzip.compress(json.dumps({"run": "boom\n"}).encode()))
    for raw in (go, ours):
        secret = {
            "type": "elemental.cattle.io/plan",
            "metadata": {"name": "m", "annotations": {"elemental.cattle.io/plan.type": "bootstrap"}},
            "data": {
                "plan": base64.b64encode(plan).decode(),
                "failed-checksum": base64.b64encode(checksum.encode()).decode(),
                "failed-output": base64.b64encode(raw).decode(),
            },
        }
        pv = present.plan_view(secret)
        assert pv is not None and pv.state == "Failed" and pv.plan_type == "bootstrap"
        assert pv.failed_output == {"run": "boom\n"}


def test_the_booted_slot_the_agent_reports_is_shown() -> None:
    secret = {
        "type": "elemental.cattle.io/plan",
        "metadata": {"name": "m"},
        "data": {k: base64.b64encode(v).decode() for k, v in (("os-version", b"0.2.0"), ("os-slot", b"b"))},
    }
    row = present.machine_row(_inv("m"), secret)
    assert (row.os_version, row.os_slot) == ("0.2.0", "b")
    assert present.machine_row(_inv("m"), None).os_slot == ""


def test_filter_and_sort_rows() -> None:
    rows = [present.machine_row(_inv(n), None) for n in ("b-node", "a-node", "c-node")]
    rows[0].labels["site"] = "x"
    assert [r.name for r in present.sort_rows(rows, "name", False)] == ["a-node", "b-node", "c-node"]
    assert [r.name for r in present.sort_rows(rows, "name", True)][0] == "c-node"
    assert [r.name for r in rows if present.row_matches(r, "", present.parse_label_filter("site=x"))] == [
        "b-node"
    ]
    assert [r.name for r in rows if present.row_matches(r, "A-NO", {})] == ["a-node"]
    assert present.parse_label_filter("a=1, b") == {"a": "1", "b": None}


def test_form_errors_land_on_their_field() -> None:
    fields = forms.REGISTRATION_FIELDS
    assert forms.field_for_error("metadata.name: 'Bad' does not match ^[a-z]", fields) == "name"
    assert forms.field_for_error("spec.config.elemental.install.device: must be a string", fields) == "device"
    assert forms.field_for_error("spec.config.elemental.reset.enabled: must be a boolean", fields) == "reset"
    assert forms.field_for_error("spec.tpm.ekCABundle: must be a string", fields) == ""
    with pytest.raises(forms.FormError) as err:
        forms.registration_from_form({"name": "r", "labels": "ok=1\nno-equals-sign"})
    assert err.value.field == "labels" and "line 2" in str(err.value)
    obj = forms.registration_from_form({"name": "r", "device": "/dev/sda", "reset": "on", "emulateTpm": "on"})
    assert obj["spec"]["config"]["elemental"]["install"]["device"] == "/dev/sda"
    assert obj["spec"]["config"]["elemental"]["registration"]["emulated-tpm-seed"] == -1


def test_yaml_editor_goes_through_the_api_body_checks() -> None:
    with pytest.raises(ValidationError, match="aliases"):
        forms.load_yaml("a: &x 1\nb: *x\n")
    with pytest.raises(ValidationError, match="kind: SeedImage posted to machineregistrations"):
        forms.checked({"kind": "SeedImage", "metadata": {"name": "x"}}, "MachineRegistration")


class _NoStore:
    def get(self, *a: Any) -> Any:
        from elemental_operator.store.base import NotFound

        raise NotFound("x")


def test_session_cookie_signed_expiring_and_bound_to_the_admin_token() -> None:
    s = Sessions(_NoStore(), "admin-token-1", b"k" * 32, lifetime=60)  # type: ignore[arg-type]
    assert s.authenticate("wrong") is None
    who = s.authenticate("admin-token-1")
    assert who is not None and who[0] == ADMIN
    cookie, session = s.issue(*who)
    assert s.check(cookie) == session
    assert s.check(cookie, now=time.time() + 61) is None  # expired
    body, _, sig = cookie.partition(".")
    forged = base64.urlsafe_b64encode(
        json.dumps({"r": ADMIN, "u": "x", "e": 2**40, "n": "n", "f": "f"}).encode()
    ).decode()
    assert s.check(forged + "." + sig) is None
    assert s.check(cookie.replace(".", ".x", 1)) is None
    assert s.check(body + ".\u00e9t\u00e9") is None and s.check("\u00e9." + sig) is None  # not ASCII: no 500
    rotated = Sessions(_NoStore(), "admin-token-2", b"k" * 32)  # type: ignore[arg-type]
    assert rotated.check(cookie) is None  # a new admin token ends the old sessions
    assert s.csrf_ok(session, session.csrf) and not s.csrf_ok(session, "") and not s.csrf_ok(session, "x")
    s.revoke(session)
    assert s.check(cookie) is None
    assert VIEWER == "viewer"


# ---- a real operator --------------------------------------------------------------------------------


class DashOperator(Operator):
    """``elemental-operator serve`` on loopback (public URL 127.0.0.1, so the register client on this
    host reaches it), with the controllers and SeedImage builds from $OUT."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.public_url = self.local_url
        self.extra_args = ("--public-url", self.local_url)

    @property
    def dashboard(self) -> str:
        return f"{self.local_url}/dashboard"

    def ca_pem(self) -> str:
        return Path(self.state / "ca.crt").read_text()

    @property
    def ssl(self) -> ssl.SSLContext:
        ctx = self._ssl
        assert isinstance(ctx, ssl.SSLContext)
        return ctx


@pytest.fixture(scope="module")
def dash_operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashOperator]:
    op = DashOperator(tmp_path_factory.mktemp("dashboard"))
    op.start()
    try:
        yield op
    finally:
        op.stop()
        results = Path(__file__).resolve().parents[1] / "results" / "dashboard"
        results.mkdir(parents=True, exist_ok=True)
        shutil.copy(op.log_path, results / "operator.log")


class Client:
    """A cookie-keeping HTTPS client: what a browser sends, written out by hand."""

    def __init__(self, op: DashOperator) -> None:
        self.op = op
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=op.ssl),
            urllib.request.HTTPCookieProcessor(self.jar),
            _NoRedirect,
        )

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(
            self.op.dashboard + path, data=data, method=method, headers=headers or {}
        )
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def login(self, token: str) -> tuple[int, dict[str, str], str]:
        _, _, html = self.request("GET", "/login")
        nonce = re.search(r'name="login_nonce" value="([^"]+)"', html)
        assert nonce, html
        return self.request("POST", "/login", {"login_nonce": nonce.group(1), "token": token, "next": ""})

    def csrf(self, path: str = "/machines") -> str:
        _, _, html = self.request("GET", path)
        m = re.search(r'name="_csrf" value="([^"]+)"', html)
        assert m, html[:500]
        return m.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _inventory(op: DashOperator, name: str) -> None:
    op.create(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineInventory",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"tpmHash": name.encode().hex().ljust(64, "0")},
        }
    )


@pytest.mark.integration
def test_no_cookie_stale_cookie_and_cookie_attributes(dash_operator: DashOperator) -> None:
    op = dash_operator
    anon = Client(op)
    code, headers, _ = anon.request("GET", "/machines")
    assert code == 303 and headers["Location"].startswith("/dashboard/login")
    assert anon.request("GET", "/events")[0] == 401
    assert anon.request("POST", "/machines/fleet-default/x/delete", {"_csrf": "x"})[0] == 401
    # a wrong token does not log in, the admin token does: HttpOnly, Secure, SameSite=Strict, expiry
    assert anon.login("not-the-token")[0] == 401
    code, headers, _ = anon.login(op.token)
    assert code == 303, headers
    cookie = headers["Set-Cookie"]
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Max-Age=28800", "Path=/dashboard"):
        assert attr in cookie, cookie
    assert op.token not in cookie and op.token not in headers["Location"]
    code, headers, html = anon.request("GET", "/machines")
    assert code == 200 and "Machines" in html
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in html and " onclick=" not in html and " style=" not in html  # nothing inline
    # stale cookies: expired (signed with the operator's own key), from another admin token, garbage
    from elemental_operator import cli
    from elemental_operator.store.sql import open_store

    store = open_store(f"sqlite:///{op.state / 'operator.db'}")
    try:
        keys = cli.load_keys(store)
        sessions = Sessions(store, op.token, keys["agent-key"].encode())
        who = sessions.authenticate(op.token)
        assert who is not None
        expired, _ = sessions.issue(*who, now=time.time() - 9 * 3600)
        other, _ = Sessions(store, "another-token", keys["agent-key"].encode()).issue(ADMIN, "admin", "f")
        fresh, fresh_session = sessions.issue(*who)
    finally:
        store.close()
    for stale in (expired, other, "garbage.value"):
        c = Client(op)
        c.jar.set_cookie(_cookie("elemental_dashboard", stale))
        code, headers, _ = c.request("GET", "/machines")
        assert code == 303 and "elemental_dashboard=" in headers.get("Set-Cookie", ""), stale  # cleared
        assert c.request("POST", "/logout", {"_csrf": "x"})[0] == 401
    # the freshly issued one works until logout, then never again
    c = Client(op)
    c.jar.set_cookie(_cookie("elemental_dashboard", fresh))
    assert c.request("GET", "/machines")[0] == 200
    assert c.request("POST", "/logout", {"_csrf": fresh_session.csrf})[0] == 303
    c.jar.set_cookie(_cookie("elemental_dashboard", fresh))
    assert c.request("GET", "/machines")[0] == 303


def _cookie(name: str, value: str) -> http.cookiejar.Cookie:
    return http.cookiejar.Cookie(
        0,
        name,
        value,
        None,
        False,
        "127.0.0.1",
        False,
        False,
        "/dashboard",
        True,
        True,
        None,
        False,
        None,
        None,
        {},
    )


@pytest.mark.integration
def test_csrf_cross_site_and_read_only_sessions(dash_operator: DashOperator) -> None:
    op = dash_operator
    _inventory(op, "csrf-victim")
    admin = Client(op)
    assert admin.login(op.token)[0] == 303
    token = admin.csrf("/machines/fleet-default/csrf-victim")
    path = "/machines/fleet-default/csrf-victim/delete"
    assert admin.request("POST", path, {})[0] == 403  # no CSRF token
    assert admin.request("POST", path, {"_csrf": token[:-2] + "xx"})[0] == 403  # a wrong one
    evil = {"Origin": "https://evil.example"}
    assert admin.request("POST", path, {"_csrf": token}, evil)[0] == 403  # right token, foreign origin
    assert admin.request("POST", path, {"_csrf": token}, {"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert op.try_get("machineinventories", "csrf-victim") is not None
    # a login form posted from elsewhere (login CSRF) is refused too
    assert admin.request("POST", "/login", {"token": op.token, "login_nonce": "x"})[0] == 403
    assert admin.request("POST", "/login", {"token": op.token, "login_nonce": "\u00e9"})[0] == 403
    # a viewer token (the Secret the docs name) reads every page but may not act
    viewer_token = "viewer-" + "v" * 24
    op.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "elemental-dashboard-viewers", "namespace": "cattle-elemental-system"},
            "stringData": {"alice": viewer_token},
        }
    )
    viewer = Client(op)
    assert viewer.login(viewer_token)[0] == 303
    code, _, html = viewer.request("GET", "/machines/fleet-default/csrf-victim")
    assert code == 200 and "read-only" in html and "Delete (reset)" not in html
    vtoken = viewer.csrf("/machines")
    assert viewer.request("POST", path, {"_csrf": vtoken})[0] == 403
    assert op.try_get("machineinventories", "csrf-victim") is not None
    # the admin, same origin, right token: deleted (the inventory has no resettable annotation)
    code, headers, _ = admin.request("POST", path, {"_csrf": token}, {"Origin": op.local_url})
    assert code == 303
    op.wait("csrf-victim gone", lambda: op.try_get("machineinventories", "csrf-victim") is None, 20, 0.2)
    # removing the viewer's token ends its session at the next request
    op.delete("secrets", "elemental-dashboard-viewers", "cattle-elemental-system")
    assert viewer.request("GET", "/machines")[0] == 303


@pytest.mark.integration
def test_pages_render_without_javascript(dash_operator: DashOperator) -> None:
    op = dash_operator
    c = Client(op)
    c.login(op.token)
    for path in (
        "/machines?sort=registered&dir=desc&q=x&label=a%3Db",
        "/registrations",
        "/os",
        "/registrations/new",
        f"/registrations/{NAMESPACE}/default",
    ):
        code, headers, html = c.request("GET", path)
        assert code == 200, (path, html[:300])
        assert headers["Cache-Control"] == "no-store" and '<main id="main"' in html
    assert c.request("GET", "/machines/fleet-default/nope")[0] == 404
    code, headers, js = c.request("GET", "/static/dashboard.js")
    assert code == 200 and "EventSource" in js


@pytest.mark.integration
def test_live_hub_replays_after_render_and_never_sends_secrets(tmp_path: Path) -> None:
    import asyncio

    from elemental_operator.dashboard import live
    from elemental_operator.store.sql import open_store

    store = open_store(f"sqlite:///{tmp_path / 's.db'}", poll_interval=0.02)

    async def scenario() -> None:
        hub = live.Hub(store, lambda inv, secret: f"<tr>{inv['metadata']['name']}</tr>")
        await hub.start()
        try:
            rendered_at = store.current_version()  # a page rendered here ...
            store.create(
                {
                    "apiVersion": API_VERSION,
                    "kind": "MachineInventory",
                    "metadata": {"name": "m1", "namespace": NAMESPACE},
                    "spec": {"tpmHash": "1" * 64},
                }
            )
            store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {"name": "keys", "namespace": NAMESPACE},
                    "stringData": {"k": "secret!"},
                }
            )
            store.create(
                {
                    "apiVersion": API_VERSION,
                    "kind": "MachineInventory",
                    "metadata": {"name": "m2", "namespace": NAMESPACE},
                    "spec": {"tpmHash": "2" * 64},
                }
            )
            for _ in range(200):
                if hub.published >= 2:
                    break
                await asyncio.sleep(0.02)
            q = hub.subscribe(rendered_at)  # ... connects after both changes: replayed
            got = [m for m in (q.get_nowait(), q.get_nowait()) if m is not None]
            assert [m["name"] for m in got] == ["m1", "m2"] and got[0]["row"] == "<tr>m1</tr>"
            assert q.empty() and "secret!" not in json.dumps(got)
            hub._evicted = store.current_version()  # as if the kept messages had moved on
            assert hub.subscribe(rendered_at).get_nowait() == {"type": "reload"}
        finally:
            await hub.stop()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
