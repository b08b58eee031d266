"""Our definitions of every kind the operator serves, written in Python.

Each ``KindDef`` carries the names, scope, printer columns and the OpenAPI v3 schema of one
kind. This module is the single source for validation and defaulting (``schema.py``), the
generated CRDs and Helm chart (``crds.py``) and the CLI/admin-API tables.

Field names and defaults follow the Elemental API (``elemental.cattle.io/v1beta1``) so that
manifests written for Elemental apply unchanged. Fields that are schemaless in Elemental, and large
foreign types (system-upgrade-controller container specs, Fleet rollout strategies and
targets, network templates), are free-form objects with only the fields we read typed.

The helpers return fresh dicts on every call: the CRD YAML dump would otherwise turn shared
sub-schemas into YAML anchors and aliases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

_UNSET: Any = object()

# --- schema builders ------------------------------------------------------------------------------


def _with(schema: Schema, default: Any, nullable: bool, doc: str) -> Schema:
    if doc:  # description first: easier to read in the generated CRD YAML
        schema = {"description": doc, **schema}
    if default is not _UNSET:
        schema["default"] = default
    if nullable:
        schema["nullable"] = True
    return schema


def string(
    *,
    pattern: str = "",
    enum: Sequence[str] = (),
    max_length: int | None = None,
    min_length: int | None = None,
    fmt: str = "",
    default: Any = _UNSET,
    doc: str = "",
) -> Schema:
    s: Schema = {"type": "string"}
    if fmt:
        s["format"] = fmt
    if enum:
        s["enum"] = list(enum)
    if pattern:
        s["pattern"] = pattern
    if min_length is not None:
        s["minLength"] = min_length
    if max_length is not None:
        s["maxLength"] = max_length
    return _with(s, default, False, doc)


def integer(*, minimum: int | None = None, default: Any = _UNSET, doc: str = "") -> Schema:
    s: Schema = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    return _with(s, default, False, doc)


def boolean(*, default: Any = _UNSET, doc: str = "") -> Schema:
    return _with({"type": "boolean"}, default, False, doc)


def int_or_string(*, pattern: str = "", default: Any = _UNSET, doc: str = "") -> Schema:
    s: Schema = {"x-kubernetes-int-or-string": True}
    if pattern:
        s["pattern"] = pattern
    return _with(s, default, False, doc)


def array(items: Schema, *, doc: str = "") -> Schema:
    return _with({"type": "array", "items": items}, _UNSET, False, doc)


def string_map(*, fmt: str = "", doc: str = "") -> Schema:
    """``map[string]string``."""
    return _with({"type": "object", "additionalProperties": string(fmt=fmt)}, _UNSET, False, doc)


def map_of(values: Schema, *, doc: str = "") -> Schema:
    return _with({"type": "object", "additionalProperties": values}, _UNSET, False, doc)


def obj(
    props: Mapping[str, Schema] | None = None,
    /,
    *,
    required: Sequence[str] = (),
    default: Any = _UNSET,
    nullable: bool = False,
    preserve: bool = False,
    doc: str = "",
    **more: Schema,
) -> Schema:
    """An object with the given properties; unknown fields are refused unless ``preserve``.

    Properties come as keyword arguments, or as a mapping for names that are not Python
    identifiers (``obj({"cloud-config": ...})``).
    """
    s: Schema = {"type": "object"}
    properties = {**(props or {}), **more}
    if properties:
        s["properties"] = properties
    if required:
        s["required"] = list(required)
    if preserve:
        s["x-kubernetes-preserve-unknown-fields"] = True
    return _with(s, default, nullable, doc)


def free_form(
    props: Mapping[str, Schema] | None = None,
    /,
    *,
    required: Sequence[str] = (),
    doc: str = "",
    **more: Schema,
) -> Schema:
    """An object that keeps unknown fields; the listed ones are still type-checked."""
    return obj({**(props or {}), **more}, required=required, preserve=True, doc=doc)


def schemaless(*, doc: str = "") -> Schema:
    """Any JSON value, kept as given (Elemental's schemaless templates and cloud-configs)."""
    return _with({"x-kubernetes-preserve-unknown-fields": True}, _UNSET, False, doc)


# --- shared Kubernetes shapes ---------------------------------------------------------------------

_QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
_CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# resource.Quantity: a decimal number with an optional binary (Ki..Ei), decimal (n..E) or exponent suffix.
_QUANTITY = (
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+))?$"
)


