"""Reconcile loops, one module per kind; ``Manager`` drives them from the store's watch."""

from __future__ import annotations

from pathlib import Path

from elemental_operator.context import OperatorContext
from elemental_operator.controllers.base import Controller, Manager
from elemental_operator.controllers.machineinventory import MachineInventoryController
from elemental_operator.controllers.machineregistration import MachineRegistrationController
from elemental_operator.controllers.machineselector import MachineInventorySelectorController
from elemental_operator.controllers.managedosimage import ManagedOSImageController
from elemental_operator.controllers.managedosversionchannel import (
    ManagedOSVersionChannelController,
    ManagedOSVersionController,
)
from elemental_operator.controllers.seedimage import SeedImageController


def all_controllers(
    ctx: OperatorContext,
    state_dir: Path,
    seedimage_command: str | None = None,
    base_dir: str | Path | None = None,
) -> list[Controller]:
    return [
        MachineRegistrationController(ctx),
        MachineInventoryController(ctx),
        MachineInventorySelectorController(ctx),
        ManagedOSVersionChannelController(ctx, state_dir / "channel-images"),
        ManagedOSVersionController(ctx),
        ManagedOSImageController(ctx),
        SeedImageController(ctx, state_dir, seedimage_command, base_dir),
    ]


__all__ = ["Controller", "Manager", "all_controllers"]
