"""Files served, admin API input and storage faults against a real `elemental-operator serve`
(issue 11 items 3, 5, 6): confined SeedImage downloads, 413/422 and status-only-through-/status,
a full disk, file modes, the SQLite controller lease after a kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_serve import ServeProc

from elemental_common.consts import SEEDIMAGE_ARTIFACT_ANNOTATION
from elemental_operator.controllers.base import Manager
from elemental_operator.store.sql import open_store

# Every test here runs `elemental-operator serve` as a process (or mounts a tmpfs).
pytestmark = pytest.mark.integration


API = "/elemental/admin/v1/namespaces/fleet-default"
DIGEST = "0123456789abcdef01234567"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProc]:
    op = ServeProc(tmp_path / "state")
    yield op
    op.stop()


def _admin(
    op: ServeProc, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    code, _, out = op.request(method, API + path, body=data, token=op.admin_token(), timeout=30)
    try:
        return code, json.loads(out)
    except ValueError:
        return code, out


def _ready_seedimage(op: ServeProc, name: str, artifact: str) -> str:
    """A SeedImage written straight into the database (as a controller bug or a hand edit
    could): the download handler must not trust it."""
    store = open_store(f"sqlite:///{op.state / 'operator.db'}")
    try:
        si = store.create(
            {
                "apiVersion": "elemental.cattle.io/v1beta1",
                "kind": "SeedImage",
                "metadata": {
                    "name": name,
                    "namespace": "fleet-default",
                    "annotations": {SEEDIMAGE_ARTIFACT_ANNOTATION: artifact},
                },
                "spec": {"registrationRef": {"name": "default"}},
            }
        )
        token = f"tok-{name}"
        si["status"] = {
            "downloadToken": token,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "x",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {
                    "type": "SeedImageReady",
                    "status": "True",
                    "reason": "x",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
            ],
        }
        store.update_status(si)
    finally:
        store.close()
    return token


def test_seedimage_download_reads_only_its_own_build_directory(serve: ServeProc) -> None:
    build = serve.state / "seedimages" / DIGEST
    build.mkdir(parents=True)
    (build / "reg.iso").write_bytes(b"ISO")
    (build / "reg.iso.sha256").write_text("abc  reg.iso\n")
    token = _ready_seedimage(serve, "good", f"{DIGEST}/reg.iso")
    assert serve.get(f"/elemental/seedimage/{token}/reg.iso") == (200, b"ISO")
    assert serve.get(f"/elemental/seedimage/{token}/reg.iso.sha256")[0] == 200

    other = serve.state / "seedimages" / ("f" * 24)
    other.mkdir()
    (other / "evil.iso").symlink_to(serve.state / "admin-token")
    for i, (artifact, name) in enumerate(
        [
            ("../admin-token", "admin-token"),
            ("x/../../admin-token", "admin-token"),
            ("../../../../../etc/hostname", "hostname"),
            (f"{DIGEST}/../../admin-token", "admin-token"),
            ("f" * 24 + "/evil.iso", "evil.iso"),  # a symlink out of the build directory
            (f"{DIGEST}/reg.iso", "../admin-token"),
        ]
    ):
        token = _ready_seedimage(serve, f"bad{i}", artifact)
        code, body = serve.get(f"/elemental/seedimage/{token}/{name}")
        assert code in (400, 404) and serve.admin_token().encode() not in body, artifact

    # And the admin API refuses such an annotation where it is written.
    obj = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "SeedImage",
        "metadata": {"name": "forged", "annotations": {SEEDIMAGE_ARTIFACT_ANNOTATION: "../admin-token"}},
        "spec": {"registrationRef": {"name": "default"}},
    }
    code, out = _admin(serve, "POST", "/seedimages", obj)
    assert code == 422 and "invalid artifact" in out["message"]


def test_admin_body_limits_and_types(serve: ServeProc) -> None:
    big = b"a: " + b"x" * (70 << 20) + b"\n"
    start = time.monotonic()
    code, _ = _admin(serve, "POST", "/machineregistrations", raw=big)
    assert code == 413 and time.monotonic() - start < 20
    assert serve.get("/healthz")[0] == 200

    bomb = (
        b"apiVersion: elemental.cattle.io/v1beta1\nkind: MachineRegistration\n"
        b"metadata: {name: bomb}\nspec:\n  machineInventoryLabels:\n"
        b"    a: &a [x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            b"    %s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n"
            % ((chr(98 + i).encode(),) * 2 + (chr(97 + i).encode(),) * 9)
            for i in range(8)
        )
    )
    code, out = _admin(serve, "POST", "/machineregistrations", raw=bomb)
    assert code == 422 and "alias" in out["message"]

    for bad in (
        {"metadata": "x"},
        {"metadata": {"name": 5}},
        {"metadata": {"name": "a", "labels": ["x"]}},
        [1],
    ):
        code, out = _admin(serve, "POST", "/machineregistrations", bad)
        assert code == 422, (bad, out)
        code, out = _admin(serve, "PUT", "/machineregistrations/default", bad)
        assert code == 422, (bad, out)
    assert serve.get("/healthz")[0] == 200


def test_status_only_through_the_status_subresource(serve: ServeProc) -> None:
    forged = {
        "registrationURL": "https://attacker.example/elemental/registration/x",
        "registrationToken": "x",
    }
    obj = {
        "apiVersion": "elemental.cattle.io/v1beta1",
        "kind": "MachineRegistration",
        "metadata": {"name": "r1"},
        "spec": {},
        "status": forged,
    }
    code, created = _admin(serve, "POST", "/machineregistrations", obj)
    assert code == 201 and "status" not in created
    created["status"] = forged
    code, updated = _admin(serve, "PUT", "/machineregistrations/r1", created)
    assert code == 200 and (updated.get("status") or {}).get("registrationURL") is None
    code, via_status = _admin(
        serve, "PUT", "/machineregistrations/r1/status", updated | {"status": {"registrationToken": "t"}}
    )
    assert code == 200 and via_status["status"] == {"registrationToken": "t"}


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    old = os.umask(0o022)
    try:
        op = ServeProc(state)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("operator.db", "operator.db-wal", "admin-token", "tls/server.key"):
            path = state / name
            if path.exists():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert (state / "operator.db").exists()
    finally:
        op.stop()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(where: Path) -> Path:
    """Fill the file system to the last block (unbuffered writes until ENOSPC)."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_disk_full(small_fs: Path, tmp_path: Path) -> None:
    op = ServeProc(small_fs / "state", log_dir=tmp_path)
    try:
        assert op.get("/healthz") == (200, b"ok\n")
        filler = _fill(small_fs)
        code, body = op.get("/healthz")
        assert code == 503 and b"disk full" in body
        obj = {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineRegistration",
            "metadata": {"name": "r"},
            "spec": {"machineInventoryLabels": {f"k{i}": "v" * 60 for i in range(50)}},
        }
        code, out = _admin(op, "POST", "/machineregistrations", obj)
        assert code == 507 and "disk is full" in out["message"], out
        filler.unlink()
        deadline = time.monotonic() + 15
        while op.get("/healthz")[0] != 200:
            assert time.monotonic() < deadline, "/healthz stayed 503 after space was freed"
        assert _admin(op, "POST", "/machineregistrations", obj)[0] == 201
    finally:
        op.stop()
    log = op.log_path.read_text()
    assert "Traceback" not in log