def conditions() -> Schema:
    """``[]metav1.Condition``: what ``controllers.base.set_condition`` writes."""
    return array(
        obj(
            type=string(pattern=_QUALIFIED_NAME, max_length=316),
            status=string(enum=("True", "False", "Unknown")),
            reason=string(pattern=_CONDITION_REASON, min_length=1, max_length=1024),
            message=string(max_length=32768),
            lastTransitionTime=string(fmt="date-time"),
            observedGeneration=integer(minimum=0),
            required=("type", "status", "reason", "message", "lastTransitionTime"),
        )
    )


def object_ref(*, doc: str = "") -> Schema:
    """``corev1.ObjectReference``."""
    return obj(
        apiVersion=string(),
        kind=string(),
        name=string(),
        namespace=string(),
        uid=string(),
        resourceVersion=string(),
        fieldPath=string(),
        doc=doc,
    )


def typed_local_ref() -> Schema:
    """``corev1.TypedLocalObjectReference`` (used for CAPI IPAM pools)."""
    return obj(apiGroup=string(), kind=string(), name=string(), required=("kind", "name"))


def label_selector(*, doc: str = "") -> Schema:
    """``metav1.LabelSelector``; operators are the four ``store.selector.matches`` evaluates."""
    return obj(
        matchLabels=string_map(),
        matchExpressions=array(
            obj(
                key=string(),
                operator=string(enum=("In", "NotIn", "Exists", "DoesNotExist")),
                values=array(string()),
                required=("key", "operator"),
            )
        ),
        doc=doc,
    )


def container_spec(*, doc: str = "") -> Schema:
    """system-upgrade-controller ``ContainerSpec``: free-form, with the fields we read typed."""
    return free_form(
        image=string(),
        command=array(string()),
        args=array(string()),
        envs=array(free_form(name=string(), value=string(), required=("name",))),
        envFrom=array(free_form()),
        volumes=array(obj(name=string(), source=string(), destination=string())),
        securityContext=free_form(),
        doc=doc,
    )


def root(spec: Schema | None = None, status: Schema | None = None, **top: Schema) -> Schema:
    """Top level of a kind; ``metadata`` is checked by ``schema.METADATA_SCHEMA`` instead."""
    props: dict[str, Schema] = {"apiVersion": string(), "kind": string(), "metadata": obj()}
    if spec is not None:
        props["spec"] = spec
    if status is not None:
        props["status"] = status
    props.update(top)
    return obj(props)


# --- printer columns ------------------------------------------------------------------------------


def column(name: str, json_path: str, ctype: str = "string", *, wide: bool = False) -> dict[str, Any]:
    """An ``additionalPrinterColumns`` entry; ``wide`` ones only show with ``-o wide``."""
    col: dict[str, Any] = {"name": name, "type": ctype, "jsonPath": json_path}
    if wide:
        col["priority"] = 1
    return col


def condition_column(name: str, ctype: str, field: str = "status", *, wide: bool = False) -> dict[str, Any]:
    return column(name, f'.status.conditions[?(@.type=="{ctype}")].{field}', wide=wide)


def age() -> dict[str, Any]:
    return column("Age", ".metadata.creationTimestamp", "date")


# --- kinds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindDef:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    schema: Schema
    printer_columns: tuple[dict[str, Any], ...] = ()
    namespaced: bool = True
    status_subresource: bool = True
    core: bool = False  # a core/v1 kind: served, but not emitted as a CRD


def _network(ip_addresses: Schema, doc: str) -> Schema:
    return obj(
        configurator=string(enum=("none", "nmc", "nmstate", "nmconnections"), default="none"),
        ipAddresses=ip_addresses,
        config=schemaless(doc="Configurator input; {name} placeholders are replaced by claimed IPs."),
        doc=doc,
    )


def _install() -> Schema:
    return obj(
        {
            "firmware": string(),
            "device": string(doc="Target disk; device-selector picks one when this is empty."),
            "device-selector": array(
                obj(
                    key=string(enum=("Name", "Size")),
                    operator=string(enum=("In", "NotIn", "Gt", "Lt")),
                    values=array(string()),
                    required=("key", "operator"),
                )
            ),
            "no-format": boolean(),
            "config-urls": array(string()),
            "iso": string(doc="Install from this ISO; takes precedence over system-uri."),
            "system-uri": string(),
            "debug": boolean(),
            "tty": string(),
            "poweroff": boolean(),
            "reboot": boolean(),
            "eject-cd": boolean(),
            "disable-boot-entry": boolean(),
            "config-dir": string(),
            "snapshotter": obj(
                type=string(enum=("loopdevice", "btrfs"), default="loopdevice"),
                maxSnaps=integer(minimum=2, default=2),
                default={"type": "loopdevice", "maxSnaps": 2},
            ),
        }
    )


