"""The fleet dashboard in real headless Chromium (Debian's, driven by Playwright) against a real
``elemental-operator serve``; machines register for real (register client + one swtpm each), install
progress comes from the installer's reporter, plans are applied by the real system agent.

Screenshots of every page land in results/dashboard/ (docs/dashboard.png is one of them).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_registration import swtpm_factory  # noqa: F401
from test_dashboard import DashOperator, dash_operator  # noqa: F401

from elemental_operator.api import API_VERSION
from elemental_operator.controllers.base import encode_plan
from elemental_register.client import HardwareSource, register
from elemental_register.config import RegistrationConfig
from elemental_register.state import State
from elemental_register.tpm import Swtpm

# ruff: noqa: F811  (pytest fixtures imported from other modules)

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "dashboard"
NS = "fleet-default"
TIMEOUT = 20_000  # ms: what a live update may take on these loaded cores


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} missing: the set-up (scripts/setup-host.sh) installs chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, dash_operator: DashOperator) -> Iterator[Any]:
    # The operator's own CA signs its certificate; the browser is told to accept it, as a user
    # who imported <state>/ca.crt would.
    ctx = browser.new_context(
        ignore_https_errors=True, viewport={"width": 1280, "height": 860}, accept_downloads=True
    )
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield pg
    finally:
        ctx.close()
    # A CSP violation or a script error is a console error: none may happen. (A 4xx page, such as
    # a form sent back with its errors as 422, is logged as a failed resource load: expected.)
    assert not [e for e in errors if "the server responded with a status of 4" not in e], errors


def shot(pg: Any, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def login(pg: Any, op: DashOperator) -> None:
    pg.goto(op.dashboard + "/machines")
    assert "/dashboard/login" in pg.url
    pg.get_by_label("Token").fill(op.token)
    pg.get_by_role("button", name="Log in").click()
    pg.wait_for_url("**/dashboard/machines")
    # the stream is open before anything below changes the store
    pg.wait_for_function("() => window.dashboardStream && window.dashboardStream.readyState === 1")


def machine_source(serial: str) -> HardwareSource:
    uid = str(uuid.uuid4())
    smbios = {
        "System Information": {
            "Manufacturer": "QEMU",
            "Product Name": "Standard PC",
            "Serial Number": serial,
            "UUID": uid,
        }
    }
    return HardwareSource(
        smbios=lambda: smbios,
        system_data=lambda: {"Runtime": {"Hostname": serial.lower()}, "CPU": {"TotalCores": "2"}},
        mac=lambda: "52:54:00:00:00:01",
        uuid=lambda: uid,
    )


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking client (it may use asyncio.run) beside Playwright's own event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=120)


def register_machine(
    op: DashOperator, reg: dict[str, Any], sw: Swtpm, serial: str
) -> tuple[str, dict[str, Any]]:
    cfg = RegistrationConfig(url=reg["status"]["registrationURL"], ca_cert=op.ca_pem(), tpm_tcti=sw.tcti)
    result = in_thread(lambda: register(cfg, State(), {}, source=machine_source(serial)))
    agent = result.config["elemental"]["system-agent"]
    return str(agent["secret-name"]), result.config


def _default_registration(op: DashOperator) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        reg = op.get("machineregistrations", "default")
        return reg if (reg.get("status") or {}).get("registrationURL") else None

    result: dict[str, Any] = op.wait("default registration Ready", ready, 30, 0.2)
    return result


def test_machine_appears_live_and_its_progress_bar_moves(
    page: Any, dash_operator: DashOperator, swtpm_factory: Callable[[], Swtpm]
) -> None:
    from elemental_register.cli import progress_reporter

    op = dash_operator
    login(page, op)
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
    reg = _default_registration(op)
    name, config = register_machine(op, reg, swtpm_factory(), "SN-LIVE-1")
    row = page.locator(f"tr[data-key='{NS}/{name}']")
    row.wait_for()
    assert page.evaluate("window.__sameDocument") is True
    assert "serialNumber=SN-LIVE-1" in row.inner_text()
    # a second machine, filtered out by the label box as it arrives
    page.get_by_label("Labels").fill("serialNumber=SN-LIVE-1")
    second, _ = register_machine(op, reg, swtpm_factory(), "SN-LIVE-2")
    page.locator(f"tr[data-key='{NS}/{second}']").wait_for(state="attached")
    assert page.locator(f"tr[data-key='{NS}/{second}']").is_hidden() and row.is_visible()
    page.get_by_label("Labels").fill("")
    shot(page, "machines")

    # the installer's own progress reporter, on the config the operator sent it
    report = progress_reporter(config, op.ca_pem())
    in_thread(report, "partitioning", 10)
    page.get_by_role("link", name=name).click()
    bar = page.locator("#progress")
    page.wait_for_function(
        "() => document.querySelector('#progress') && document.querySelector('#progress').value == 10"
    )
    page.evaluate("window.__sameDocument = true")
    for pct in (35, 80):
        in_thread(report, "copying image", pct)
        page.wait_for_function(f"() => (document.querySelector('#progress') || {{}}).value == {pct}")
    assert page.evaluate("window.__sameDocument") is True
    assert "copying image" in page.locator("#progress-text").inner_text()
    history = page.locator("#history").inner_text()  # every report, as the watcher saw it
    assert all(
        f"{stage}: {pct}%" in history
        for stage, pct in (("partitioning", 10), ("copying image", 35), ("copying image", 80))
    ), history
    assert bar.get_attribute("max") == "100"
    shot(page, "machine")
    # and the table row shows it too
    page.goto(op.dashboard + "/machines")
    assert "80%" in page.locator(f"tr[data-key='{NS}/{name}']").inner_text()
    shot(page, "machines-progress")  # docs/dashboard.png

    # edit labels: the form, a refused value at the field, then saved and shown
    page.get_by_role("link", name=name).click()
    page.get_by_role("link", name="Edit labels").click()
    box = page.get_by_label("One key=value per line")
    box.fill(box.input_value() + "\nsite=bad value!")
    page.get_by_role("button", name="Save labels").click()
    assert "metadata.labels.site" in page.locator("#labels-error").inner_text()
    assert box.get_attribute("aria-invalid") == "true"
    box.fill(box.input_value().replace("site=bad value!", "site=berlin-2"))
    page.get_by_role("button", name="Save labels").click()
    page.wait_for_url(f"**/machines/{NS}/{name}")
    assert "berlin-2" in page.locator("#labels").inner_text()
    assert op.get("machineinventories", name)["metadata"]["labels"]["site"] == "berlin-2"


def _agent(root: Path, config: dict[str, Any]) -> Any:
    """The real system agent on the files the installer writes from the operator's config."""
    from elemental_register.agent.agent import Agent
    from elemental_register.agent.config import AgentConfig
    from elemental_register.agent.k8s import KubeConnection, SecretClient
    from elemental_register.installer import api

    api.install_unmanaged(config, root)
    cfg = AgentConfig.load(root / "etc/rancher/elemental/agent/config.yaml")
    cfg.work_directory = root / "var/lib/elemental/agent/work"
    cfg.applied_plan_directory = root / "var/lib/elemental/agent/applied"
    (root / "etc/os-release").write_text("IMAGE_VERSION=0.1.0\n")
    conn = KubeConnection.load(root / "var/lib/elemental/agent/elemental_connection.json")
    return Agent(cfg, SecretClient(conn), root=root, oem_dir=root / "oem", managed=False)


