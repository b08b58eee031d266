"""EFI variables systemd-boot leaves for the booted OS (Boot Loader Interface), read from efivarfs."""

from __future__ import annotations

from pathlib import Path

LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"  # systemd's Boot Loader Interface vendor GUID
EFIVARS = Path("/sys/firmware/efi/efivars")


def read_string(name: str, efivars: Path = EFIVARS) -> str | None:
    """A UTF-16 string variable of the loader (e.g. LoaderBootCountPath), None when unset."""
    try:
        raw = (efivars / f"{name}-{LOADER_GUID}").read_bytes()
    except OSError:
        return None
    return raw[4:].decode("utf-16-le", errors="replace").rstrip("\0")  # 4 bytes of attributes first