def _reset() -> Schema:
    return obj(
        {
            "enabled": boolean(doc="New inventories get the resettable annotation."),
            "reset-persistent": boolean(default=True),
            "reset-oem": boolean(default=True),
            "config-urls": array(string()),
            "system-uri": string(),
            "debug": boolean(),
            "poweroff": boolean(),
            "reboot": boolean(default=True),
            "disable-boot-entry": boolean(),
        },
        default={"reset-persistent": True, "reset-oem": True, "reboot": True},
    )


def _registration() -> Schema:
    return obj(
        {
            "url": string(),
            "ca-cert": string(),
            "emulate-tpm": boolean(),
            "emulated-tpm-seed": integer(doc="-1: a random seed made on the machine, kept in its state."),
            "no-smbios": boolean(),
            # Not an enum: the operator compares it case-insensitively (tpm, mac, sys-uuid).
            "auth": string(default="tpm"),
            "labels": string_map(),
            "no-toolkit": boolean(),
        }
    )


def _system_agent() -> Schema:
    return obj(
        {
            "url": string(),
            "token": string(),
            "secret-name": string(),
            "secret-namespace": string(),
            "strictTLSMode": boolean(),
        }
    )


def _config() -> Schema:
    return obj(
        {
            "elemental": obj(
                {
                    "install": _install(),
                    "reset": _reset(),
                    "registration": _registration(),
                    "system-agent": _system_agent(),
                }
            ),
            "network": _network(
                map_of(typed_local_ref()), "Copied to new inventories; ipAddresses name IP pools."
            ),
            "cloud-config": schemaless(
                doc="yip (with stages) or cloud-init, applied on the installed system."
            ),
        }
    )


MACHINE_REGISTRATION = KindDef(
    kind="MachineRegistration",
    plural="machineregistrations",
    singular="machineregistration",
    short_names=("mr", "registration", "registrations"),
    schema=root(
        obj(
            token=string(
                pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
                max_length=253,
                doc="Fixed registration token (a random one is generated when empty).",
            ),
            machineName=string(doc="Template for new inventory names, e.g. ${System Information/UUID}."),
            machineInventoryLabels=string_map(),
            machineInventoryAnnotations=string_map(),
            labelPrefix=string(doc='Prefix of client labels: empty means elemental.cattle.io/, "-" none.'),
            config=_config(),
            tpm=obj(
                allowEmulated=boolean(
                    doc="false refuses EKs without a certificate and clients that declare an "
                    "emulated TPM (default true)."
                ),
                ekCABundle=string(
                    doc="PEM bundle of TPM manufacturer CAs: EK certificates of this registration's "
                    "machines must chain to it (on top of the operator-wide --tpm-ca)."
                ),
                doc="Which TPMs this registration accepts.",
            ),
        ),
        obj(
            conditions=conditions(),
            registrationURL=string(),
            registrationToken=string(),
            serviceAccountRef=object_ref(),
        ),
    ),
    printer_columns=(
        condition_column("Ready", "Ready"),
        condition_column("Reason", "Ready", "reason", wide=True),
        column("URL", ".status.registrationURL", wide=True),
        age(),
    ),
)

MACHINE_INVENTORY = KindDef(
    kind="MachineInventory",
    plural="machineinventories",
    singular="machineinventory",
    short_names=("mi", "inventory", "inventories"),
    schema=root(
        obj(
            tpmHash=string(doc="hex SHA-256 of the TPM EK public key (PKIX DER)."),
            machineHash=string(doc="hex SHA-256 of the MAC or SMBIOS UUID (mac/sys-uuid auth)."),
            ipAddressClaims=map_of(object_ref()),
            ipAddressPools=map_of(typed_local_ref()),
            network=_network(string_map(), "Network config; ipAddresses map names to addresses."),
        ),
        obj(
            conditions=conditions(),
            plan=obj(
                secretRef=object_ref(),
                checksum=string(),
                state=string(enum=("Applied", "Failed")),
            ),
        ),
    ),
    printer_columns=(
        condition_column("Ready", "Ready"),
        condition_column("Reason", "Ready", "reason"),
        column("Plan", ".status.plan.state"),
        condition_column("Adopted", "AdoptionReady", wide=True),
        condition_column("Progress", "InstallProgress", "reason", wide=True),
        age(),
    ),
)


