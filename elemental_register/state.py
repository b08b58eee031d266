"""Registration state file: ``{initialRegistration, emulatedTPM, emulatedTPMSeed}`` (Go's register.State)."""

from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass

import yaml

# Go's zero time.Time, which Elemental writes when there was no registration yet.
_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass
class State:
    initial_registration: datetime.datetime | None = None
    emulated_tpm: bool = False
    emulated_tpm_seed: int = 0

    @property
    def updatable(self) -> bool:
        return self.initial_registration is not None


def _parse_time(value: object) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if not isinstance(value, str) or not value or value.startswith("0001-01-01"):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def load_state(path: str) -> State:
    """A missing or empty file is an empty state (first registration)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        return State()
    if not isinstance(data, dict):
        return State()
    seed = data.get("emulatedTPMSeed") or 0
    return State(
        initial_registration=_parse_time(data.get("initialRegistration")),
        emulated_tpm=bool(data.get("emulatedTPM")),
        emulated_tpm_seed=int(seed)
        if isinstance(seed, (int, str)) and str(seed).lstrip("-").isdigit()
        else 0,
    )


def save_state(path: str, state: State) -> None:
    """Atomic write; the directory is created 0700 (it sits next to registration secrets)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    when = state.initial_registration
    data = {
        "initialRegistration": when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if when
        else _ZERO_TIME,
        "emulatedTPM": state.emulated_tpm,
        "emulatedTPMSeed": state.emulated_tpm_seed,
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