def _set_plan(op: DashOperator, name: str, plan: dict[str, Any]) -> None:
    for _ in range(20):
        secret = op.get("secrets", name)
        secret.setdefault("data", {})["plan"] = base64.b64encode(encode_plan(plan)).decode()
        try:
            op.update(secret)
            return
        except Exception:
            continue
    raise AssertionError("plan Secret kept changing")


def test_failed_plan_output_then_delete_shows_the_reset_plan(
    page: Any, dash_operator: DashOperator, swtpm_factory: Callable[[], Swtpm], tmp_path: Path
) -> None:
    op = dash_operator
    login(page, op)
    reg = _default_registration(op)
    name, config = register_machine(op, reg, swtpm_factory(), "SN-PLAN-1")
    agent = _agent(tmp_path, config)
    in_thread(agent.step)  # the bootstrap (empty) plan: applied
    page.goto(f"{op.dashboard}/machines/{NS}/{name}")
    page.wait_for_function("() => window.dashboardStream && window.dashboardStream.readyState === 1")
    _set_plan(
        op,
        name,
        {
            "instructions": [
                {
                    "name": "configure",
                    "command": "/bin/sh",
                    "args": ["-c", "echo disk /dev/vdz not found >&2; exit 3"],
                }
            ]
        },
    )
    page.wait_for_function(
        "() => ((document.querySelector('#plan-state') || {}).textContent || '').trim() === 'Pending'"
    )
    in_thread(agent.step)  # fails, and reports its output through the Secret API
    page.locator("#failed-output").wait_for()
    assert "disk /dev/vdz not found" in page.locator("#failed-output").inner_text()
    assert page.locator("#plan-state").inner_text() == "Failed"
    shot(page, "machine-failed-plan")

    # delete → confirmation → the reset plan is the machine's plan now
    page.get_by_role("link", name="Delete (reset)").click()
    assert "resets the machine" in page.locator("main").inner_text()
    shot(page, "machine-delete-confirm")
    page.get_by_role("button", name=f"Delete {name}").click()
    page.wait_for_url(f"**/machines/{NS}/{name}")
    page.wait_for_function("() => document.querySelector('main').innerText.includes('Deleting')")
    page.wait_for_function(
        "() => ((document.querySelector('#plan-type') || {}).textContent || '').trim() === 'reset'"
    )
    assert (
        "of an earlier plan" in page.locator("#h-plan + dl + h3").inner_text()
    )  # the failure was not this plan's
    plan = json.loads(page.locator("#plan-json").text_content())
    # the reset plan of controllers.machineinventory: boot into recovery once, then reboot
    assert "elemental-recovery.conf" in json.dumps(plan["instructions"]), plan
    assert any("Elemental Reset" in base64.b64decode(f["content"]).decode() for f in plan["files"])
    shot(page, "machine-reset")


