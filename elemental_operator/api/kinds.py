"""Our definitions of every kind the operator serves, written in Python.

Each ``KindDef`` carries the names, scope, printer columns and the OpenAPI v3 schema of one
kind. This module is the single source for validation and defaulting (``schema.py``), the
generated CRDs and Helm chart (``crds.py``) and the CLI/admin-API tables.

The schemas are Elemental's own (``elemental.cattle.io/v1beta1``, rancher/elemental-operator's
``config/crd/bases``): every field, type, format, default, required list and ``nullable`` as
upstream's CRDs state them, including the foreign types they embed (system-upgrade-controller's
ContainerSpec with core/v1 EnvVar, EnvFromSource and SecurityContext; Fleet's rollout strategy and
targets); schemaless where upstream is schemaless. ``tests/test_crd_upstream.py`` compares the
generated CRDs with a copy of upstream's and names every difference in an allow-list.

The helpers return fresh dicts on every call: the CRD YAML dump would otherwise turn shared
sub-schemas into YAML anchors and aliases.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

_UNSET: Any = object()

# --- schema builders ------------------------------------------------------------------------------


def _with(schema: Schema, default: Any, nullable: bool, doc: str, **ext: Any) -> Schema:
    if doc:  # description first: easier to read in the generated CRD YAML
        schema = {"description": doc, **schema}
    if default is not _UNSET:
        schema["default"] = default
    if nullable:
        schema["nullable"] = True
    schema.update({k: v for k, v in ext.items() if v is not None})
    return schema


def string(
    *,
    pattern: str = "",
    enum: Sequence[str] = (),
    max_length: int | None = None,
    min_length: int | None = None,
    fmt: str = "",
    default: Any = _UNSET,
    nullable: bool = False,
    example: str | None = None,
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
    return _with(s, default, nullable, doc, example=example)


def integer(*, minimum: int | None = None, fmt: str = "", default: Any = _UNSET, doc: str = "") -> Schema:
    """``fmt`` is the Go type controller-gen records (``int32``, ``int64``); plain ``int`` has none."""
    s: Schema = {"type": "integer"}
    if fmt:
        s["format"] = fmt
    if minimum is not None:
        s["minimum"] = minimum
    return _with(s, default, False, doc)


def boolean(*, default: Any = _UNSET, doc: str = "") -> Schema:
    return _with({"type": "boolean"}, default, False, doc)


def int_or_string(
    *, pattern: str = "", default: Any = _UNSET, nullable: bool = False, doc: str = ""
) -> Schema:
    """``intstr.IntOrString`` / ``resource.Quantity``; ``anyOf`` is how controller-gen spells it."""
    s: Schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    if pattern:
        s["pattern"] = pattern
    return _with(s, default, nullable, doc)


def array(
    items: Schema,
    *,
    atomic: bool = False,
    max_items: int | None = None,
    nullable: bool = False,
    doc: str = "",
) -> Schema:
    """``atomic``: ``x-kubernetes-list-type: atomic`` (a list replaced whole by server-side apply)."""
    s: Schema = {"type": "array", "items": items}
    if max_items is not None:
        s["maxItems"] = max_items
    return _with(s, _UNSET, nullable, doc, **{"x-kubernetes-list-type": "atomic" if atomic else None})


def string_map(*, fmt: str = "", nullable: bool = False, doc: str = "") -> Schema:
    """``map[string]string``."""
    return _with({"type": "object", "additionalProperties": string(fmt=fmt)}, _UNSET, nullable, doc)


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
    atomic: bool = False,
    doc: str = "",
    **more: Schema,
) -> Schema:
    """An object with the given properties; unknown fields are refused unless ``preserve``.

    ``atomic``: ``x-kubernetes-map-type: atomic`` (Go structs marked ``+structType=atomic``).

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
    return _with(s, default, nullable, doc, **{"x-kubernetes-map-type": "atomic" if atomic else None})


def schemaless(*, doc: str = "") -> Schema:
    """Any JSON value, kept as given (Elemental's schemaless templates and cloud-configs)."""
    return _with({"x-kubernetes-preserve-unknown-fields": True}, _UNSET, False, doc)


# --- shared Kubernetes shapes ---------------------------------------------------------------------

# metav1.Condition's type, as upstream's CRDs carry it.
_QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
_CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
# resource.Quantity: a decimal number with an optional binary (Ki..Ei), decimal (n..E) or exponent suffix.
_QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
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
            observedGeneration=integer(minimum=0, fmt="int64"),
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
        atomic=True,
        doc=doc,
    )


def typed_local_ref() -> Schema:
    """``corev1.TypedLocalObjectReference`` (used for CAPI IPAM pools)."""
    return obj(apiGroup=string(), kind=string(), name=string(), required=("kind", "name"), atomic=True)


