"""Registration load: N concurrent simulated machines (one real swtpm each) against one operator.

`python -m bench registration`. The operator (HTTPS app + SQLite store in WAL mode with
synchronous=FULL, no controllers) runs in its own process; machines run as threads in this
process, each a full register client flow: TPM auth (AK creation, challenge, ActivateCredential
in swtpm), Version, SMBIOS, SystemDataV2, Annotations, Labels, Get → Config.

The simulated TPMs are provisioned before the timed phases, as a real machine's TPM is by its
manufacturer: the EK is created and persisted at 0x81010001. The AK is *not* pre-created: the
register client makes a fresh AK on every registration, as Elemental's does, so that work is in
the clients' share below.

Two timed phases, so creating and updating are not averaged together:
* first registration: every machine once (the operator creates the MachineInventory);
* re-registration: every machine ROUNDS-1 more times (Update; the data sent is unchanged, so
  the store sees a no-op and writes nothing, as with a periodic re-registration).

Clients, swtpms and the operator share the same cores, so the end-to-end rate is bounded by
the clients' cost as much as the operator's. The table therefore reports, per phase, the CPU
each party spent per registration (operator from /proc/<pid>/stat, clients from getrusage of
this process, swtpms from /proc of each), and the operator's own capacity: registrations per
operator CPU-second. One operator process runs its Python on one core at a time (GIL).

Baselines measured against the same server in the same run: a bare TLS + websocket session
(no auth: the operator looks the token up and sends the registration file) — the transport
floor of every registration; one machine registering sequentially (latency floor); the
server-side attestation alone (AK checks + MakeCredential, no network, no TPM).
Knobs: BENCH_MACHINES (50), BENCH_ROUNDS (4), BENCH_PREFILL (10000), BENCH_AK (ecc|rsa).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MACHINES = int(os.environ.get("BENCH_MACHINES", "50"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
PREFILL = int(os.environ.get("BENCH_PREFILL", "10000"))
AK = os.environ.get("BENCH_AK", "ecc")
TRANSPORT_SESSIONS = 200

SERVER = r"""
import asyncio, ssl, sys, uuid
from pathlib import Path
from aiohttp import web
from elemental_operator.context import OperatorContext
from elemental_operator.server.app import make_app
from elemental_operator.server.tls import make_ca, make_server_cert
from elemental_operator.store.sql import open_store

d = Path(sys.argv[1]); prefill = int(sys.argv[2])
store = open_store(f"sqlite:///{d / 'op.db'}")
for i in range(prefill):
    store.create({"apiVersion": "elemental.cattle.io/v1beta1", "kind": "MachineInventory",
                  "metadata": {"name": f"pre-{i:06d}", "namespace": "fleet"},
                  "spec": {"tpmHash": f"{i:064x}"}})
ca, key = make_ca("bench CA")
cert, ckey = make_server_cert(ca, key, ["127.0.0.1"])
(d / "ca.pem").write_bytes(ca); (d / "tls.crt").write_bytes(cert); (d / "tls.key").write_bytes(ckey)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(d / "tls.crt", d / "tls.key")
octx = OperatorContext(store=store, public_url="", secret_key=b"k" * 32, ca_cert_pem=ca.decode())
token = uuid.uuid4().hex