def _selector_spec() -> Schema:
    return obj(
        providerID=string(),
        selector=label_selector(doc="Inventories to adopt; empty matches all."),
    )


MACHINE_INVENTORY_SELECTOR = KindDef(
    kind="MachineInventorySelector",
    plural="machineinventoryselectors",
    singular="machineinventoryselector",
    short_names=("mis", "selector", "selectors"),
    schema=root(
        _selector_spec(),
        obj(
            conditions=conditions(),
            ready=boolean(),
            addresses=array(
                obj(
                    type=string(enum=("Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS")),
                    address=string(min_length=1, max_length=256),
                    required=("type", "address"),
                )
            ),
            bootstrapPlanChecksum=string(),
            machineInventoryRef=obj(name=string()),
        ),
    ),
    printer_columns=(
        column("Ready", ".status.ready", "boolean"),
        column("Inventory", ".status.machineInventoryRef.name"),
        condition_column("Reason", "Ready", "reason", wide=True),
        age(),
    ),
)

MACHINE_INVENTORY_SELECTOR_TEMPLATE = KindDef(
    kind="MachineInventorySelectorTemplate",
    plural="machineinventoryselectortemplates",
    singular="machineinventoryselectortemplate",
    short_names=("mist", "selectortemplate", "selectortemplates"),
    schema=root(
        obj(
            template=obj(
                metadata=obj(labels=string_map(), annotations=string_map()),
                spec=_selector_spec(),
            ),
            required=("template",),
        )
    ),
    printer_columns=(age(),),
    status_subresource=False,
)


def _drain() -> Schema:
    return obj(
        timeout=integer(),
        gracePeriod=integer(),
        deleteLocalData=boolean(),
        deleteEmptydirData=boolean(),
        ignoreDaemonSets=boolean(),
        force=boolean(),
        disableEviction=boolean(),
        skipWaitForDeleteTimeout=integer(),
        podSelector=label_selector(),
        default={
            "force": True,
            "skipWaitForDeleteTimeout": 60,
            "ignoreDaemonSets": True,
            "deleteLocalData": True,
        },
        nullable=True,
    )


MANAGED_OS_IMAGE = KindDef(
    kind="ManagedOSImage",
    plural="managedosimages",
    singular="managedosimage",
    short_names=("mos", "osimage", "osimages"),
    schema=root(
        obj(
            osImage=string(doc="OS image reference; takes precedence over managedOSVersionName."),
            managedOSVersionName=string(),
            cloudConfig=schemaless(),
            nodeSelector=label_selector(doc="Inventories to upgrade; empty means all."),
            concurrency=integer(),
            prepare=container_spec(),
            cordon=boolean(),
            drain=_drain(),
            upgradeContainer=container_spec(),
            clusterRolloutStrategy=free_form(
                maxUnavailable=int_or_string(),
                maxUnavailablePartitions=int_or_string(),
                autoPartitionSize=int_or_string(),
            ),
            clusterTargets=array(
                free_form(
                    name=string(),
                    clusterName=string(),
                    clusterSelector=label_selector(),
                    clusterGroup=string(),
                    clusterGroupSelector=label_selector(),
                )
            ),
        ),
        obj(conditions=conditions()),
    ),
    printer_columns=(
        column("Image", ".spec.osImage"),
        column("Version", ".spec.managedOSVersionName"),
        condition_column("Ready", "Ready"),
        condition_column("Reason", "Ready", "reason", wide=True),
        age(),
    ),
)

MANAGED_OS_VERSION = KindDef(
    kind="ManagedOSVersion",
    plural="managedosversions",
    singular="managedosversion",
    short_names=("mosv", "osversion", "osversions"),
    schema=root(
        obj(
            version=string(),
            type=string(doc="container or iso (any case)."),
            minVersion=string(),
            metadata=free_form(
                upgradeImage=string(),
                uri=string(),
                displayName=string(),
                doc="container: upgradeImage; iso: uri. Every key becomes a METADATA_<KEY> env var.",
            ),
            upgradeContainer=container_spec(),
        ),
        obj(),
    ),
    printer_columns=(
        column("Version", ".spec.version"),
        column("Type", ".spec.type"),
        column("Image", ".spec.metadata.upgradeImage", wide=True),
        age(),
    ),
)

