"""Dashboard: 1,000 machines in real Chromium — time to first render and live-update latency.

`python -m bench dashboard`. A real ``elemental-operator serve`` (HTTPS, SQLite, --no-controllers so
only the measured writes move the store) holds BENCH_DASHBOARD_MACHINES (default 1000)
MachineInventories; Debian's chromium (Playwright) opens the Machines page. Baselines measured in the
same run: the admin API's JSON list of the same objects (server side), the same page with JavaScript
off (what the script adds to first render), and the admin API's watch stream seeing the same writes
(what the SSE path adds to an update).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "e2e")]

N = int(os.environ.get("BENCH_DASHBOARD_MACHINES", "1000"))
UPDATES = int(os.environ.get("BENCH_DASHBOARD_UPDATES", "60"))
BURST = int(os.environ.get("BENCH_DASHBOARD_BURST", "1000"))
NS = "fleet-default"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _inv(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {
            "name": f"m-{i:05d}",
            "namespace": NS,
            "labels": {"pool": f"p{i % 10}", "serialNumber": f"SN{i:05d}", "manufacturer": "QEMU"},
        },
        "spec": {"tpmHash": f"{i:064x}"},
    }


def _cond(pct: int, note: str = "") -> dict[str, Any]:
    return {
        "type": "InstallProgress",
        "status": "True" if pct >= 100 else "Unknown",
        "reason": "Copying",
        "message": f"copying: {pct}%{note}",
        "lastTransitionTime": "2026-12-02T00:00:00Z",
    }


def _fill(db: Path) -> None:
    from sqlalchemy import event

    from elemental_operator.store.sql import SqlStore, _sqlite_engine

    engine = _sqlite_engine(f"sqlite:///{db}")
    # filling only: the figures are about the dashboard, not about durable inserts
    event.listen(engine, "connect", lambda c, _r: c.execute("PRAGMA synchronous=OFF"))
    store = SqlStore(engine)
    for i in range(N):
        obj = store.create(_inv(i))
        obj["status"] = {"conditions": [_cond(i % 100)]}
        store.update_status(obj)
    store.close()


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


class Watcher(threading.Thread):
    """The admin API's watch stream (what elementalctl get -w reads): arrival time per write."""

    def __init__(self, op: Any) -> None:
        super().__init__(daemon=True)
        self.op = op
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        rv = self.op.request("GET", f"/elemental/admin/v1/namespaces/{NS}/machineinventories?limit=1")
        since = rv["metadata"]["resourceVersion"]
        req = urllib.request.Request(
            self.op.local_url + f"/elemental/admin/v1/machineinventories?watch=1&resourceVersion={since}",
            headers={"Authorization": f"Bearer {self.op.token}"},
        )
        with urllib.request.urlopen(req, context=self.op.ssl, timeout=600) as resp:
            self.ready.set()
            for line in resp:
                ev = json.loads(line)
                obj = ev["object"]
                for c in (obj.get("status") or {}).get("conditions") or []:
                    if c["type"] == "InstallProgress":
                        self.seen[f"{obj['metadata']['name']}:{c['message']}"] = time.time()


def _write(op: Any, i: int, pct: int, note: str = "") -> None:
    obj = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineInventory",
        "metadata": {"name": f"m-{i:05d}", "namespace": NS},
        "status": {"conditions": [_cond(pct, note)]},
    }
    op.request("PUT", f"/elemental/admin/v1/namespaces/{NS}/machineinventories/m-{i:05d}/status", obj)


OBSERVER_JS = """() => {
  window.__seen = {};
  window.__longtask = 0;
  const tb = document.querySelector('#machines tbody');
  new MutationObserver((ms) => { const t = performance.timeOrigin + performance.now();
    for (const m of ms) for (const n of m.addedNodes) if (n.nodeType === 1 && n.dataset.key) {
      const p = n.querySelector('.pct');
      window.__seen[n.dataset.key + ':' + (p ? p.textContent : '')] = t; } })
    .observe(tb, {childList: true});
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__longtask += e.duration; })
    .observe({type: 'longtask', buffered: false});
}"""

TIMING_JS = """() => { const n = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {ttfb: n.responseStart, dcl: n.domContentLoadedEventEnd, load: n.loadEventEnd,
          fcp: fcp ? fcp.startTime : null, rows: document.querySelectorAll('#machines tbody tr').length,
          bytes: n.transferSize}; }"""


def _login(pg: Any, op: Any) -> None:
    pg.goto(op.dashboard + "/login")
    pg.get_by_label("Token").fill(op.token)
    pg.get_by_role("button", name="Log in").click()
    pg.wait_for_url("**/dashboard/machines", timeout=120_000)


