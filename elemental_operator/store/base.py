"""The store interface every operator component talks to.

Resources are plain JSON-like dicts shaped exactly like Kubernetes objects
(``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``), so Elemental's own YAML
applies unchanged and the same dict is what the admin API, the CLI and the CRDs show.
Validation against the kind's schema happens before anything reaches a backend.

Two backends implement this interface: SQLite (embedded default) and PostgreSQL
(several operator replicas). Both keep a change log whose sequence number is the
``resourceVersion``; watches read that log, so they work across processes.
"""

from __future__ import annotations

import abc
import builtins
import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

Resource = dict[str, Any]

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class StoreError(Exception):
    """Base class of store failures that callers are expected to handle."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class StorageFull(StoreError):
    """The database's disk (or quota) is full: writes fail until space is freed."""


class Conflict(StoreError):
    """The object's resourceVersion is stale (optimistic concurrency) or a unique index clashed."""


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    object: Resource
    resource_version: int


class Store(abc.ABC):
    """Kubernetes-like object store.

    * ``create`` fills uid, resourceVersion, generation=1 and creationTimestamp.
    * ``update`` replaces metadata+spec (status is kept) and bumps generation when spec
      changed; ``update_status`` replaces only status. Both raise ``Conflict`` when the
      given ``metadata.resourceVersion`` is not the stored one (omit it to force).
    * ``delete`` sets ``deletionTimestamp`` when finalizers remain, else removes the
      object and cascades to dependents through ``metadata.ownerReferences`` (by uid).
    * Machine identity (``spec.tpmHash`` / ``spec.machineHash`` of MachineInventory)
      is kept in a unique index: ``find_inventory_by_hash`` is O(1) and ``create``
      raises ``Conflict`` on a duplicate hash.
    """

    @abc.abstractmethod
    def get(self, kind: str, namespace: str, name: str) -> Resource:
        """Return the object or raise NotFound."""

    @abc.abstractmethod
    def list(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: Mapping[str, Any] | None = None,
    ) -> list[Resource]:
        """Objects of a kind; ``label_selector`` is a metav1.LabelSelector dict."""

    @abc.abstractmethod
    def create(self, obj: Resource) -> Resource: ...

    @abc.abstractmethod
    def update(self, obj: Resource) -> Resource: ...

    @abc.abstractmethod
    def update_status(self, obj: Resource) -> Resource: ...

    @abc.abstractmethod
    def delete(self, kind: str, namespace: str, name: str) -> Resource | None:
        """Mark for deletion (finalizers) or remove; returns the object as it now is, None if gone."""

    @abc.abstractmethod
    def find_inventory_by_hash(
        self, *, tpm_hash: str | None = None, machine_hash: str | None = None
    ) -> Resource | None: ...

    @abc.abstractmethod
    def watch(
        self,
        kinds: tuple[str, ...] | None = None,
        since: int = 0,
        timeout: float | None = None,
    ) -> Iterator[WatchEvent]:
        """Yield changes after resourceVersion ``since``; stop after ``timeout`` seconds idle."""

    # Optional extensions; the SQL backends implement them all.

    def current_version(self) -> int:
        """The newest resourceVersion in the change log (start a watch from here)."""
        raise NotImplementedError

    def list_with_version(
        self,
        kind: str,
        namespace: str | None = None,
        label_selector: Mapping[str, Any] | None = None,
    ) -> tuple[builtins.list[Resource], int]:
        """``list`` plus the resourceVersion it reflects (start a watch there)."""
        return self.list(kind, namespace, label_selector), self.current_version()

    def find_by_token(self, kind: str, token: str) -> builtins.list[Resource]:
        """MachineRegistrations by status.registrationToken, SeedImages by status.downloadToken."""
        keys = ("registrationToken", "downloadToken")
        return [o for o in self.list(kind) if token in [(o.get("status") or {}).get(k) for k in keys]]

    def upsert_inventory(
        self,
        *,
        tpm_hash: str | None = None,
        machine_hash: str | None = None,
        new: Callable[[], Resource] | None,
        modify: Callable[[Resource], Resource],
        retries: int = 5,
    ) -> tuple[Resource, bool]:
        """Create or update the MachineInventory of one machine identity; ``(object, created)``.

        When an inventory with this hash exists, ``modify`` gets a private copy of it and
        returns the object to store (a no-op change writes nothing); otherwise ``new()`` builds
        the object to create, and ``new=None`` raises NotFound instead. The SQL store does all
        of it in one write transaction; this generic version re-reads and retries on Conflict.
        """
        for _ in range(retries):
            current = self.find_inventory_by_hash(tpm_hash=tpm_hash, machine_hash=machine_hash)
            if current is None:
                if new is None:
                    raise NotFound("MachineInventory not found")
                try:
                    return self.create(new()), True
                except Conflict:
                    continue  # the hash index refused it: another writer created it meanwhile
            try:
                return self.update(modify(copy.deepcopy(current))), False
            except (Conflict, NotFound):
                continue
        raise Conflict("MachineInventory is being modified concurrently, retry later")

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew a leader lease for ``ttl`` seconds; False while another holder has it."""
        return True

    def release_lease(self, name: str, holder: str) -> None:
        return None

    @abc.abstractmethod
    def dry_run(self) -> AbstractContextManager[None]:
        """A context in which writes run every check and return their result but store nothing."""

    @abc.abstractmethod
    def close(self) -> None: ...