async def main():
    runner = web.AppRunner(make_app(octx, "admin", d), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    octx.public_url = f"https://127.0.0.1:{port}"
    reg = store.create({"apiVersion": "elemental.cattle.io/v1beta1", "kind": "MachineRegistration",
                        "metadata": {"name": "bench", "namespace": "fleet"},
                        "spec": {"machineName": "m-${System Information/Serial Number}",
                                 "machineInventoryLabels": {"serial": "${System Information/Serial Number}"},
                                 "config": {"elemental": {"install": {"device": "/dev/vda"}}}}})
    reg["status"] = {"registrationToken": token,
                     "registrationURL": f"{octx.public_url}/elemental/registration/{token}",
                     "conditions": [{"type": "Ready", "status": "True", "reason": "SuccessfullyCreated",
                                     "lastTransitionTime": "2026-01-01T00:00:00Z", "message": ""}]}
    store.update_status(reg)
    print(reg["status"]["registrationURL"], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _rss_kb(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _machine_busy_s() -> float:
    """CPU-seconds all processes on the machine have used (busy jiffies from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


@dataclass
class Phase:
    """One timed phase: wall time, CPU seconds per party, latencies."""

    name: str
    wall: float = 0.0
    operator_cpu: float = 0.0
    client_cpu: float = 0.0
    swtpm_cpu: float = 0.0
    machine_cpu: float = 0.0  # every process on the machine, ours included
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def per_reg_ms(self, cpu: float) -> float:
        return cpu / max(1, self.ok) * 1000


class Meter:
    """CPU of the operator, of this process (the clients) and of the swtpms over a block."""

    def __init__(self, operator_pid: int, swtpm_pids: list[int]) -> None:
        self.operator_pid = operator_pid
        self.swtpm_pids = swtpm_pids

    def sample(self) -> tuple[float, float, float, float, float]:
        return (
            time.perf_counter(),
            _cpu_s(self.operator_pid),
            _self_cpu_s(),
            sum(_cpu_s(p) for p in self.swtpm_pids),
            _machine_busy_s(),
        )

    def run(self, phase: Phase, body: Callable[[], None]) -> Phase:
        t0, op0, cl0, sw0, m0 = self.sample()
        body()
        t1, op1, cl1, sw1, m1 = self.sample()
        phase.wall, phase.operator_cpu, phase.client_cpu = t1 - t0, op1 - op0, cl1 - cl0
        phase.swtpm_cpu, phase.machine_cpu = sw1 - sw0, m1 - m0
        return phase


def _attestation_baseline(n: int = 200) -> float:
    from elemental_common import attestation
    from elemental_common import protocol as P
    from elemental_register.tpm import TPM, Swtpm

    with Swtpm() as sw, TPM(sw.tcti, ek_alg="rsa", ak_alg=AK) as tpm:
        header = P.tpm_auth_header(tpm.attestation_data())
    t = time.perf_counter()
    for _ in range(n):
        data = P.parse_authorization(header)
        assert isinstance(data, P.AttestationData)
        ek = attestation.parse_ek(data.ek_pem)
        attestation.make_challenge(ek, attestation.check_ak_parameters(data.ak))
    return n / (time.perf_counter() - t)


def _transport_sessions(url: str, ca: str, n: int) -> list[float]:
    """Bare TLS + websocket sessions without auth (registration file answer), sequential."""
    from websockets.asyncio.client import connect

    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca)
    wss = url.replace("https://", "wss://", 1)
    times: list[float] = []

    async def run() -> None:
        for _ in range(n):
            t = time.perf_counter()
            async with connect(wss, ssl=ctx, compression=None) as ws:
                await ws.recv()
            times.append(time.perf_counter() - t)

    asyncio.run(run())
    return times


def main() -> None:
    from elemental_register.client import HardwareSource, register
    from elemental_register.config import RegistrationConfig
    from elemental_register.state import State
    from elemental_register.tpm import TPM, Swtpm

    tmp = Path(tempfile.mkdtemp(prefix="bench-reg-"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t_boot = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp), str(PREFILL)], stdout=subprocess.PIPE, env=env, text=True
    )
    swtpms: list[Swtpm] = []
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        boot = time.perf_counter() - t_boot
        ca = (tmp / "ca.pem").read_text()
        rss_idle = _rss_kb(server.pid, "VmRSS")
        swtpms = [Swtpm().start() for _ in range(MACHINES)]
        for sw in swtpms:  # manufacturer provisioning: EK persisted at 0x81010001
            with TPM(sw.tcti) as tpm:
                tpm.provision_ek()
        meter = Meter(server.pid, [sw.proc.pid for sw in swtpms if sw.proc is not None])

        def source(i: int) -> HardwareSource:
            smbios = {"System Information": {"Serial Number": f"SN{i:05d}", "UUID": f"{i:032x}"}}
            return HardwareSource(
                smbios=lambda: smbios, system_data=lambda: {"Runtime": {"Hostname": f"h{i}"}}
            )

        def cfg(i: int) -> RegistrationConfig:
            return RegistrationConfig(url=url, ca_cert=ca, tpm_tcti=swtpms[i].tcti, tpm_ak_alg=AK)

        # Baseline: the transport floor (TLS + websocket + token lookup), one session at a time.
        _transport_sessions(url, ca, 10)
        transport = Phase("transport")
        meter.run(
            transport, lambda: transport.latencies.extend(_transport_sessions(url, ca, TRANSPORT_SESSIONS))
        )

        # Baseline: one machine, sequential (client + swtpm + one server round trip, no contention).
        seq = Phase("sequential")
        state = State()

        def sequential() -> None:
            nonlocal state
            for _ in range(10):
                t = time.perf_counter()
                state = register(cfg(0), state, {"bench": "seq"}, source=source(0)).state
                seq.latencies.append(time.perf_counter() - t)

        meter.run(seq, sequential)

        states: dict[int, Any] = {i: State() for i in range(1, MACHINES)}
        lock = threading.Lock()

        def load(phase: Phase, rounds: int) -> None:
            def machine(i: int) -> None:
                for _ in range(rounds):
                    t = time.perf_counter()
                    try:
                        states[i] = register(cfg(i), states[i], {"bench": "load"}, source=source(i)).state
                    except Exception as exc:
                        with lock:
                            phase.failures.append(str(exc))
                        continue
                    with lock:
                        phase.latencies.append(time.perf_counter() - t)

            threads = [threading.Thread(target=machine, args=(i,)) for i in range(1, MACHINES)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()

        first = Phase("first registration (create)")
        meter.run(first, lambda: load(first, 1))
        again = Phase("re-registration (Update, no-op write)")
        meter.run(again, lambda: load(again, ROUNDS - 1))
        rss_peak = _rss_kb(server.pid)
        base = _attestation_baseline()

        n = MACHINES - 1
        print(
            f"operator: HTTPS + SQLite (WAL, synchronous=FULL), {PREFILL} inventories prefilled "
            f"(boot {boot:.1f}s); AK {AK}; {n} concurrent machines, each with its own swtpm "
            f"(EK provisioned before the timed phases; a fresh AK per registration); {os.cpu_count()} CPUs "
            "shared by the operator, the clients and the swtpms\n"
        )
        phases = [first, again]
        print("| measure | " + " | ".join(p.name for p in phases) + " |")
        print("|---|" + "---|" * len(phases))

        def row(label: str, fn: Callable[[Phase], str]) -> None:
            print(f"| {label} | " + " | ".join(fn(p) for p in phases) + " |")

        row("registrations (failures)", lambda p: f"{p.ok} ({len(p.failures)})")
        row(
            "end-to-end registrations/s (clients + swtpms + operator on the same cores)",
            lambda p: f"{p.ok / p.wall:.1f}",
        )
        row(
            "latency p50 / p99",
            lambda p: f"{_pct(p.latencies, 0.5) * 1000:.0f} ms / {_pct(p.latencies, 0.99) * 1000:.0f} ms",
        )
        row("operator CPU per registration", lambda p: f"{p.per_reg_ms(p.operator_cpu):.2f} ms")
        bare = transport.per_reg_ms(transport.operator_cpu)
        row(
            "operator CPU per registration ÷ bare TLS + websocket session (same run; steadier under load)",
            lambda p: f"{p.per_reg_ms(p.operator_cpu) / max(bare, 1e-9):.2f}×",
        )
        row(
            "**operator capacity: registrations per operator CPU-second**",
            lambda p: f"**{p.ok / max(p.operator_cpu, 1e-9):.0f}/s**",
        )
        row(
            "clients CPU per registration (Python register client, this process)",
            lambda p: f"{p.per_reg_ms(p.client_cpu):.2f} ms",
        )
        row(
            "swtpm CPU per registration (AK creation, ActivateCredential)",
            lambda p: f"{p.per_reg_ms(p.swtpm_cpu):.2f} ms",
        )
        row(
            "operator share of all CPU spent",
            lambda p: (
                f"{p.operator_cpu / max(p.operator_cpu + p.client_cpu + p.swtpm_cpu, 1e-9) * 100:.0f} %"
            ),
        )
        row("operator busy (CPU-s per wall-s)", lambda p: f"{p.operator_cpu / p.wall:.2f} cores")
        row(
            "other processes on the machine (not this bench) during the phase",
            lambda p: (
                f"{max(0.0, p.machine_cpu - p.operator_cpu - p.client_cpu - p.swtpm_cpu) / p.wall:.2f} cores"
            ),
        )
        print()
        print("| baseline (same server, same run) | value |")
        print("|---|---|")
        print(
            f"| bare TLS + websocket session, no auth ({TRANSPORT_SESSIONS} sequential): operator CPU / "
            f"latency p50 | {transport.per_reg_ms(transport.operator_cpu):.2f} ms / "
            f"{statistics.median(transport.latencies) * 1000:.1f} ms "
            f"(→ {transport.ok / max(transport.operator_cpu, 1e-9):.0f} sessions per operator CPU-s) |"
        )
        print(
            f"| one machine registering sequentially (Update): latency p50 / operator CPU | "
            f"{statistics.median(seq.latencies) * 1000:.0f} ms / {seq.per_reg_ms(seq.operator_cpu):.2f} ms |"
        )
        print(f"| server attestation only (parse, AK checks, MakeCredential), in process | {base:.0f}/s |")
        print(f"| operator RSS idle / peak (VmHWM) | {rss_idle / 1024:.0f} MB / {rss_peak / 1024:.0f} MB |")
        print(
            f"\nWith {n} machines registering at once, the last one waits for the {n - 1} before it: "
            f"p99 ≈ {n} / rate, so p99 < 200 ms needs ≥ {n / 0.2:.0f} registrations/s end to end. "
            "Operator capacity is per CPU-second of the one operator process (its Python runs on "
            "one core at a time); the clients' and swtpms' CPU is what real machines spend on their own."
        )
        failures = first.failures + again.failures
        if failures:
            print("\nfirst failures:", *sorted(set(failures))[:3], sep="\n  ")
    finally:
        for sw in swtpms:
            sw.stop()
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