def _first_render(browser: Any, op: Any, js: bool, runs: int = 5) -> dict[str, float]:
    ctx = browser.new_context(
        ignore_https_errors=True, java_script_enabled=js, viewport={"width": 1280, "height": 900}
    )
    pg = ctx.new_page()
    _login(pg, op)
    out: dict[str, list[float]] = {}
    for _ in range(runs):
        pg.goto(op.dashboard + "/machines", wait_until="load", timeout=120_000)
        timing = pg.evaluate(TIMING_JS)  # evaluate() is not subject to the page's CSP
        assert timing["rows"] == N, timing
        for k in ("ttfb", "dcl", "load", "fcp"):
            if timing[k] is not None:
                out.setdefault(k, []).append(float(timing[k]))
        out.setdefault("bytes", []).append(float(timing["bytes"]))
    ctx.close()
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    from playwright.sync_api import sync_playwright
    from test_dashboard import DashOperator

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    op = DashOperator(tmp)
    op.extra_args = (*op.extra_args, "--no-controllers")  # type: ignore[assignment]
    op.state.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    _fill(op.state / "operator.db")
    fill_s = time.perf_counter() - t
    op.start()
    rows: list[tuple[str, str, str]] = []
    try:
        # server side: the dashboard's HTML against the admin API's JSON for the same N objects
        def get(url: str, headers: dict[str, str]) -> tuple[float, int]:
            req = urllib.request.Request(url, headers=headers)
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, context=op.ssl, timeout=120) as resp:
                n = len(resp.read())
            return (time.perf_counter() - t0) * 1000, n

        api = [
            get(
                op.local_url + f"/elemental/admin/v1/namespaces/{NS}/machineinventories",
                {"Authorization": f"Bearer {op.token}"},
            )
            for _ in range(7)
        ]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            ctx = browser.new_context(ignore_https_errors=True)
            pg = ctx.new_page()
            _login(pg, op)
            cookie = "; ".join(f"{c['name']}={c['value']}" for c in ctx.cookies())
            html = [get(op.dashboard + "/machines", {"Cookie": cookie}) for _ in range(7)]
            api_ms, html_ms = statistics.median(a for a, _ in api), statistics.median(h for h, _ in html)
            rows.append(
                (
                    f"server: Machines page, {N} rows (HTML) ms",
                    f"{html_ms:.0f} ({html[0][1] / 1024:.0f} KiB)",
                    f"{html_ms / api_ms:.2f}× admin API LIST JSON {api_ms:.0f} ms "
                    f"({api[0][1] / 1024:.0f} KiB)",
                )
            )
            with_js = _first_render(browser, op, js=True)
            no_js = _first_render(browser, op, js=False)
            rows.append(
                (
                    f"browser: first contentful paint, {N} rows ms",
                    f"{with_js['fcp']:.0f}",
                    f"{with_js['fcp'] / no_js['fcp']:.2f}× the same page without JavaScript "
                    f"({no_js['fcp']:.0f})",
                )
            )
            rows.append(
                (
                    f"browser: load event, {N} rows ms",
                    f"{with_js['load']:.0f}",
                    f"{with_js['load'] / no_js['load']:.2f}× without JavaScript ({no_js['load']:.0f}); "
                    f"TTFB {with_js['ttfb']:.0f}",
                )
            )

            # live updates: one write at a time, then a burst; the admin watch sees the same writes
            watcher = Watcher(op)
            watcher.start()
            watcher.ready.wait(30)
            pg.goto(op.dashboard + "/machines", wait_until="load", timeout=120_000)
            pg.wait_for_function("() => window.dashboardStream && window.dashboardStream.readyState === 1")
            pg.evaluate(OBSERVER_JS)
            dash, base = [], []
            for k in range(UPDATES):
                i = (k * 37) % N
                pct = 101 + k  # a value no row had: the update is unambiguous
                key = f"m-{i:05d}:copying: {pct}%"
                t0 = time.time()
                _write(op, i, pct)
                seen_key = f"{NS}/m-{i:05d}:100%"  # the bar clamps at 100; the key carries the name
                pg.wait_for_function(
                    f"() => window.__seen[{json.dumps(seen_key)}] !== undefined", timeout=30_000
                )
                t_dom = pg.evaluate(f"() => window.__seen[{json.dumps(seen_key)}]") / 1000
                pg.evaluate(f"() => delete window.__seen[{json.dumps(seen_key)}]")
                deadline = time.time() + 30
                while key not in watcher.seen and time.time() < deadline:
                    time.sleep(0.005)
                dash.append((t_dom - t0) * 1000)
                base.append((watcher.seen[key] - t0) * 1000)
            rows.append(
                (
                    "update latency (write → row replaced in the DOM) p50/p99 ms",
                    f"{_pct(dash, 0.5):.0f} / {_pct(dash, 0.99):.0f}",
                    f"{_pct(dash, 0.5) / _pct(base, 0.5):.2f}× admin watch stream p50/p99 "
                    f"{_pct(base, 0.5):.0f} / {_pct(base, 0.99):.0f} ({UPDATES} writes)",
                )
            )
            pg.evaluate("() => { window.__seen = {}; window.__longtask = 0; }")
            n = min(BURST, N)
            writers = 4
            t0 = time.time()

            print(f"(burst of {n} writes)", file=sys.stderr, flush=True)

            def burst(w: int) -> None:
                for i in range(w, n, writers):
                    _write(op, i, 50 + (i % 7), " burst")  # never the stored text: a no-op write is no event

            threads = [threading.Thread(target=burst, args=(w,)) for w in range(writers)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            t_written = time.time()
            try:
                pg.wait_for_function(f"() => Object.keys(window.__seen).length >= {n}", timeout=120_000)
            except Exception:
                seen = pg.evaluate("() => window.__seen ? Object.keys(window.__seen).length : -1")
                raise RuntimeError(f"only {seen} of {n} rows updated in the browser") from None
            t_last = pg.evaluate("() => Math.max(...Object.values(window.__seen))") / 1000
            long_ms = pg.evaluate("() => window.__longtask")
            rows.append(
                (
                    f"burst: {n} writes ({writers} writers) → all rows updated s",
                    f"{t_last - t0:.1f}",
                    f"writes took {t_written - t0:.1f} s ({n / (t_written - t0):.0f}/s); browser long tasks "
                    f"{long_ms:.0f} ms in all",
                )
            )
            browser.close()
    finally:
        op.stop()
    print(f"| measure (N={N} machines) | value | baseline / note |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(
        f"\n(store filled in {fill_s:.1f} s; operator with --no-controllers; chromium {CHROMIUM}, headless)"
    )
