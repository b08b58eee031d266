"""What the register client calls. `config` is the Config the operator returned (YAML as dict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elemental_register.installer import install as _install
from elemental_register.installer import oem
from elemental_register.installer import reset as _reset
from elemental_register.installer.progress import Progress


def install(config: dict[str, Any], progress: Progress, *, state: dict[str, Any] | None = None) -> None:
    """Install the OS as config.elemental.install says. `state` is the register client's state
    file content (written to /oem/registration/state.yaml); default: the live seed's state file."""
    _install.install(config, progress, state=state)


def reset(config: dict[str, Any], progress: Progress, *, state: dict[str, Any] | None = None) -> None:
    """Reset from recovery as config.elemental.reset says, then reboot (default) or power off."""
    _reset.reset(config, progress, state=state)


def install_unmanaged(config: dict[str, Any], root: Path = Path("/")) -> None:
    """--no-toolkit: only the system-agent files; the OS itself is left alone."""
    oem.install_agent_files(config, root)
