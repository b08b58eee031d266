"""Hostile clients: 50 legit machines register while attackers hammer the operator (issue 11).

`python -m bench hostile`. One real `elemental-operator serve` process (HTTPS, SQLite, no
controllers, default limits) on 127.0.0.1. Two phases against it, each with fresh identities:

* quiet: LEGIT machines register (CONCURRENCY at a time), nothing else runs;
* attacked: the same, while an attacker process (loopback source addresses 127.0.0.2-.9, so the
  per-address cap applies to them and not to the machines on 127.0.0.1) keeps up, until the
  machines are done:
  - HALF_OPEN silent TCP sockets (reopened whenever the server drops them),
  - slowloris: TLS handshakes whose request headers never end,
  - garbage and oversized frames (random bytes, unknown types, a 5 MB frame, text frames),
  - label bombs (``${a}`` x 800 000, ~4 MB) and annotation floods (sessions of 60 KB values).

Machines use PLAIN (MAC) authentication, so the figures are the operator's and not the cost of
50 swtpm processes on a 2-core host. Reported: legit success rate, p50/p99 latency of a whole
registration per phase, operator peak RSS (VmHWM), bytes the operator logged during the phase,
its open descriptors (peak). Loops are bounded by a deadline; nothing leaves loopback.
Knobs: BENCH_LEGIT (50), BENCH_CONCURRENCY (10), BENCH_HALF_OPEN (400).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import ssl
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hostile_serve import ServeProc  # noqa: E402

from elemental_common import protocol as P  # noqa: E402

LEGIT = int(os.environ.get("BENCH_LEGIT", "50"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "10"))
HALF_OPEN = int(os.environ.get("BENCH_HALF_OPEN", "400"))
ATTACK_WARMUP = 5.0
ATTACK_DEADLINE = 300.0  # seconds: the attacker stops by then whatever happens
ATTACKER_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 10)]


def add_registration(op: ServeProc) -> tuple[str, str]:
    """A Ready MachineRegistration (auth mac) written into the operator's database; (URL, CA)."""
    from elemental_operator.store.sql import open_store

    store = open_store(f"sqlite:///{op.state / 'operator.db'}")
    token = uuid.uuid4().hex
    try:
        reg = store.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "MachineRegistration",
                "metadata": {"name": "bench", "namespace": "fleet-default"},
                "spec": {
                    "machineName": "m-${System Information/UUID}",
                    "machineInventoryLabels": {"serial": "${System Information/Serial Number}"},
                    "config": {"elemental": {"registration": {"auth": "mac"}}},
                },
            }
        )
        url = f"{op.url}/elemental/registration/{token}"
        reg["status"] = {
            "registrationToken": token,
            "registrationURL": url,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "SuccessfullyCreated",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
        store.update_status(reg)
    finally:
        store.close()
    return url, (op.state / "ca.crt").read_text()


# ---- legit machines --------------------------------------------------------------------------


def register_machines(
    url: str, ca: str, prefix: int, count: int = LEGIT
) -> tuple[int, list[float], list[str]]:
    from elemental_register.client import HardwareSource, register
    from elemental_register.config import RegistrationConfig
    from elemental_register.state import State

    def one(i: int) -> float | str:
        mac = f"52:54:{prefix:02x}:00:{i >> 8:02x}:{i & 255:02x}"
        uid = str(uuid.UUID(int=(prefix << 64) + i))
        src = HardwareSource(
            smbios=lambda: {
                "System Information": {"UUID": uid, "Serial Number": f"SN{i}", "Manufacturer": "QEMU"}
            },
            system_data=lambda: {"Runtime": {"Hostname": f"m{i}"}},
            mac=lambda: mac,
            uuid=lambda: uid,
        )
        cfg = RegistrationConfig(url=url, ca_cert=ca, auth="mac")
        start = time.monotonic()
        try:
            register(cfg, State(), {"site": "bench"}, source=src)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return time.monotonic() - start

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, range(count)))
    times = [r for r in results if isinstance(r, float)]
    errors = [r for r in results if isinstance(r, str)]
    return len(times), times, errors


# ---- attackers (a separate process) --------------------------------------------------------


def _ssl_ctx(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca)


