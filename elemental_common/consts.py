"""Every name and default that more than one module relies on, in one place (as
rancher/elemental-operator's api/v1beta1 common_consts.go): the API group, label and annotation
keys, finalizers, paths both sides agree on, default directories and ports.

Keys are upstream's wherever upstream has the key (cited beside it); keys of our own say so.
"""

from __future__ import annotations

import os
from pathlib import Path

# ------------------------------------------------------------------------------- API group
GROUP = "elemental.cattle.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
LABEL_PREFIX = f"{GROUP}/"  # the default prefix of client labels and our own keys

# ------------------------------------------------------------------------------- labels
MANAGED_LABEL = f"{GROUP}/managed"
CHANNEL_LABEL = f"{GROUP}/channel"
VERSION_NAME_LABEL = f"{GROUP}/managed-os-version-name"

# ------------------------------------------------------------------------------- annotations
PLAN_TYPE_ANNOTATION = f"{GROUP}/plan.type"
RESETTABLE_ANNOTATION = f"{GROUP}/resettable"
OS_UNMANAGED_ANNOTATION = "os.unmanaged"  # client annotation, under the registration's labelPrefix
LAST_SYNC_ANNOTATION = f"{GROUP}/channel-last-sync"
NO_LONGER_IN_SYNC_ANNOTATION = f"{GROUP}/channel-no-longer-in-sync"
MOS_ANNOTATION = f"{GROUP}/managed-os-image"
UPGRADE_CHECKSUM_ANNOTATION = f"{GROUP}/upgrade-checksum"
SEEDIMAGE_ARTIFACT_ANNOTATION = f"{GROUP}/seedimage-artifact"  # ours: <hash>/<file> of a build
BOOTSTRAP_SECRET_ANNOTATION = f"{GROUP}/bootstrap-secret"
BOOTSTRAP_SCRIPT_ANNOTATION = f"{GROUP}/bootstrap-script"

# ------------------------------------------------------------------------------- Secret types, finalizers
PLAN_SECRET_TYPE = f"{GROUP}/plan"
MACHINEINVENTORY_FINALIZER = f"machineinventory.{GROUP}"
MACHINEREGISTRATION_FINALIZER = f"machineregistration.{GROUP}"
MANAGEDOSVERSION_FINALIZER = f"managedosversion.{GROUP}"

# ------------------------------------------------------------------------------- plan Secret
# Where the operator serves the core/v1 Secret API the system agents speak (upstream's Config
# names <operator>/k8s/clusters/local, Rancher's path to its local cluster).
K8S_API_PREFIX = "/k8s/clusters/local"
# Data keys of a plan Secret that the machine's agent writes (rancher-system-agent pkg/k8splan constants and
# rancher/rancher pkg/plan's plan-state keys, plus our agent's os-version and os-slot). Every other key
# (plan, max-failures, probe-period-seconds, ...) is the operator's: an update may carry it back
# unchanged but not change it, or a machine could hand itself a plan.
PLAN_SECRET_AGENT_KEYS = frozenset(
    {
        "applied-checksum",
        "applied-output",
        "applied-periodic-output",
        "failed-checksum",
        "failed-output",
        "failure-count",
        "success-count",
        "last-apply-time",
        "probe-statuses",
        "plan-state",
        "plan-revision",
        "os-version",
        "os-slot",
    }
)

# ------------------------------------------------------------------------------- machine paths
# The operator's reset plan for an unmanaged host writes this file; the host's own tooling acts on it.
UNMANAGED_RESET_MARKER = "/var/lib/elemental/.unmanaged_reset"
AGENT_DIR = "/var/lib/elemental/agent"
# The installer's recovery boot entry id (systemd-boot: <id>.conf) and the OS unit that resets from
# recovery, under Elemental's name so that an Elemental OS image and ours both have it
# (overlays/os/usr/lib/systemd/system/); the operator's reset plan names both.
RECOVERY_ENTRY_ID = "elemental-recovery"
RESET_UNIT = "elemental-register-reset.service"

# ------------------------------------------------------------------------------- defaults
DEFAULT_STATE_DIR = "/var/lib/elemental-py"  # the dev operator's state (env ELEMENTAL_STATE)
DEFAULT_CACHE_DIR = "/var/cache/elemental-py"  # image build caches (env ELEMENTAL_CACHE)
DEFAULT_PORT = 8443
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
# What a QEMU guest on user networking sees of the host.
DEFAULT_PUBLIC_URL = f"https://10.0.2.2:{DEFAULT_PORT}"
DEFAULT_SERVER = f"https://127.0.0.1:{DEFAULT_PORT}"  # elementalctl's default


def state_dir() -> Path:
    """The operator's state directory: $ELEMENTAL_STATE, else the default."""
    return Path(os.environ.get("ELEMENTAL_STATE") or DEFAULT_STATE_DIR)