MANAGED_OS_VERSION_CHANNEL = KindDef(
    kind="ManagedOSVersionChannel",
    plural="managedosversionchannels",
    singular="managedosversionchannel",
    short_names=("mosvc", "channel", "channels"),
    schema=root(
        obj(
            type=string(doc="json or custom."),
            syncInterval=string(default="1h", doc="Go duration between syncs."),
            deleteNoLongerInSyncVersions=boolean(default=False),
            enabled=boolean(default=True),
            registry=string(doc="Prefix for upgradeImage and uri of synced versions."),
            options=free_form(uri=string(), doc="json: uri and timeout; custom: a container spec."),
            upgradeContainer=container_spec(doc="Copied onto every synced version."),
        ),
        obj(
            conditions=conditions(),
            lastSyncedTime=string(fmt="date-time"),
            failedSynchronizationAttempts=integer(),
            syncedGeneration=integer(),
        ),
    ),
    printer_columns=(
        column("Type", ".spec.type"),
        column("Enabled", ".spec.enabled", "boolean"),
        condition_column("Ready", "Ready"),
        condition_column("Reason", "Ready", "reason"),
        column("Last Sync", ".status.lastSyncedTime", "date", wide=True),
        age(),
    ),
)

SEED_IMAGE = KindDef(
    kind="SeedImage",
    plural="seedimages",
    singular="seedimage",
    short_names=("si", "seed", "seeds"),
    schema=root(
        obj(
            {
                "baseImage": string(doc="ISO URL, container image carrying an ISO, or OS image for raw."),
                "registrationRef": object_ref(doc="The MachineRegistration embedded in the image."),
                "buildContainer": obj(
                    name=string(),
                    image=string(),
                    command=array(string()),
                    args=array(string()),
                    imagePullPolicy=string(),
                ),
                "cleanupAfterMinutes": integer(
                    minimum=0, default=60, doc="Minutes the image stays downloadable; 0 is forever."
                ),
                "retriggerBuild": boolean(),
                "size": int_or_string(pattern=_QUANTITY, default="6Gi"),
                "type": string(enum=("iso", "raw"), default="iso"),
                "targetPlatform": string(pattern=r"^$|^\S+/\S+$", doc="os/arch, e.g. linux/amd64."),
                "cloud-config": schemaless(),
            },
            required=("registrationRef",),
        ),
        obj(
            conditions=conditions(),
            downloadToken=string(),
            downloadURL=string(),
            checksumURL=string(),
            state=string(enum=("Initialized", "Started", "Completed", "Failed", "NotStarted")),
        ),
    ),
    printer_columns=(
        column("Type", ".spec.type"),
        condition_column("Ready", "SeedImageReady"),
        condition_column("Reason", "SeedImageReady", "reason"),
        column("URL", ".status.downloadURL", wide=True),
        age(),
    ),
)

METADATA = KindDef(
    kind="Metadata",
    plural="metadata",
    singular="metadata",
    short_names=(),
    schema=root(obj(annotations=string_map(), appVersion=string()), obj()),
    printer_columns=(column("AppVersion", ".spec.appVersion"), age()),
)

# Core v1 Secret, the part we use (plan Secrets and tokens). ``data`` values are base64 and
# ``stringData`` is merged into ``data`` on write, as in Kubernetes.
SECRET = KindDef(
    kind="Secret",
    plural="secrets",
    singular="secret",
    short_names=("secret",),
    schema=root(
        type=string(),
        immutable=boolean(),
        data=string_map(fmt="byte"),
        stringData=string_map(),
    ),
    printer_columns=(
        column("Type", ".type"),
        column("Plan", ".metadata.annotations['elemental.cattle.io/plan.type']"),
        age(),
    ),
    status_subresource=False,
    core=True,
)

# In dependency order (what the CLI lists for `get all`).
KIND_DEFS: tuple[KindDef, ...] = (
    MACHINE_REGISTRATION,
    MACHINE_INVENTORY,
    MACHINE_INVENTORY_SELECTOR,
    MACHINE_INVENTORY_SELECTOR_TEMPLATE,
    MANAGED_OS_IMAGE,
    MANAGED_OS_VERSION,
    MANAGED_OS_VERSION_CHANNEL,
    SEED_IMAGE,
    METADATA,
    SECRET,
)
