"""Named operator contexts (``~/.config/elementalctl/config``) and how a connection is chosen.

Precedence, most specific first: command-line flags; the context named by ``--context``;
``ELEMENTAL_SERVER`` / ``ELEMENTAL_TOKEN`` / ``ELEMENTAL_CA`` / ``ELEMENTAL_NAMESPACE``; the
config file's current context; the local operator's state directory (``admin-token``,
``ca.crt``). The file holds bearer tokens, so it is written with mode 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from elemental_common import consts
from elemental_operator.ctl.client import Client, CtlError

DEFAULT_NAMESPACE = "fleet-default"
CONTEXT_KEYS = ("server", "token", "certificate-authority", "insecure-skip-tls-verify", "namespace")


def config_path() -> Path:
    env = os.environ.get("ELEMENTALCTL_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "elementalctl" / "config"


def load() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {"contexts": [], "current-context": ""}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CtlError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except OSError as exc:
        raise CtlError(f"{path}: {exc.strerror}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", []), list):
        raise CtlError(f"{path}: expected a mapping with a 'contexts' list")
    data.setdefault("contexts", [])
    data.setdefault("current-context", "")
    return data


def save(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    os.replace(tmp, path)


def find(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    for ctx in data["contexts"]:
        if isinstance(ctx, dict) and ctx.get("name") == name:
            return ctx
    return None


@dataclass
class Connection:
    server: str
    token: str
    ca: str | None
    insecure: bool
    namespace: str

    def client(self) -> Client:
        if not self.token:
            raise CtlError(
                f"no admin token: pass --token, set ELEMENTAL_TOKEN, add a context to {config_path()} "
                f"or make {consts.state_dir()}/admin-token readable"
            )
        return Client(self.server, self.token, self.ca, self.insecure)


def resolve(
    *,
    context: str | None,
    server: str | None,
    token: str | None,
    ca: str | None,
    insecure: bool,
    namespace: str | None,
) -> Connection:
    """The connection and default namespace for one invocation (see the module docstring)."""
    data = load()
    ctx: dict[str, Any] = {}
    if context:
        found = find(data, context)
        if found is None:
            raise CtlError(f'context "{context}" does not exist in {config_path()}')
        ctx = found
    env = {
        "server": os.environ.get("ELEMENTAL_SERVER"),
        "token": os.environ.get("ELEMENTAL_TOKEN"),
        "certificate-authority": os.environ.get("ELEMENTAL_CA"),
        "namespace": os.environ.get("ELEMENTAL_NAMESPACE"),
    }
    current = find(data, data["current-context"]) if data["current-context"] and not context else None

    def pick(key: str, flag: Any) -> Any:
        for source in (flag, ctx.get(key), env.get(key), (current or {}).get(key)):
            if source:
                return source
        return None

    state = consts.state_dir()
    the_token = pick("token", token)
    if not the_token and (state / "admin-token").exists():
        the_token = (state / "admin-token").read_text().strip()
    the_ca = pick("certificate-authority", ca)
    if not the_ca and (state / "ca.crt").exists():
        the_ca = str(state / "ca.crt")
    return Connection(
        server=str(pick("server", server) or consts.DEFAULT_SERVER),
        token=str(the_token or ""),
        ca=str(the_ca) if the_ca else None,
        insecure=bool(insecure or pick("insecure-skip-tls-verify", False)),
        namespace=str(pick("namespace", namespace) or DEFAULT_NAMESPACE),
    )


def cmd_config(
    action: str, names: list[str], settings: dict[str, Any], out: IO[str], output: str | None = None
) -> int:
    """``config get-contexts|current-context|use-context|set-context|delete-context``."""
    data = load()
    if action == "get-contexts" and output == "name":
        out.write("".join(f"{c.get('name', '')}\n" for c in data["contexts"]))
        return 0
    if action == "get-contexts":
        rows = [["CURRENT", "NAME", "SERVER", "NAMESPACE"]]
        for ctx in data["contexts"]:
            if names and ctx.get("name") not in names:
                continue
            mark = "*" if ctx.get("name") == data["current-context"] else ""
            rows.append(
                [mark, str(ctx.get("name", "")), str(ctx.get("server", "")), str(ctx.get("namespace", ""))]
            )
        missing = [n for n in names if find(data, n) is None]
        if missing:
            raise CtlError(f'context "{missing[0]}" not found')
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            out.write("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
        return 0
    if action == "current-context":
        if not data["current-context"]:
            raise CtlError("current-context is not set")
        out.write(data["current-context"] + "\n")
        return 0
    if len(names) != 1:
        raise CtlError(f"config {action} needs exactly one context NAME")
    name = names[0]
    if action == "use-context":
        if find(data, name) is None:
            raise CtlError(f'no context exists with the name: "{name}"')
        data["current-context"] = name
        save(data)
        out.write(f'Switched to context "{name}".\n')
        return 0
    if action == "set-context":
        ctx = find(data, name)
        verb = "modified"
        if ctx is None:
            ctx = {"name": name}
            data["contexts"].append(ctx)
            verb = "created"
        for key, value in settings.items():
            if value is not None:
                ctx[key] = value
        if not data["current-context"]:
            data["current-context"] = name
        save(data)
        out.write(f'Context "{name}" {verb}.\n')
        return 0
    if action == "delete-context":
        ctx = find(data, name)
        if ctx is None:
            raise CtlError(f'cannot delete context "{name}", not in {config_path()}')
        data["contexts"].remove(ctx)
        if data["current-context"] == name:
            data["current-context"] = ""
        save(data)
        out.write(f'deleted context "{name}" from {config_path()}\n')
        return 0
    raise CtlError(
        f"unknown config command {action!r} "
        "(get-contexts, current-context, use-context, set-context, delete-context)"
    )
