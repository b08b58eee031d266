"""``elementalctl``: a kubectl-like client for the operator's admin API (see docs/ctl.md).

Connection settings come from flags, then a named context (``--context``), then
``ELEMENTAL_SERVER`` / ``ELEMENTAL_TOKEN`` / ``ELEMENTAL_CA``, then the current context of
``~/.config/elementalctl/config`` (``$ELEMENTALCTL_CONFIG``), then the operator's state directory
(``$ELEMENTAL_STATE`` or /var/lib/elemental-py: ``admin-token``, ``ca.crt``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO, Any, NoReturn

from elemental_common.errors import entry_point
from elemental_operator.api import ValidationError
from elemental_operator.ctl import completion, contexts, verbs
from elemental_operator.ctl.client import Client, CtlError
from elemental_operator.ctl.contexts import DEFAULT_NAMESPACE
from elemental_operator.ctl.output import FORMATS

__all__ = ["Client", "CtlError", "DEFAULT_NAMESPACE", "main", "parser_for"]

# Global flags that take a value: needed to find the verb wherever the flags are.
VALUE_FLAGS = {
    "-s",
    "--server",
    "--token",
    "--certificate-authority",
    "--ca",
    "--context",
    "-n",
    "--namespace",
}

DRY_RUN_HELP = (
    "none (default), client (validate locally with the operator's own schemas, send nothing) or "
    "server (send with ?dryRun=All: the operator runs every check and stores nothing)"
)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one-line CtlErrors (exit 1, as kubectl), not argparse's exit 2."""

    def error(self, message: str) -> NoReturn:
        raise CtlError(f"{self.prog}: {message} (see {self.prog} --help)")