def test_create_registration_from_the_form_and_download_its_seed_iso(
    page: Any, dash_operator: DashOperator, tmp_path: Path
) -> None:
    op = dash_operator
    login(page, op)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Registrations").click()
    page.get_by_role("link", name="New registration").click()
    shot(page, "registration-new")
    form = page.locator("#registration-form")
    # the API's schema refuses a bad name: the error sits at the name field
    form.get_by_label("Name", exact=True).fill("Edge_Site")
    form.get_by_role("button", name="Create registration").click()
    err = page.locator("#err-name")
    assert "metadata.name" in err.inner_text()
    assert form.get_by_label("Name", exact=True).get_attribute("aria-invalid") == "true"
    # the YAML editor: an unknown field is refused by the schema, the error at the editor
    yaml_box = page.get_by_label("A whole MachineRegistration", exact=False)
    yaml_box.fill(
        "apiVersion: elemental.cattle.io/v1beta1\nkind: MachineRegistration\n"
        "metadata: {name: from-yaml, namespace: fleet-default}\nspec: {machineNmae: typo}\n"
    )
    page.get_by_role("button", name="Create from YAML").click()
    assert "spec.machineNmae: unknown field" in page.locator("#err-yaml").inner_text()
    assert op.try_get("machineregistrations", "from-yaml") is None
    form = page.locator("#registration-form")
    form.get_by_label("Name", exact=True).fill("edge-site")
    form.get_by_label("Install device").fill("/dev/sda")
    form.get_by_role("button", name="Create registration").click()
    page.wait_for_url(f"**/registrations/{NS}/edge-site")
    page.locator("#reg-url").wait_for()  # appears live once the controller made the token
    url = page.locator("#reg-url").input_value()
    assert url.startswith(op.local_url + "/elemental/registration/")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=op.local_url)
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("() => navigator.clipboard.readText()") == url
    with page.expect_download() as dl:
        page.locator("#download-registration").click()
    reg_file = Path(tmp_path / "registration.yaml")
    dl.value.save_as(reg_file)
    assert url in reg_file.read_text()

    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parents[1] / "out")
    if not (out / "seed.efi").is_file() or not (out / "os").is_dir():
        pytest.fail(f"{out} lacks seed.efi and os/: `make iso` builds the seed artifacts first")
    page.get_by_role("button", name="Build seed image").click()
    page.locator("#seed-table tbody tr[data-seed]").first.wait_for()
    shot(page, "registration-seed-building")
    page.locator("#seed-table a[download]").wait_for(timeout=240_000)  # the real iso.pack
    with page.expect_download(timeout=120_000) as dl:
        page.locator("#seed-table a[download]").click()
    iso = tmp_path / dl.value.suggested_filename
    dl.value.save_as(iso)
    with iso.open("rb") as f:
        f.seek(0x8001)
        assert f.read(5) == b"CD001"
        f.seek(0x8028)
        assert f.read(32).decode().strip() == "COS_LIVE"
    shot(page, "registration")
    shutil.copy(RESULTS / "registration.png", RESULTS / "registration-seed-built.png")