async def _half_open(port: int, stop: Stop, counts: dict[str, int]) -> None:
    """Keep HALF_OPEN silent sockets open, spread over the attacker addresses."""
    socks: list[asyncio.StreamWriter] = []

    async def opener(addr: str, n: int) -> None:
        while stop.running():
            alive = [w for w in socks if not w.is_closing()]
            if sum(1 for w in alive if w.get_extra_info("sockname")[0] == addr) < n:
                try:
                    _, w = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port, local_addr=(addr, 0)), 5
                    )
                    socks.append(w)
                    counts["half_open"] += 1
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(0.05)

    per = max(1, HALF_OPEN // len(ATTACKER_ADDRESSES))
    await asyncio.gather(*(opener(a, per) for a in ATTACKER_ADDRESSES))
    for w in socks:
        w.close()


async def _slowloris(port: int, ca: str, stop: Stop, counts: dict[str, int]) -> None:
    rng = random.Random(1)
    while stop.running():
        try:
            _, w = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    port,
                    ssl=_ssl_ctx(ca),
                    server_hostname="127.0.0.1",
                    local_addr=(rng.choice(ATTACKER_ADDRESSES), 0),
                ),
                5,
            )
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            counts["slowloris"] += 1
            for _ in range(30):
                if not stop.running() or w.is_closing():
                    break
                w.write(b"X-a: b\r\n")
                await asyncio.sleep(0.5)
            w.close()
        except (OSError, TimeoutError, ssl.SSLError):
            await asyncio.sleep(0.1)


async def _sessions(url: str, ca: str, stop: Stop, counts: dict[str, int], kind: str, seed: int) -> None:
    from websockets.asyncio.client import connect

    rng = random.Random(seed)
    ws_url = url.replace("https://", "wss://")
    while stop.running():
        addr = rng.choice(ATTACKER_ADDRESSES)
        header = P.plain_auth_header(f"02:00:00:{rng.randrange(256):02x}:{rng.randrange(256):02x}:01")
        try:
            async with asyncio.timeout(15):
                async with connect(
                    ws_url,
                    ssl=_ssl_ctx(ca),
                    additional_headers={"Authorization": header},
                    max_size=None,
                    compression=None,
                    open_timeout=10,
                    close_timeout=1,
                    local_addr=(addr, 0),
                ) as ws:
                    await ws.recv()
                    frames: list[bytes | str]
                    if kind == "garbage":
                        frames = [
                            bytes([rng.randrange(13, 256)]) + rng.randbytes(64),
                            bytes([P.MsgType.SMBIOS]) + b"{" * 2000,
                            P.encode_frame(P.MsgType.VERSION, b"\x01\x02"),
                            "text frame",
                            bytes([P.MsgType.SMBIOS]) + b" " * (5 << 20),
                        ]
                        frames = [rng.choice(frames)]
                    elif kind == "labels":
                        frames = [
                            P.encode_frame(P.MsgType.LABELS, P.go_json({"x": "${a}" * 800_000})),
                            P.encode_frame(P.MsgType.GET),
                        ]
                    else:
                        # 9 messages of 4 x 60 KB, distinct keys: over the 256 KiB per inventory.
                        frames = [
                            P.encode_frame(
                                P.MsgType.ANNOTATIONS,
                                P.go_json({f"a{i}-{j}": "v" * 60_000 for j in range(4)}),
                            )
                            for i in range(9)
                        ]
                        frames.append(P.encode_frame(P.MsgType.GET))
                    for frame in frames:
                        await ws.send(frame)
                        await ws.recv()
            counts[kind] += 1
        except Exception:
            counts[kind] += 1  # refused or cut off: what the server should do


class Stop:
    """The attack runs until the parent says stop, or its deadline (bounded whatever happens)."""

    def __init__(self, event: Any, seconds: float) -> None:
        self.event = event
        self.deadline = time.monotonic() + seconds

    def running(self) -> bool:
        return not self.event.is_set() and time.monotonic() < self.deadline


