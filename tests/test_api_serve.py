"""`elemental-operator serve` as a process: HTTPS with the generated CA, first-start state,
restarts, and several replicas on one PostgreSQL with leader election."""

# ruff: noqa: F811  (pytest fixtures imported from operator_fixtures)

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_fixtures import PostgresServer, _free_port, postgres_server, wait_for  # noqa: F401

from elemental_operator.controllers.base import Manager
from elemental_operator.store.sql import open_store


class Serve:
    def __init__(self, state: Path, db_url: str | None = None, lease_ttl: float = 15) -> None:
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.state = state
        argv = [
            sys.executable,
            "-m",
            "elemental_operator.cli",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--public-url",
            self.url,
            "--lease-ttl",
            str(lease_ttl),
        ]
        if db_url:
            argv += ["--database-url", db_url]
        self.log = (state.parent / f"serve-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._up(), timeout=30)

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"serve exited: {(self.state.parent / f'serve-{self.port}.log').read_text()}"
            )
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.state / "ca.crt"))

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl()) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(30)
        self.log.close()
        return rc


def test_serve_https_first_start_and_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    op = Serve(state)
    try:
        wait_for(lambda: (state / "registration.yaml").exists(), timeout=30)
        reg_file = yaml.safe_load((state / "registration.yaml").read_text())["elemental"]["registration"]
        assert reg_file["url"].startswith(op.url + "/elemental/registration/")
        assert "BEGIN CERTIFICATE" in reg_file["ca-cert"]
        # the registration URL answers over HTTPS verified by the generated CA (SAN 127.0.0.1)
        code, body = op.get(reg_file["url"][len(op.url) :])
        assert code == 200 and yaml.safe_load(body)["elemental"]["registration"]["url"] == reg_file["url"]
        token = (state / "admin-token").read_text()
        assert oct((state / "admin-token").stat().st_mode & 0o777) == "0o600"
        code, body = op.get(
            "/elemental/admin/v1/namespaces/fleet-default/machineregistrations/default", token
        )
        default = json.loads(body)
        assert default["spec"]["config"]["elemental"]["install"]["device"] == "/dev/vda"
        assert default["spec"]["config"]["elemental"]["reset"]["enabled"] is True
        assert op.get("/elemental/admin/v1/machineinventories")[0] == 401
    finally:
        assert op.stop() == 0
    # restart: same keys, same token/URL; a deleted default registration stays deleted
    op = Serve(state)
    try:
        wait_for(lambda: op.get("/elemental/admin/v1/machineregistrations", token)[0] == 200)
        code, body = op.get(reg_file["url"][len(op.url) :])
        assert code == 200  # same CA verified, same token
        s = open_store(f"sqlite:///{state / 'operator.db'}")
        s.delete("MachineRegistration", "fleet-default", "default")
        wait_for(lambda: not s.list("MachineRegistration"), timeout=20)
        s.close()
    finally:
        op.stop()
    # Serve() returns once /healthz answers, and the server creates the default registration
    # (ensure_default_registration) before it listens: nothing to wait for here.
    op = Serve(state)
    try:
        code, body = op.get("/elemental/admin/v1/machineregistrations", token)
        assert json.loads(body)["items"] == []
    finally:
        op.stop()


@pytest.mark.postgres
def test_two_replicas_share_postgres_with_one_leader(postgres_server: PostgresServer, tmp_path: Path) -> None:
    db = postgres_server.new_database()
    a = Serve(tmp_path / "a", db, lease_ttl=2)
    b = Serve(tmp_path / "b", db, lease_ttl=2)
    store = open_store(db)
    try:
        token = (tmp_path / "a" / "admin-token").read_text()
        assert (tmp_path / "b" / "admin-token").read_text() == token  # shared through the database
        assert (tmp_path / "a" / "ca.crt").read_text() == (tmp_path / "b" / "ca.crt").read_text()
        wait_for(lambda: store.lease_holder(Manager.LEASE) is not None, timeout=20)
        holder = store.lease_holder(Manager.LEASE)
        assert holder is not None
        leader, follower = (a, b) if holder.endswith(f"-{a.proc.pid}") else (b, a)
        # both serve the APIs; writes through either are seen by the other
        body: dict[str, Any] = {
            "apiVersion": "elemental.cattle.io/v1beta1",
            "kind": "MachineRegistration",
            "metadata": {"name": "r2"},
            "spec": {},
        }
        req = urllib.request.Request(
            follower.url + "/elemental/admin/v1/namespaces/fleet-default/machineregistrations",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10, context=follower.ssl()) as resp:
            assert resp.status == 201
        wait_for(
            lambda: (
                leader.get("/elemental/admin/v1/namespaces/fleet-default/machineregistrations/r2", token)[0]
                == 200
            )
        )
        # the leader's controllers make it Ready
        wait_for(
            lambda: (
                b'"SuccessfullyCreated"'
                in follower.get(
                    "/elemental/admin/v1/namespaces/fleet-default/machineregistrations/r2", token
                )[1]
            ),
            timeout=20,
        )
        # kill -9 the leader: the follower takes over after the lease expires
        leader.stop(signal.SIGKILL)
        wait_for(
            lambda: (store.lease_holder(Manager.LEASE) or "").endswith(f"-{follower.proc.pid}"), timeout=20
        )
        body["metadata"]["name"] = "r3"
        store.create({**body, "metadata": {"name": "r3", "namespace": "fleet-default"}})
        wait_for(
            lambda: any(
                c.get("reason") == "SuccessfullyCreated"
                for c in (store.get("MachineRegistration", "fleet-default", "r3").get("status") or {}).get(
                    "conditions", []
                )
            ),
            timeout=20,
        )
    finally:
        store.close()
        for p in (a, b):
            if p.proc.poll() is None:
                p.stop()


def test_writer_killed_then_reopen_sqlite_wal(tmp_path: Path) -> None:
    """The SQLite files are WAL + synchronous=FULL (the store test covers kill -9 in detail)."""
    s = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    s.close()
    assert os.path.exists(tmp_path / "x.db")