def test_os_page_rollout_with_per_machine_progress(page: Any, dash_operator: DashOperator) -> None:
    op = dash_operator
    op.create(
        {
            "apiVersion": API_VERSION,
            "kind": "ManagedOSVersion",
            "metadata": {"name": "v0-2-0", "namespace": NS},
            "spec": {
                "version": "0.2.0",
                "type": "container",
                "metadata": {"upgradeImage": "registry.example/elemental-os:0.2.0"},
            },
        }
    )
    login(page, op)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="OS").click()
    page.get_by_label("Version", exact=True).select_option("v0-2-0")
    page.get_by_role("button", name="Start rollout").click()
    page.wait_for_url("**/dashboard/os#images")
    card = page.locator("article.rollout").first
    card.wait_for()
    page.wait_for_function(
        "() => ((document.querySelector('article.rollout .badge') || {}).textContent || '—').trim() !== '—'"
    )
    assert card.locator("tbody tr").count() >= 1
    states = card.locator("tbody .badge").all_inner_texts()
    assert set(states) <= {"In progress", "Pending", "Upgraded", "Failed", "Resetting"}, states
    shot(page, "os")


def test_cross_site_post_from_another_origin_is_refused(page: Any, dash_operator: DashOperator) -> None:
    op = dash_operator
    op.create(
        {
            "apiVersion": API_VERSION,
            "kind": "MachineInventory",
            "metadata": {"name": "xsite-victim", "namespace": NS},
            "spec": {"tpmHash": "f" * 64},
        }
    )
    login(page, op)
    # another site's page, in the same logged-in browser, posting to the delete action
    page.goto("about:blank")
    page.set_content(
        f'<form method="post" action="{op.dashboard}/machines/{NS}/xsite-victim/delete">'
        '<input name="_csrf" value="guess"><button>win a prize</button></form>'
    )
    with page.expect_response(lambda r: "/delete" in r.url) as resp:
        page.get_by_role("button", name="win a prize").click()
    assert resp.value.status in (401, 403)
    assert op.try_get("machineinventories", "xsite-victim") is not None


def test_phone_viewport_and_keyboard(browser: Any, dash_operator: DashOperator) -> None:
    op = dash_operator
    ctx = browser.new_context(
        ignore_https_errors=True, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
    )
    pg = ctx.new_page()
    try:
        login(pg, op)
        for path in ("/machines", "/registrations", "/os", "/registrations/new"):
            pg.goto(op.dashboard + path)
            # nothing wider than the phone but the tables' own scroll boxes
            assert pg.evaluate("() => document.documentElement.scrollWidth") <= 375, path
            shot(pg, "phone-" + path.strip("/").replace("/", "-"))
        # keyboard: the first Tab reaches the skip link, which moves focus to the content
        pg.goto(op.dashboard + "/machines")
        pg.keyboard.press("Tab")
        assert pg.evaluate("() => document.activeElement.textContent") == "Skip to content"
        pg.keyboard.press("Enter")
        assert pg.evaluate("() => document.activeElement.id") == "main"
    finally:
        ctx.close()