def _globals(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (any position)")
    g.add_argument("-s", "--server", help="operator URL (https://host:port)")
    g.add_argument("--token", help="admin bearer token")
    g.add_argument("--certificate-authority", "--ca", dest="certificate_authority")
    g.add_argument("--insecure-skip-tls-verify", action="store_true")
    g.add_argument("--context", help="a context of the config file")
    g.add_argument("-n", "--namespace", help=f"namespace (default: the context's, else {DEFAULT_NAMESPACE})")


def _listing(p: argparse.ArgumentParser, *, all_flag: bool = False) -> None:
    p.add_argument("-l", "--selector", help="label selector (a=b,c!=d,e in (f,g),!h)")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    if all_flag:
        p.add_argument("--all", action="store_true", help="every object of the types in the namespace")


def _files(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("-f", "--filename", action="append", default=[], help="FILE, DIR, URL or - (repeatable)")
    p.add_argument("-R", "--recursive", action="store_true", help="read DIRs recursively")


def _dry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        default="none",
        choices=["none", "client", "server"],
        help=DRY_RUN_HELP,
    )


def _out(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", help="one of " + "|".join(FORMATS))
    p.add_argument("--no-headers", action="store_true")
    p.add_argument("--show-labels", action="store_true")
    p.add_argument("-L", "--label-columns", action="append", default=[], metavar="KEY[,KEY]")
    p.add_argument("--sort-by", metavar="JSONPATH")


Verb = Callable[[argparse.Namespace, verbs.Session], int]


def _verbs() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Verb]]:
    def get(p: argparse.ArgumentParser) -> None:
        _out(p)
        _listing(p)
        p.add_argument("-w", "--watch", action="store_true")
        p.add_argument("--timeout", default="0", help="stop watching after this long (30s, 5m)")

    def describe(p: argparse.ArgumentParser) -> None:
        _listing(p)

    def apply(p: argparse.ArgumentParser) -> None:
        _files(p)
        _dry(p)
        p.add_argument(
            "--validate",
            nargs="?",
            const="strict",
            default="strict",
            help="strict (or true, the default): unknown fields are errors; warn: dropped with a "
            "warning; ignore (or false): dropped",
        )

    def delete(p: argparse.ArgumentParser) -> None:
        _files(p)
        _listing(p, all_flag=True)
        _dry(p)
        p.add_argument("--ignore-not-found", action="store_true")
        p.add_argument(
            "--wait",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="wait until finalizers let the objects go (default; --wait=false does not)",
        )
        p.add_argument("--timeout", default="0", help="how long --wait waits (0: forever)")

    def meta(p: argparse.ArgumentParser) -> None:
        _files(p)
        _listing(p, all_flag=True)
        _dry(p)
        p.add_argument("--overwrite", action="store_true", help="replace existing values")

    def patch(p: argparse.ArgumentParser) -> None:
        _files(p)
        _dry(p)
        p.add_argument("-p", "--patch")
        p.add_argument("--patch-file")
        p.add_argument("--type", default="strategic", choices=["strategic", "merge", "json"])
        p.add_argument("--subresource", default="", help="status: patch the status")
        p.set_defaults(selector="", all=False)

    def wait(p: argparse.ArgumentParser) -> None:
        _files(p)
        _listing(p, all_flag=True)
        p.add_argument("--for", dest="for_", help="delete, condition=TYPE[=VALUE] or jsonpath={PATH}=VALUE")
        p.add_argument("--timeout", default="30s")

    def explain(p: argparse.ArgumentParser) -> None:
        p.add_argument("--recursive", action="store_true")

    def api_resources(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", choices=["wide", "name"])
        p.add_argument("--no-headers", action="store_true")

    def none(p: argparse.ArgumentParser) -> None:
        pass

    return {
        "get": ("list or show resources", get, verbs.cmd_get),
        "watch": ("same as get -w", get, verbs.cmd_get),
        "describe": ("show resources in detail", describe, verbs.cmd_describe),
        "apply": ("create or update from manifests", apply, verbs.cmd_apply),
        "create": ("create from manifests", apply, lambda a, s: verbs.cmd_apply(a, s, create_only=True)),
        "delete": ("delete resources", delete, verbs.cmd_delete),
        "edit": ("edit a resource in $EDITOR", none, verbs.cmd_edit),
        "label": (
            "set (KEY=VALUE) or remove (KEY-) labels",
            meta,
            lambda a, s: verbs.cmd_meta(a, s, "labels"),
        ),
        "annotate": ("set or remove annotations", meta, lambda a, s: verbs.cmd_meta(a, s, "annotations")),
        "patch": ("patch resources (strategic, merge or JSON patch)", patch, verbs.cmd_patch),
        "wait": ("wait for a condition, a JSONPath value or deletion", wait, verbs.cmd_wait),
        "explain": ("document a kind's fields (TYPE[.FIELD...])", explain, verbs.cmd_explain),
        "api-resources": (
            "list the resource types the operator serves",
            api_resources,
            verbs.cmd_api_resources,
        ),
    }


OTHER = {
    "config": "operator contexts: get-contexts, current-context, use-context, set-context, delete-context",
    "completion": "print a bash or zsh completion script",
}


def parser_for(verb: str) -> argparse.ArgumentParser:
    if verb == "config":
        p = _Parser(prog="elementalctl config", description=OTHER["config"])
        _globals(p)
        p.add_argument("action")
        p.add_argument("names", nargs="*")
        p.add_argument("--current", action="store_true", help="set-context: the current context")
        p.add_argument("-o", "--output", choices=["name"])
        return p
    if verb == "completion":
        p = _Parser(prog="elementalctl completion", description=OTHER["completion"])
        p.add_argument("shell", choices=["bash", "zsh"])
        return p
    table = _verbs()
    if verb not in table:
        raise CtlError(f'unknown command "{verb}" for "elementalctl" (see elementalctl --help)')
    helptext, add, _ = table[verb]
    p = _Parser(prog=f"elementalctl {verb}", description=helptext)
    _globals(p)
    add(p)
    metavar = {
        "label": "TYPE NAME|TYPE/NAME KEY=VALUE|KEY-",
        "annotate": "TYPE NAME|TYPE/NAME KEY=VALUE|KEY-",
        "explain": "TYPE[.FIELD]",
        "api-resources": "-",
    }.get(verb, "TYPE[,TYPE] [NAME] | TYPE/NAME")
    p.add_argument("args", nargs="*", metavar=metavar)
    return p


def _usage() -> str:
    lines = [
        "elementalctl: a kubectl-like client for the operator's admin API (docs/ctl.md)",
        "",
        "usage: elementalctl VERB [ARGS] [FLAGS]",
        "",
    ]
    for name, (helptext, _, _) in _verbs().items():
        lines.append(f"  {name:<14}{helptext}")
    for name, helptext in OTHER.items():
        lines.append(f"  {name:<14}{helptext}")
    lines += ["", "Flags may come anywhere; 'elementalctl VERB --help' lists a verb's flags."]
    return "\n".join(lines) + "\n"


def kubectl_flags(argv: list[str]) -> list[str]:
    """pflag spellings argparse reads otherwise: ``--wait=false`` and a bare ``--dry-run`` (which,
    unlike an optional argparse value, never takes the next word)."""
    out = []
    for word in argv:
        if word in ("--wait=false", "--wait=true"):
            word = "--no-wait" if word.endswith("false") else "--wait"
        elif word == "--dry-run":
            word = "--dry-run=client"
        out.append(word)
    return out


def split_verb(argv: list[str]) -> tuple[str | None, list[str]]:
    """The verb (the first word that is not a flag or a flag's value) and the other words."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            break
        if word.startswith("-"):
            i += 2 if word in VALUE_FLAGS else 1
            continue
        return word, argv[:i] + argv[i + 1 :]
    return None, argv


def _flag_words() -> list[str]:
    words: list[str] = []
    for verb in _verbs():
        for action in parser_for(verb)._actions:
            words += [o for o in action.option_strings if o.startswith("--")]
    return words


@entry_point("elementalctl")
def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    verb, rest = split_verb(kubectl_flags(argv))
    if verb is None:
        out.write(_usage())
        return 0  # kubectl prints its help with exit 0 too
    args = parser_for(verb).parse_intermixed_args(rest)
    if verb == "completion":
        out.write(completion.script(args.shell, [*_verbs(), *OTHER], _flag_words()))
        return 0
    if verb == "config":
        settings: dict[str, Any] = {
            "server": args.server,
            "token": args.token,
            "certificate-authority": args.certificate_authority,
            "insecure-skip-tls-verify": True if args.insecure_skip_tls_verify else None,
            "namespace": args.namespace,
        }
        rc = contexts.cmd_config(args.action, args.names, settings, out, args.output)
        if args.current and args.action == "set-context":
            contexts.cmd_config("use-context", args.names, {}, out)
        return rc
    conn = contexts.resolve(
        context=args.context,
        server=args.server,
        token=args.token,
        ca=args.certificate_authority,
        insecure=args.insecure_skip_tls_verify,
        namespace=args.namespace,
    )
    args.namespace_flag = bool(args.namespace)
    if verb == "watch":
        args.watch = True
    session = verbs.Session(connect=conn.client, namespace=conn.namespace, out=out, err=sys.stderr)
    try:
        return _verbs()[verb][2](args, session)
    except ValidationError as exc:
        raise CtlError(str(exc)) from None