def test_start_on_a_full_disk_says_what_is_wrong(small_fs: Path, tmp_path: Path) -> None:
    _fill(small_fs)
    op = ServeProc(small_fs / "state", wait=False, log_dir=tmp_path)
    rc = op.proc.wait(60)
    op.log.close()
    out = op.log_path.read_text()
    assert rc != 0
    assert "elemental-operator: error:" in out and ("full" in out or "No space" in out), out
    assert "Traceback" not in out


def test_sqlite_lease_taken_at_once_after_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ServeProc(state, "--lease-ttl", "120", controllers=True)

    def holder() -> str | None:
        store = open_store(f"sqlite:///{state / 'operator.db'}")
        try:
            return store.lease_holder(Manager.LEASE)
        finally:
            store.close()

    deadline = time.monotonic() + 30
    while not (holder() or "").endswith(f"-{first.proc.pid}"):
        assert time.monotonic() < deadline, "first operator never took the lease"
    first.proc.send_signal(signal.SIGKILL)
    first.stop()
    second = ServeProc(state, "--lease-ttl", "120", controllers=True)
    try:
        start = time.monotonic()
        while not (holder() or "").endswith(f"-{second.proc.pid}"):
            assert time.monotonic() - start < 15, "the dead holder's lease was waited out"
    finally:
        second.stop()