def label_selector(*, nullable: bool = False, doc: str = "") -> Schema:
    """``metav1.LabelSelector``. The operator is a plain string in the CRD; the controllers report
    one that ``store.selector`` cannot evaluate (In, NotIn, Exists, DoesNotExist) in a condition."""
    return obj(
        matchLabels=string_map(),
        matchExpressions=array(
            obj(
                key=string(),
                operator=string(),
                values=array(string(), atomic=True),
                required=("key", "operator"),
            ),
            atomic=True,
        ),
        atomic=True,
        nullable=nullable,
        doc=doc,
    )


def _key_ref() -> Schema:
    """``corev1.ConfigMapKeySelector`` / ``SecretKeySelector`` (``name`` defaults to "")."""
    return obj(key=string(), name=string(default=""), optional=boolean(), required=("key",), atomic=True)


def env_var() -> Schema:
    """``corev1.EnvVar``."""
    return obj(
        name=string(),
        value=string(),
        valueFrom=obj(
            configMapKeyRef=_key_ref(),
            fieldRef=obj(apiVersion=string(), fieldPath=string(), required=("fieldPath",), atomic=True),
            fileKeyRef=obj(
                key=string(),
                optional=boolean(default=False),
                path=string(),
                volumeName=string(),
                required=("key", "path", "volumeName"),
                atomic=True,
            ),
            resourceFieldRef=obj(
                containerName=string(),
                divisor=int_or_string(pattern=_QUANTITY),
                resource=string(),
                required=("resource",),
                atomic=True,
            ),
            secretKeyRef=_key_ref(),
        ),
        required=("name",),
    )


def env_from_source() -> Schema:
    """``corev1.EnvFromSource``."""

    def local_ref() -> Schema:
        return obj(name=string(default=""), optional=boolean(), atomic=True)

    return obj(configMapRef=local_ref(), prefix=string(), secretRef=local_ref())


def security_context() -> Schema:
    """``corev1.SecurityContext``."""

    def profile() -> Schema:
        return obj(localhostProfile=string(), type=string(), required=("type",))

    return obj(
        allowPrivilegeEscalation=boolean(),
        appArmorProfile=profile(),
        capabilities=obj(add=array(string(), atomic=True), drop=array(string(), atomic=True)),
        privileged=boolean(),
        procMount=string(),
        readOnlyRootFilesystem=boolean(),
        runAsGroup=integer(fmt="int64"),
        runAsNonRoot=boolean(),
        runAsUser=integer(fmt="int64"),
        seLinuxOptions=obj(level=string(), role=string(), type=string(), user=string()),
        seccompProfile=profile(),
        windowsOptions=obj(
            gmsaCredentialSpec=string(),
            gmsaCredentialSpecName=string(),
            hostProcess=boolean(),
            runAsUserName=string(),
        ),
    )


def container_spec(*, doc: str = "") -> Schema:
    """system-upgrade-controller ``upgradev1.ContainerSpec``."""
    return obj(
        image=string(),
        command=array(string()),
        args=array(string()),
        envs=array(env_var()),
        envFrom=array(env_from_source()),
        volumes=array(obj(name=string(), source=string(), destination=string())),
        securityContext=security_context(),
        doc=doc,
    )


def _fleet_target() -> Schema:
    """Fleet's ``BundleTarget`` (ManagedOSImage clusterTargets; Elemental hands them to a Bundle)."""

    def nstring() -> Schema:
        return string(nullable=True)

    key_ref = obj(key=nstring(), name=nstring(), namespace=nstring(), nullable=True)
    return obj(
        clusterGroup=nstring(),
        clusterGroupSelector=label_selector(nullable=True),
        clusterName=nstring(),
        clusterSelector=label_selector(nullable=True),
        correctDrift=obj(enabled=boolean(), force=boolean(), keepFailHistory=boolean()),
        defaultNamespace=nstring(),
        deleteCRDResources=boolean(),
        deleteNamespace=boolean(),
        diff=obj(
            comparePatches=array(
                obj(
                    apiVersion=nstring(),
                    jsonPointers=array(string(), nullable=True),
                    kind=nstring(),
                    name=nstring(),
                    namespace=nstring(),
                    operations=array(obj(op=nstring(), path=nstring(), value=nstring()), nullable=True),
                ),
                nullable=True,
            ),
            nullable=True,
        ),
        doNotDeploy=boolean(),
        downstreamResources=array(obj(kind=string(), name=string())),
        forceSyncGeneration=integer(fmt="int64"),
        helm=obj(
            {"atomic": boolean()},  # a property, not obj()'s map-type flag
            chart=nstring(),
            disableDNS=boolean(),
            disableDependencyUpdate=boolean(),
            disablePreProcess=boolean(),
            force=boolean(),
            maxHistory=integer(),
            releaseName=string(
                pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
                max_length=53,
                nullable=True,
            ),
            repo=nstring(),
            skipSchemaValidation=boolean(),
            takeOwnership=boolean(),
            templateValues=string_map(nullable=True),
            timeoutSeconds=integer(),
            values=obj(preserve=True, nullable=True),
            valuesFiles=array(string(), nullable=True),
            valuesFrom=array(
                obj(configMapKeyRef=copy.deepcopy(key_ref), secretKeyRef=copy.deepcopy(key_ref)),
                nullable=True,
            ),
            version=nstring(),
            waitForJobs=boolean(),
        ),
        ignore=obj(conditions=array(string_map(), nullable=True), nullable=True),
        keepResources=boolean(),
        kustomize=obj(dir=nstring(), nullable=True),
        name=string(),
        namespace=nstring(),
        namespaceAnnotations=string_map(nullable=True),
        namespaceLabels=string_map(nullable=True),
        serviceAccount=nstring(),
        yaml=obj(overlays=array(string(), nullable=True), nullable=True),
    )


