"""Registration load: N concurrent simulated machines (one real swtpm each) against one operator.

`python -m bench registration`. The operator (HTTPS app + SQLite store, no controllers) runs in
its own process; machines run as threads in this process, each a full register client flow:
TPM auth (AK creation, challenge, ActivateCredential in swtpm), Version, SMBIOS, SystemDataV2,
Annotations, Labels, Get → Config. Every machine registers ROUNDS times (first + Updates).
Prints registrations/s, p50/p99 latency, and the operator's peak RSS (VmHWM) after the runs,
with BENCH_PREFILL (default 10000) inventories already in the store.

Baselines in the same run: the server-side attestation alone (AK checks + MakeCredential, no
network, no TPM), and one machine registering sequentially (client + TPM latency floor).
Knobs: BENCH_MACHINES (50), BENCH_ROUNDS (4), BENCH_AK (ecc|rsa, default ecc).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MACHINES = int(os.environ.get("BENCH_MACHINES", "50"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
PREFILL = int(os.environ.get("BENCH_PREFILL", "10000"))
AK = os.environ.get("BENCH_AK", "ecc")

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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _attestation_baseline(n: int = 200) -> float:
    from elemental_register import attestation
    from elemental_register import protocol as P
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

        def source(i: int) -> HardwareSource:
            smbios = {"System Information": {"Serial Number": f"SN{i:05d}", "UUID": f"{i:032x}"}}
            return HardwareSource(
                smbios=lambda: smbios, system_data=lambda: {"Runtime": {"Hostname": f"h{i}"}}
            )

        def cfg(i: int) -> RegistrationConfig:
            return RegistrationConfig(url=url, ca_cert=ca, tpm_tcti=swtpms[i].tcti, tpm_ak_alg=AK)

        # Baseline: one machine, sequential (client + swtpm + one server round trip, no contention).
        seq: list[float] = []
        state = State()
        for _ in range(10):
            t = time.perf_counter()
            state = register(cfg(0), state, {"bench": "seq"}, source=source(0)).state
            seq.append(time.perf_counter() - t)

        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def machine(i: int) -> None:
            st = State()
            for _ in range(ROUNDS):
                t = time.perf_counter()
                try:
                    st = register(cfg(i), st, {"bench": "load"}, source=source(i)).state
                except Exception as exc:
                    with lock:
                        failures.append(str(exc))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)

        threads = [threading.Thread(target=machine, args=(i,)) for i in range(1, MACHINES)]
        cpu0 = _cpu_s(server.pid)
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        cpu_per_reg = (_cpu_s(server.pid) - cpu0) / max(1, len(latencies))
        ok = len(latencies)
        rss_peak = _rss_kb(server.pid)
        base = _attestation_baseline()

        print(
            f"operator: HTTPS + SQLite, {PREFILL} inventories prefilled (boot {boot:.1f}s); AK {AK}; "
            f"{MACHINES - 1} concurrent machines x {ROUNDS} rounds, each with its own swtpm\n"
        )
        print("| measure | value |")
        print("|---|---|")
        print(f"| registrations/s ({MACHINES - 1} concurrent, end to end) | {ok / wall:.1f} |")
        p50, p99 = _pct(latencies, 0.5) * 1000, _pct(latencies, 0.99) * 1000
        print(f"| latency p50 / p99 | {p50:.0f} ms / {p99:.0f} ms |")
        print(f"| failures | {len(failures)} |")
        print(
            f"| operator CPU per registration (→ capacity per core) | {cpu_per_reg * 1000:.1f} ms "
            f"(→ {1 / cpu_per_reg:.0f}/s) |"
        )
        print(
            f"| baseline: one machine sequential, p50 | {statistics.median(seq) * 1000:.0f} ms "
            f"({1 / statistics.median(seq):.1f}/s) |"
        )
        print(f"| baseline: server attestation only (parse, AK checks, MakeCredential) | {base:.0f}/s |")
        print(f"| operator RSS idle / peak (VmHWM) | {rss_idle / 1024:.0f} MB / {rss_peak / 1024:.0f} MB |")
        if failures:
            print("\nfirst failures:", *sorted(set(failures))[:3], sep="\n  ")
        print(
            "\nClients, swtpms and the operator share the same 2 cores: the end-to-end rate is a floor "
            "for the operator, not its ceiling."
        )
    finally:
        for sw in swtpms:
            sw.stop()
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
