"""`custom` ManagedOSVersionChannels: a real channel image, built here, served from the e2e harness's
registry on loopback, pulled and run by the real controllers (SQLite store) in the bubblewrap sandbox.

The image is a rootfs with Debian's static busybox (busybox-static, scripts/setup-host.sh) as
/bin/sh and its applets, in two layers (the second adds the channel list and whites out a file);
the entrypoint script is what each test varies.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_fixtures import run_until
from waiting import wait_until

from elemental_operator.api import validate
from elemental_operator.channel_runner import NETWORK_ANNOTATION, parse_options
from elemental_operator.context import OperatorContext
from elemental_operator.controllers import Manager, all_controllers
from elemental_operator.controllers.base import get_condition
from elemental_operator.store.sql import SqlStore, open_store

# the e2e harness's registry (tests/e2e/harness.py imports as a top-level module, as in tests/e2e)
sys.path.insert(0, str(Path(__file__).parent / "e2e"))
from harness import Registry  # noqa: E402

pytestmark = [pytest.mark.integration]

NS = "fleet-default"
API = "elemental.cattle.io/v1beta1"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cp", "cat", "echo", "touch", "sleep", "nc", "printf", "yes", "ls", "rm", "id", "ln")
CHART_CHANNELS = Path(__file__).parent / "data/upstream/chart-channels.yaml"

VERSIONS = [
    {
        "metadata": {"name": "v1.0.0"},
        "spec": {
            "version": "v1.0.0",
            "type": "container",
            "metadata": {"upgradeImage": "elemental/os:1.0.0"},
        },
    },
    {
        "metadata": {"name": "v1.0.0-iso"},
        "spec": {"version": "v1.0.0", "type": "iso", "metadata": {"uri": "elemental/iso:1.0.0"}},
    },
]


def _tar(entries: list[tuple[str, bytes | str | tuple[str] | None, int]]) -> bytes:
    """(path, file bytes | symlink target str | (hard link target,) | None for a directory, mode)
    → an uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data, mode in entries:
            info = tarfile.TarInfo(path)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tf.addfile(info)
            elif isinstance(data, tuple):
                info.type, info.linkname = tarfile.LNKTYPE, data[0]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _put(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_image(
    layout: Path,
    tag: str,
    config: dict[str, Any],
    extra: list[tuple[str, bytes, int]],
    hostile: list[tuple[str, bytes | str | tuple[str] | None, int]] | None = None,
) -> None:
    """An OCI image (gzip layers) into `layout` under `tag`: busybox, then `extra` + a whiteout,
    then `hostile` as a third layer when given."""
    base = _tar(
        [
            ("bin", None, 0o755),
            ("bin/busybox", BUSYBOX.read_bytes(), 0o755),
            *[(f"bin/{a}", "busybox", 0o777) for a in APPLETS],
            ("etc", None, 0o755),
            ("etc/old", b"gone in layer 2\n", 0o644),
            ("tmp", None, 0o1777),
        ]
    )
    top = _tar([("etc", None, 0o755), ("etc/.wh.old", b"", 0o644), *extra])
    layers, diff_ids = [], []
    for raw in (base, top, *([_tar(hostile)] if hostile else [])):
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_put(layout, gzip.compress(raw))}
        )
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_put(layout, json.dumps(cfg).encode()),
        },
        "layers": layers,
    }
    mdesc = _put(layout, json.dumps(manifest).encode())
    index_path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"].append(
        {
            "mediaType": manifest["mediaType"],
            **mdesc,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    index_path.write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def sh(script: str, **config: Any) -> dict[str, Any]:
    return {"Entrypoint": ["/bin/sh", "-c", script], **config}


# What the sandbox lets the image do, written as a one-version list ($NAME) whose `version` is the
# report: the registry (on the host's loopback and on its LAN address), then writes everywhere.
PROBE = (
    'r=""; for ip in 127.0.0.1 $HOSTIP; do '
    "out=$(printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip $PORT 2>/dev/null); "
    'case "$out" in *"200 OK"*) r="$r net=yes";; *) r="$r net=no";; esac; done; '
    "for f in /etc/x /x /tmp/x /bin/busybox /data/x; do "
    'if echo >> $f 2>/dev/null; then r="$r $f=rw"; else r="$r $f=ro"; fi; done; '
    'echo "[{\\"metadata\\":{\\"name\\":\\"$NAME\\"},\\"spec\\":{\\"version\\":\\"$r $(id -u) $(pwd)\\"}}]"'
    " > /data/output"
)


def _host_ip() -> str:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the route's address
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not BUSYBOX.is_file() or shutil.which("bwrap") is None:
        pytest.skip("needs /bin/busybox (busybox-static) and bwrap (bubblewrap): scripts/setup-host.sh")
    root = tmp_path_factory.mktemp("channel-images")
    channel = root / "channel"
    listing = json.dumps(VERSIONS).encode()
    make_image(channel, "v1", sh("cp /etc/channel.json /data/output"), [("etc/channel.json", listing, 0o644)])
    # upstream's chart names (values.yaml defaultChannels), served from here as the %%IMG_REPO%%
    make_image(
        channel,
        "6.1-baremetal",
        sh("cp /etc/channel.json /data/output"),
        [("etc/channel.json", listing, 0o644)],
    )
    probe_env = ["PATH=/bin", f"HOSTIP={_host_ip()}"]
    make_image(channel, "probe", sh(PROBE, Env=probe_env, WorkingDir="/work"), [])
    make_image(channel, "probe-user", sh(PROBE, Env=probe_env, User="1000:1000"), [])
    make_image(channel, "exit3", sh("echo boom >&2; exit 3"), [])
    make_image(channel, "sleep", sh("sleep 6061 & sleep 6062"), [])
    make_image(channel, "badjson", sh("echo '{not json' > /data/output"), [])
    make_image(channel, "huge", sh("yes 0123456789abcdef > /data/output"), [])
    make_image(channel, "nothing", sh("true"), [])
    make_image(
        channel,
        "escape",
        sh("ln -s /etc/passwd /data/output"),
        [],
    )
    # layers that try to reach the host: a hard link to its /etc/passwd, a file up the tree
    true = sh("true")
    make_image(channel, "hardlink", true, [], [("etc/pw", ("../../../../../../etc/passwd",), 0o644)])
    make_image(channel, "dotdot", true, [], [("../../../../tmp/escaped-channel-layer", b"x", 0o644)])
    with Registry(
        {"channels/busybox": channel, "rancher/elemental-channel/sl-micro": channel}, root / "registry.log"
    ) as reg:
        yield reg


@pytest.fixture
def env(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> str:
    host = f"127.0.0.1:{registry.port}"
    monkeypatch.setenv("ELEMENTAL_INSECURE_REGISTRIES", host)
    return host


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    """SQLite only: the channel logic is store-agnostic (test_controllers runs it on both stores)."""
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}", poll_interval=0.02)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def mgr(store: SqlStore, tmp_path: Path) -> Iterator[Manager]:
    ctx = OperatorContext(store=store, public_url="https://op.test:8443", secret_key=b"k" * 32)
    yield Manager(ctx, all_controllers(ctx, tmp_path / "state"))


def channel(
    name: str, options: dict[str, Any], annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ManagedOSVersionChannel",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
        "spec": {"type": "custom", "options": options, **spec},
    }


def ready(store: SqlStore, name: str) -> dict[str, Any]:
    return get_condition(store.get("ManagedOSVersionChannel", NS, name), "Ready") or {}


def until_reason(
    mgr: Manager, store: SqlStore, name: str, reason: str, timeout: float = 30
) -> dict[str, Any]:
    run_until(mgr, lambda: ready(store, name).get("reason") == reason, timeout=timeout)
    return ready(store, name)


def test_custom_channel_syncs_with_registry_prefix(
    env: str, store: SqlStore, mgr: Manager, tmp_path: Path
) -> None:
    # an image no channel ran for over a week and a crashed pull: pruned when a new image is unpacked
    cache = tmp_path / "state/channel-images"
    for stale in ("sha256-" + "0" * 64, ".pull-crashed"):
        (cache / stale).mkdir(parents=True)
        os.utime(cache / stale, (time.time() - 8 * 86400, time.time() - 8 * 86400))
    store.create(channel("ch", {"image": f"{env}/channels/busybox:v1"}, registry="mirror.local:5000"))
    run_until(mgr, lambda: ready(store, "ch").get("reason") in ("Syncing", "Synchronized"))
    cond = until_reason(mgr, store, "ch", "Synchronized")
    assert cond["message"] == f"synced 2 versions from {env}/channels/busybox:v1"
    ch = store.get("ManagedOSVersionChannel", NS, "ch")
    assert ch["status"]["failedSynchronizationAttempts"] == 0 and ch["status"]["syncedGeneration"] == 1
    v = store.get("ManagedOSVersion", NS, "v1.0.0")
    assert v["spec"]["metadata"]["upgradeImage"] == "mirror.local:5000/elemental/os:1.0.0"
    assert v["metadata"]["labels"] == {"elemental.cattle.io/channel": "ch"}
    assert v["metadata"]["ownerReferences"][0]["uid"] == ch["metadata"]["uid"]
    iso = store.get("ManagedOSVersion", NS, "v1.0.0-iso")
    assert iso["spec"]["metadata"]["uri"] == "mirror.local:5000/elemental/iso:1.0.0"
    # cached by manifest digest: one unpacked rootfs, whose whiteout removed layer 1's /etc/old
    (entry,) = (tmp_path / "state/channel-images").iterdir()
    assert entry.name.startswith("sha256-") and (entry / "rootfs/etc/channel.json").is_file()
    assert not (entry / "rootfs/etc/old").exists()


def test_command_args_envs_and_paths(env: str, store: SqlStore, mgr: Manager) -> None:
    # $(NAME) and $(IMAGE) are Kubernetes' expansion (ours, before the shell sees the script);
    # $$(echo …) is its escape: the shell gets $(echo …) and runs it; $(UNSET) stays as written
    script = (
        "u='$(UNSET)'; "  # single quotes: the shell keeps what our expansion left
        'echo "[{\\"metadata\\":{\\"name\\":\\"$(NAME)\\"},\\"spec\\":{\\"type\\":\\"container\\",'
        '\\"version\\":\\"$$(echo shell)-$SHELLVAR\\",'
        '\\"metadata\\":{\\"upgradeImage\\":\\"$(IMAGE)\\",\\"unset\\":\\"$u\\"}}}]" > /out/list.json'
    )
    options = {
        "image": f"{env}/channels/busybox:exit3",  # its entrypoint would fail: command replaces it
        "command": ["/bin/sh", "-c"],
        "args": [script],
        "envs": [
            {"name": "NAME", "value": "v9"},
            {"name": "IMAGE", "value": "os:$(NAME)"},
            {"name": "SHELLVAR", "value": "env"},
        ],
        "mountPath": "/out",
        "outputFile": "/out/list.json",
    }
    store.create(channel("ch", options))
    until_reason(mgr, store, "ch", "Synchronized")
    v9 = store.get("ManagedOSVersion", NS, "v9")["spec"]
    assert v9["metadata"]["upgradeImage"] == "os:v9" and v9["version"] == "shell-env"
    assert v9["metadata"]["unset"] == "$(UNSET)"


def test_sandbox_has_no_network_and_only_mount_path_writable(env: str, store: SqlStore, mgr: Manager) -> None:
    port = env.rsplit(":", 1)[1]

    def opts(tag: str, name: str) -> dict[str, Any]:
        envs = [{"name": "PORT", "value": port}, {"name": "NAME", "value": name}]
        return {"image": f"{env}/channels/busybox:{tag}", "envs": envs}

    store.create(channel("closed", opts("probe", "closed")))
    store.create(channel("open", opts("probe", "open"), annotations={NETWORK_ANNOTATION: "true"}))
    store.create(channel("user", opts("probe-user", "user")))
    for name in ("closed", "open", "user"):
        until_reason(mgr, store, name, "Synchronized")
    report = {
        n: store.get("ManagedOSVersion", NS, n)["spec"]["version"].strip() for n in ("closed", "open", "user")
    }
    # root in the sandbox (the image's default user) still cannot write the image: it is bound read-only
    writes = "/etc/x=ro /x=ro /tmp/x=ro /bin/busybox=ro /data/x=rw"
    assert report == {
        "closed": f"net=no net=no {writes} 0 /work",
        "open": f"net=yes net=yes {writes} 0 /work",
        "user": f"net=no net=no {writes} 1000 /",
    }


def _processes(needle: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in text and "pytest" not in text:
            found.append(text)
    return found


@pytest.mark.parametrize(
    ("tag", "options", "message"),
    [
        ("exit3", {}, "failed (exit 3): boom"),
        ("sleep", {"timeout": "1s"}, "timed out after 1s (killed)"),
        ("badjson", {}, "the channel's output is not JSON"),
        ("huge", {}, "(output too big)"),
        ("nothing", {}, "wrote no /data/output"),
        ("escape", {}, "is not a regular file"),
        ("v1", {"command": ["/no/such/binary"]}, "is not runnable: bwrap: execvp /no/such/binary"),
        ("missing", {}, "not found: "),
        ("hardlink", {}, "etc/pw points outside the image"),
        ("dotdot", {}, "escaped-channel-layer points outside the image"),
    ],
)
def test_failures_are_conditions_and_counted(
    env: str, store: SqlStore, mgr: Manager, tag: str, options: dict[str, Any], message: str
) -> None:
    image = f"{env}/channels/busybox:{tag}"
    store.create(channel("ch", {"image": image, **options}))
    cond = until_reason(mgr, store, "ch", "FailedToSync")
    assert cond["status"] == "False" and message in cond["message"], cond
    assert store.get("ManagedOSVersionChannel", NS, "ch")["status"]["failedSynchronizationAttempts"] == 1
    if tag == "sleep":  # killed: the sandbox's whole pid namespace, the background sleep too
        wait_until(lambda: not _processes("sleep 606"), 10, what="the sandboxed sleeps to be gone")
    if tag == "exit3":  # the json channels' back-off: the second attempt comes 4 s later
        run_until(
            mgr,
            lambda: (
                store.get("ManagedOSVersionChannel", NS, "ch")["status"]["failedSynchronizationAttempts"] == 2
            ),
            timeout=20,
        )
    assert not store.list("ManagedOSVersion", NS)


def test_invalid_options(env: str, store: SqlStore, mgr: Manager) -> None:
    store.create(channel("noimage", {}))
    store.create(channel("outside", {"image": f"{env}/channels/busybox:v1", "outputFile": "/etc/output"}))
    assert until_reason(mgr, store, "noimage", "InvalidConfiguration")["message"] == (
        "options.image is required for custom channels"
    )
    assert (
        "not inside options.mountPath /data"
        in until_reason(mgr, store, "outside", "InvalidConfiguration")["message"]
    )


def test_chart_default_channels(env: str, store: SqlStore, mgr: Manager) -> None:
    """Elemental's chart's four default channels (tests/data/upstream/chart-channels.yaml), admitted by
    the API's schema as they are, with the chart's %%IMG_REPO%% pointing at the loopback registry."""
    text = CHART_CHANNELS.read_text().replace("%%IMG_REPO%%", env)
    enabled = {}
    for doc in yaml.safe_load_all(text):
        parse_options(doc["spec"]["options"], 1.0, False)
        store.create(validate(doc))
        enabled[doc["metadata"]["name"]] = doc["spec"]["enabled"]
    assert len(enabled) == 4 and sum(enabled.values()) == 1
    for name, on in enabled.items():
        until_reason(mgr, store, name, "Synchronized" if on else "ChannelDisabled")
    assert store.get("ManagedOSVersion", NS, "v1.0.0")["metadata"]["labels"] == {
        "elemental.cattle.io/channel": "sl-micro-6.1-baremetal-channel"
    }


def test_documented_custom_channels_are_accepted() -> None:
    """Every custom channel in the copied docs, examples and chart (tests/data) passes the schema and
    gives a runnable container spec (no InvalidConfiguration)."""
    found = []
    for path in sorted((Path(__file__).parent / "data").rglob("*.y*ml")):
        text = path.read_text().replace("%%IMG_REPO%%", "registry.example")
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            continue  # hostile fixtures and templates
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "ManagedOSVersionChannel":
                if str((doc.get("spec") or {}).get("type", "")).lower() == "custom":
                    opts = parse_options(validate(doc)["spec"]["options"], 1.0, False)
                    assert opts.image and opts.output_file == "/data/output", path
                    found.append(path.name)
    assert len(found) >= 7, found  # the chart's 4, the docs' and examples' ones, ours


def test_upstream_e2e_custom_hook(env: str, store: SqlStore, mgr: Manager) -> None:
    """rancher/elemental-operator tests/e2e/managedosversionchannel_test.go "creates a list of
    ManagedOSVersion from a custom hook", with /bin/sh for /bin/bash (our image has no bash)."""
    versions = [
        {
            "metadata": {"name": v},
            "spec": {
                "version": v,
                "type": "container",
                "minVersion": "0.0.0",
                "metadata": {"upgradeImage": f"registry.com/repository/image:{v}"},
            },
        }
        for v in ("v1", "v2")
    ]
    options = {
        "image": f"{env}/channels/busybox:v1",
        "command": ["/bin/sh", "-c", "--"],
        "mountPath": "/output",
        "outputFile": "/output/data",
        "args": [f"echo '{json.dumps(versions)}' > /output/data"],
    }
    store.create(validate(channel("ch", options, syncInterval="10m")))
    until_reason(mgr, store, "ch", "Synchronized")
    for v in ("v1", "v2"):
        got = store.get("ManagedOSVersion", NS, v)["spec"]["metadata"]["upgradeImage"]
        assert got == f"registry.com/repository/image:{v}"