def _rollout_strategy() -> Schema:
    """Fleet's ``RolloutStrategy``."""
    return obj(
        autoPartitionSize=int_or_string(nullable=True),
        maxUnavailable=int_or_string(nullable=True),
        maxUnavailablePartitions=int_or_string(nullable=True),
        partitions=array(
            obj(
                clusterGroup=string(),
                clusterGroupSelector=label_selector(nullable=True),
                clusterName=string(),
                clusterSelector=label_selector(),
                maxUnavailable=int_or_string(),
                name=string(nullable=True),
            ),
            nullable=True,
        ),
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
                # A plain string upstream: the installer logs a type it does not know.
                type=string(default="loopdevice"),
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
            "emulated-tpm-seed": integer(
                fmt="int64", doc="-1: a random seed made on the machine, kept in its state."
            ),
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


def _selector_status() -> Schema:
    return obj(
        conditions=conditions(),
        ready=boolean(),
        addresses=array(
            obj(
                type=string(enum=("Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS")),
                address=string(min_length=1, max_length=256),
                required=("type", "address"),
            ),
            atomic=True,
            max_items=128,
        ),
        bootstrapPlanChecksum=string(),
        machineInventoryRef=obj(name=string(default=""), atomic=True),
    )


MACHINE_INVENTORY_SELECTOR = KindDef(
    kind="MachineInventorySelector",
    plural="machineinventoryselectors",
    singular="machineinventoryselector",
    short_names=("mis", "selector", "selectors"),
    schema=root(_selector_spec(), _selector_status()),
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
            # Upstream's template is a whole MachineInventorySelector; its nested ``metadata`` is a
            # bare object (no embedded-resource marker), so Kubernetes keeps nothing under it.
            template=obj(
                apiVersion=string(),
                kind=string(),
                metadata=obj(),
                spec=_selector_spec(),
                status=_selector_status(),
            ),
            required=("template",),
        )
    ),
    printer_columns=(age(),),
    status_subresource=False,
)


def _drain() -> Schema:
    return obj(
        timeout=integer(fmt="int64"),
        gracePeriod=integer(fmt="int32"),
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
            concurrency=integer(fmt="int64"),
            prepare=container_spec(),
            cordon=boolean(),
            drain=_drain(),
            upgradeContainer=container_spec(),
            clusterRolloutStrategy=_rollout_strategy(),
            clusterTargets=array(_fleet_target()),
            required=("drain",),  # always met: drain has a default
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
            metadata=schemaless(
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
            options=schemaless(doc="json: uri and timeout; custom: a container spec."),
            upgradeContainer=container_spec(doc="Copied onto every synced version."),
        ),
        obj(
            conditions=conditions(),
            lastSyncedTime=string(fmt="date-time"),
            failedSynchronizationAttempts=integer(),
            syncedGeneration=integer(fmt="int64"),
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
                    fmt="int32", default=60, doc="Minutes the image stays downloadable; 0 is forever."
                ),
                "retriggerBuild": boolean(),
                "size": int_or_string(pattern=_QUANTITY, default=6442450944),  # 6Gi as upstream writes it
                "type": string(enum=("iso", "raw"), default="iso"),
                "targetPlatform": string(
                    pattern=r"^$|^\S+\/\S+$", example="linux/amd64", doc="os/arch, e.g. linux/amd64."
                ),
                "cloud-config": schemaless(),
            },
            required=("registrationRef", "type"),
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