def attacker(url: str, ca: str, port: int, event: Any, counts_out: Any) -> None:
    counts: dict[str, int] = {"half_open": 0, "slowloris": 0, "garbage": 0, "labels": 0, "annotations": 0}
    stop = Stop(event, ATTACK_DEADLINE)

    async def main() -> None:
        await asyncio.gather(
            _half_open(port, stop, counts),
            *(_slowloris(port, ca, stop, counts) for _ in range(4)),
            *(_sessions(url, ca, stop, counts, "garbage", s) for s in range(4)),
            *(_sessions(url, ca, stop, counts, "labels", 10 + s) for s in range(2)),
            *(_sessions(url, ca, stop, counts, "annotations", 20 + s) for s in range(2)),
        )

    asyncio.run(main())
    counts_out.update(counts)


# ---- measurement -----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    ok: int
    times: list[float]
    errors: list[str]
    log_bytes: int
    fds_peak: int
    rss_peak_kib: int

    def pct(self, q: float) -> float:
        if not self.times:
            return float("nan")
        s = sorted(self.times)
        return s[min(len(s) - 1, int(q * len(s)))]


def _hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_phase(
    op: ServeProc, url: str, ca: str, name: str, prefix: int, attack: bool
) -> tuple[Phase, dict[str, int]]:
    log_before = op.log_path.stat().st_size
    fds_peak = op.open_fds()
    done = threading.Event()

    def sample() -> None:
        nonlocal fds_peak
        while not done.wait(0.2):
            try:
                fds_peak = max(fds_peak, op.open_fds())
            except OSError:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    counts: dict[str, int] = {}
    proc = None
    if attack:
        manager = multiprocessing.Manager()
        shared = manager.dict()
        stop_event = multiprocessing.Event()
        proc = multiprocessing.Process(
            target=attacker, args=(url, ca, op.port, stop_event, shared), daemon=True
        )
        proc.start()
        # Let the attack reach full strength before the first legit machine.
        # Let the attack reach full strength (sockets open, bombs and floods going for
        # ATTACK_WARMUP seconds) before the first legit machine.
        started = time.monotonic()
        while time.monotonic() - started < 20 and (
            op.open_fds() < HALF_OPEN // 2 or time.monotonic() - started < ATTACK_WARMUP
        ):
            time.sleep(0.1)
    ok, times, errors = register_machines(url, ca, prefix)
    if proc is not None:
        stop_event.set()
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        counts = dict(shared)
    done.set()
    sampler.join()
    phase = Phase(
        name, ok, times, errors, op.log_path.stat().st_size - log_before, fds_peak, _hwm_kib(op.proc.pid)
    )
    return phase, counts


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        op = ServeProc(Path(tmp) / "state")
        try:
            url, ca = add_registration(op)
            register_machines(url, ca, 0, count=2)  # warm-up (first TLS contexts, imports): not counted
            quiet, _ = run_phase(op, url, ca, "quiet", 1, attack=False)
            attacked, counts = run_phase(op, url, ca, "attacked", 2, attack=True)
            healthy = op.get("/healthz")[0]
        finally:
            op.stop()
    print(f"{LEGIT} legit machines ({CONCURRENCY} at a time, PLAIN auth) against one operator on 127.0.0.1\n")
    print("| phase | legit ok | p50 s | p99 s | operator peak RSS | log bytes | open fds (peak) |")
    print("|---|---|---|---|---|---|---|")
    for ph in (quiet, attacked):
        print(
            f"| {ph.name} | {ph.ok}/{LEGIT} ({100 * ph.ok / LEGIT:.0f} %) | {ph.pct(0.5):.3f} "
            f"| {ph.pct(0.99):.3f} | {ph.rss_peak_kib / 1024:.0f} MiB | {ph.log_bytes} | {ph.fds_peak} |"
        )
    ratio = attacked.pct(0.99) / quiet.pct(0.99) if quiet.times and attacked.times else float("nan")
    print(f"\np99 attacked / quiet: {ratio:.2f}x; /healthz after the attack: {healthy}")
    print("attack sessions/sockets opened: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for ph in (quiet, attacked):
        if ph.errors:
            print(f"{ph.name} errors (first 3): {ph.errors[:3]}")
    print("targets: 100 % legit, p99 <= 2x quiet, RSS <= 200 MB, log growth <= 1 MB")


if __name__ == "__main__":
    main()
