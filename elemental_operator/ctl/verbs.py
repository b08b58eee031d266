"""The verbs: get/watch, describe, apply/create, delete, edit, label/annotate, patch, wait,
explain, api-resources. Each takes the parsed arguments and a ``Session`` and returns the exit code.

Errors that concern one object of many (one document of a file, one name of several) are
printed as one line each and make the exit code 1 while the rest proceeds, as in kubectl.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from elemental_operator.api import GROUP, VERSION, KindInfo, ValidationError, validate
from elemental_operator.api import patch as patches
from elemental_operator.ctl import jsonpath, manifests, output
from elemental_operator.ctl.client import Client, CtlError
from elemental_operator.ctl.resources import Target, parse, qualified, ref, resolve_type

# Server-owned metadata that a declarative apply keeps from the stored object.
# "spec.a[0].b: unknown field" (api.ValidationError), as the server or the dry run words it.
_FIELD_ERROR = re.compile(r"^(?:Error from [^:]*: )?([A-Za-z0-9_\-./\[\]]+): ")
# What ``apply`` stores, as kubectl does, to know next time which fields the file stopped stating.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
RETRIES = 10
# kubectl's --validate values → the API server's fieldValidation
VALIDATE = {"strict": "Strict", "true": "Strict", "warn": "Warn", "ignore": "Ignore", "false": "Ignore"}


@dataclass
class Session:
    """What every verb needs: the client (made on first use), the namespace, the streams."""

    connect: Callable[[], Client]
    namespace: str
    out: IO[str]
    err: IO[str]
    _client: Client | None = None
    validation: str = "Strict"  # apply/create --validate, as fieldValidation

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self.connect()
            err = self.err

            def warn(text: str) -> None:
                err.write(f"Warning: {text}\n")  # kubectl's form

            self._client.warn = warn
        self._client.field_validation = self.validation
        return self._client


def _dry_suffix(args: argparse.Namespace) -> str:
    mode = getattr(args, "dry_run", "none")
    return {"client": " (dry run)", "server": " (server dry run)"}.get(mode, "")


def _not_found(info: KindInfo, name: str) -> str:
    return f"Error from server (NotFound): {info.plural}.{GROUP if not info.core else ''}".rstrip(".") + (
        f' "{name}" not found'
    )


def _get_or_report(s: Session, info: KindInfo, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return s.client.get(info, ns, name)
    except CtlError as exc:
        if exc.status == 404:
            s.err.write(_not_found(info, name) + "\n")
            return None
        raise


def collect(
    s: Session, targets: list[Target], ns: str | None, selector: str
) -> tuple[list[tuple[KindInfo, list[dict[str, Any]]]], int]:
    """Objects per kind: the named ones (a missing one is reported, rc 1) or those the selector
    matches in ``ns`` (None: every namespace)."""
    rc = 0
    found: list[tuple[KindInfo, list[dict[str, Any]]]] = []
    for t in targets:
        if t.names:
            objs = []
            for name in t.names:
                obj = _get_or_report(s, t.info, ns or s.namespace, name)
                if obj is None:
                    rc = 1
                else:
                    objs.append(obj)
            found.append((t.info, objs))
        else:
            found.append((t.info, s.client.list(t.info, ns, selector)))
    return found, rc


# ---- get / watch ----------------------------------------------------------------------------


def _format(args: argparse.Namespace) -> output.Format:
    return output.parse_format(
        args.output,
        no_headers=args.no_headers,
        show_labels=args.show_labels,
        label_columns=[k for v in args.label_columns for k in v.split(",") if k],
        sort_by=args.sort_by or "",
    )


def cmd_get(args: argparse.Namespace, s: Session) -> int:
    fmt = _format(args)
    targets = parse(args.args)
    ns = None if args.all_namespaces else s.namespace
    if args.watch:
        if len(targets) != 1:
            raise CtlError("watch is only supported on individual resources and resource collections")
        return _watch(args, s, targets[0], ns, fmt)
    found, rc = collect(s, targets, ns, args.selector or "")
    found = [(info, output.sort(objs, fmt.sort_by)) for info, objs in found]
    single = len(targets) == 1 and len(targets[0].names) == 1
    if fmt.tabular:
        shown = [(info, objs) for info, objs in found if objs]
        if not shown and rc == 0:
            where = "any namespace" if ns is None else f"{ns} namespace"
            s.err.write(f"No resources found in {where}.\n")
        with_kind = len(targets) > 1
        for n, (info, objs) in enumerate(shown):
            if n:
                s.out.write("\n")
            s.out.write(output.table(info, objs, fmt, ns is None, with_kind))
    else:
        flat = [(info, o) for info, objs in found for o in objs]
        # an empty List (or an empty template) as kubectl prints it, unless the names were missing
        if flat or (fmt.kind in ("json", "yaml", "jsonpath", "go-template") and rc == 0):
            s.out.write(output.dump(flat, fmt, single))
    return rc


def _watch(args: argparse.Namespace, s: Session, t: Target, ns: str | None, fmt: output.Format) -> int:
    query = {"watch": "true"}
    if args.selector:
        query["labelSelector"] = args.selector
    timeout = _seconds(args.timeout) if args.timeout else 0
    if timeout:
        query["timeoutSeconds"] = str(timeout)
    first = True
    path = Client.collection(t.info, ns) + "?" + urllib.parse.urlencode(query)
    for ev in s.client.stream(path):
        if ev.get("type") == "ERROR":
            raise CtlError(f"watch ended: {(ev.get('object') or {}).get('message', 'error')}")
        obj = ev["object"]
        if t.names and obj["metadata"]["name"] not in t.names:
            continue
        if fmt.kind == "json":  # the objects, as kubectl -w -o json prints them
            s.out.write(json.dumps(obj, indent=4) + "\n")
        elif fmt.kind == "yaml":
            s.out.write(yaml.safe_dump(obj, sort_keys=False) + "---\n")
        elif not fmt.tabular:
            s.out.write(output.dump([(t.info, obj)], fmt, True))
        else:
            lines = output.table(t.info, [obj], fmt, ns is None, False).splitlines()
            if first and not fmt.no_headers:
                s.out.write(f"{'EVENT':<9}{lines[0]}\n")
            first = False
            s.out.write(f"{ev['type']:<9}{lines[-1]}\n")
        s.out.flush()
    return 0


def cmd_describe(args: argparse.Namespace, s: Session) -> int:
    targets = parse(args.args)
    found, rc = collect(s, targets, None if args.all_namespaces else s.namespace, args.selector or "")
    n = 0
    for _, objs in found:
        for obj in objs:
            if n:
                s.out.write("\n")
            s.out.write(output.describe(obj))
            n += 1
    if n == 0 and rc == 0:
        s.err.write(f"No resources found in {s.namespace} namespace.\n")
    return rc


# ---- apply / create -------------------------------------------------------------------------


def _three_way(last: Any, new: Any, cur: Any) -> Any:
    """kubectl's client-side apply: the file's values over the stored object; keys the previous apply
    stated and this file no longer does are removed; keys others added (labels from ``label``,
    defaults, server-owned metadata, status) are kept. Lists are replaced, as in a JSON merge patch
    (kubectl's patch type for custom resources)."""
    if not (isinstance(new, dict) and isinstance(cur, dict)):
        return copy.deepcopy(new)
    last = last if isinstance(last, dict) else {}
    out = {k: v for k, v in cur.items() if k in new or k not in last}
    for key, value in new.items():
        out[key] = _three_way(last.get(key), value, cur.get(key))
    return out


def _last_applied(obj: dict[str, Any]) -> Any:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None  # a hand-edited annotation: apply as if there were none


def _server_dry(args: argparse.Namespace) -> bool:
    return getattr(args, "dry_run", "none") == "server"


def _check_locally(obj: dict[str, Any], s: Session | None = None) -> None:
    """``--dry-run=client``: the object is checked with the same schemas the server validates
    with (``api.validate``) and nothing is sent; ``server`` sends it with ``?dryRun=All``."""
    lenient = s is not None and s.validation != "Strict"
    pruned: list[str] = []
    try:
        validate(obj, pruned if lenient else None)
    except ValidationError as exc:
        raise CtlError(f"Error from validation (dry run): {exc}") from None
    if s is not None and s.validation == "Warn":
        for path in pruned:
            s.err.write(f'Warning: unknown field "{path}"\n')


def _apply_one(s: Session, doc: manifests.Doc, args: argparse.Namespace, create_only: bool) -> str:
    info = doc.kind_info()
    obj = copy.deepcopy(doc.obj)
    obj.setdefault("apiVersion", info.api_version)
    meta = obj.setdefault("metadata", {})
    if args.namespace_flag and meta.get("namespace") and meta["namespace"] != s.namespace:
        raise CtlError(
            f'the namespace from the provided object "{meta["namespace"]}" does not match the '
            f"namespace \"{s.namespace}\". You must pass '--namespace={meta['namespace']}' "
            "to perform this operation."
        )
    ns = meta.get("namespace") or s.namespace
    meta["namespace"] = ns
    name = meta.get("name")
    status = obj.pop("status", None)
    dry = args.dry_run != "none"
    if not create_only:
        applied = copy.deepcopy(obj)
        annotations = applied["metadata"].get("annotations") or {}
        annotations.pop(LAST_APPLIED, None)
        if not annotations:
            applied["metadata"].pop("annotations", None)
        meta.setdefault("annotations", {})[LAST_APPLIED] = json.dumps(applied, separators=(",", ":"))
    if create_only or not name:
        if args.dry_run == "client":
            _check_locally(obj, s)
            return f"{ref(info, name or meta.get('generateName', '') + '*')} created{_dry_suffix(args)}"
        out = s.client.call("POST", Client.collection(info, ns), obj, dry_run=_server_dry(args))
        return f"{ref(info, out['metadata']['name'])} created{_dry_suffix(args)}"
    # Read-modify-write; a controller may touch the object (finalizers, status) between our GET
    # and PUT, so retry on a stale resourceVersion unless the file itself pinned one.
    pinned = "resourceVersion" in meta
    warned = False  # once per object, not once per conflict retry
    for attempt in range(RETRIES):
        try:
            cur = s.client.get(info, ns, name)
        except CtlError as exc:
            if exc.status != 404:
                raise
            if args.dry_run == "client":
                _check_locally(obj, s)
                return f"{ref(info, name)} created{_dry_suffix(args)}"
            out = s.client.call("POST", Client.collection(info, ns), obj, dry_run=_server_dry(args))
            if dry:
                return f"{ref(info, name)} created{_dry_suffix(args)}"
            if status is not None and info.has_status:
                s.client.call("PUT", Client.item(info, ns, name) + "/status", {**out, "status": status})
            return f"{ref(info, name)} created"
        previous = _last_applied(cur)
        if previous is None and not warned:
            warned = True
            s.err.write(
                f"Warning: {qualified(info)}/{name} is missing the {LAST_APPLIED} annotation "
                "(it was not made by apply); it is patched now, nothing is removed\n"
            )
        new = _three_way(previous, obj, cur)
        if dry:
            if args.dry_run == "client":
                _check_locally(new, s)
            elif new != cur:
                s.client.call("PUT", Client.item(info, ns, name), new, dry_run=True)
            changed = new != cur or (status is not None and status != cur.get("status"))
            return f"{ref(info, name)} {'configured' if changed else 'unchanged'}{_dry_suffix(args)}"
        if new == cur:
            out = cur
            break
        try:
            out = s.client.call("PUT", Client.item(info, ns, name), new)
            break
        except CtlError as exc:
            if pinned or exc.status != 409 or attempt == RETRIES - 1:
                raise
    changed = out["metadata"]["resourceVersion"] != cur["metadata"]["resourceVersion"]
    if status is not None and status != out.get("status") and info.has_status:
        s.client.call("PUT", Client.item(info, ns, name) + "/status", {**out, "status": status})
        changed = True
    return f"{ref(info, name)} {'configured' if changed else 'unchanged'}"


def cmd_apply(args: argparse.Namespace, s: Session, create_only: bool = False) -> int:
    if not args.filename:
        raise CtlError("must specify one of -f and -k" if not create_only else "must specify -f FILENAME")
    validation = VALIDATE.get(str(args.validate).lower())
    if validation is None:
        raise CtlError(
            f'invalid - validate option "{args.validate}"; '
            "must be one of: strict (or true), warn, ignore (or false)"
        )
    docs = manifests.read(args.filename, args.recursive)
    if not docs:
        raise CtlError("no objects passed to " + ("create" if create_only else "apply"))
    s.validation = validation
    rc = 0
    for doc in docs:
        try:
            s.out.write(_apply_one(s, doc, args, create_only) + "\n")
        except CtlError as exc:
            msg = exc.message
            if not msg.startswith(doc.source):
                field = _FIELD_ERROR.match(msg)
                at = doc.position(field.group(1)) if field else ""
                msg = f"{msg} ({doc.where}{at}{', ' + doc.name if doc.name else ''})"
            s.err.write(msg + "\n")
            rc = 1
    return rc


# ---- delete ---------------------------------------------------------------------------------


def _selected(
    s: Session, args: argparse.Namespace, verb: str, need: bool = True
) -> tuple[list[tuple[KindInfo, str, str]], int]:
    """(kind, namespace, name) of TYPE NAME…, TYPE/NAME…, -l, --all or -f; rc 1 if some are missing."""
    if getattr(args, "filename", None):
        out = []
        for doc in manifests.read(args.filename, args.recursive):
            info = doc.kind_info()
            if not doc.name:
                raise CtlError(f"{doc.where}: metadata.name is required to {verb}")
            out.append((info, str(doc.obj.get("metadata", {}).get("namespace") or s.namespace), doc.name))
        return out, 0
    targets = parse(args.args)
    named = any(t.names for t in targets)
    if named and (args.selector or getattr(args, "all", False)):
        raise CtlError("name cannot be provided when a selector or --all is specified")
    if not named and not args.selector and not getattr(args, "all", False) and need:
        raise CtlError(
            f"resource(s) were provided, but no name was specified (use -l SELECTOR or --all to {verb} "
            f"every match)"
        )
    ns = None if getattr(args, "all_namespaces", False) else s.namespace
    if named:
        return [(t.info, s.namespace, n) for t in targets for n in t.names], 0
    out = []
    for t in targets:
        for obj in s.client.list(t.info, ns, args.selector or ""):
            out.append((t.info, obj["metadata"]["namespace"], obj["metadata"]["name"]))
    return out, 0


def cmd_delete(args: argparse.Namespace, s: Session) -> int:
    if not args.filename and not args.args:
        raise CtlError("you must provide one or more resources by argument or filename")
    chosen, rc = _selected(s, args, "delete")
    if not chosen and not args.filename:
        s.err.write("No resources found\n")
    gone: list[tuple[KindInfo, str, str]] = []
    for info, ns, name in chosen:
        try:
            if args.dry_run == "client":
                pass  # kubectl's client dry run of delete sends nothing
            else:
                s.client.call("DELETE", Client.item(info, ns, name), dry_run=_server_dry(args))
            s.out.write(f'{qualified(info)} "{name}" deleted{_dry_suffix(args)}\n')
            gone.append((info, ns, name))
        except CtlError as exc:
            if args.ignore_not_found and exc.status == 404:
                continue
            s.err.write((_not_found(info, name) if exc.status == 404 else exc.message) + "\n")
            rc = 1
    if args.wait and args.dry_run == "none":
        limit = _seconds(args.timeout)  # 0: no limit, as kubectl's delete --timeout
        deadline = time.monotonic() + limit if limit else None
        for info, ns, name in gone:
            if not _wait_one(s, info, ns, name, ("delete", "", ""), deadline):
                raise CtlError(f"timed out waiting for {info.plural}/{name} to be deleted")
    return rc


# ---- edit -----------------------------------------------------------------------------------


def cmd_edit(args: argparse.Namespace, s: Session) -> int:
    targets = parse(args.args, need_names=True)
    if len(targets) != 1 or len(targets[0].names) != 1:
        raise CtlError("edit takes exactly one resource (TYPE NAME or TYPE/NAME)")
    info, name = targets[0].info, targets[0].names[0]
    path = Client.item(info, s.namespace, name)
    cur = s.client.call("GET", path)
    editor = os.environ.get("ELEMENTALCTL_EDITOR") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        tmp.write(yaml.safe_dump(cur, sort_keys=False))
    try:
        res = subprocess.run([*shlex.split(editor), tmp.name])
        if res.returncode != 0:
            raise CtlError(f"the editor {editor!r} exited with {res.returncode}; nothing changed")
        docs = manifests.parse_text(tmp.name, Path(tmp.name).read_text())
    finally:
        os.unlink(tmp.name)
    new = docs[0].obj if docs else None
    if new == cur or new is None:
        s.out.write("Edit cancelled, no changes made.\n")
        return 0
    res_obj = s.client.call("PUT", path, new)
    if (new.get("status") or None) != (cur.get("status") or None) and info.has_status:
        s.client.call("PUT", path + "/status", {**res_obj, "status": new.get("status")})
    s.out.write(f"{ref(info, name)} edited\n")
    return 0


# ---- read-modify-write verbs: label, annotate, patch ----------------------------------------


def _update(
    s: Session,
    info: KindInfo,
    ns: str,
    name: str,
    mutate: Callable[[dict[str, Any]], dict[str, Any]],
    args: argparse.Namespace,
    subresource: str = "",
) -> bool:
    """GET, mutate, PUT with the resourceVersion read; a 409 (a controller wrote in between) re-reads
    and re-applies. Returns whether anything changed."""
    for attempt in range(RETRIES):
        cur = s.client.get(info, ns, name)
        new = mutate(copy.deepcopy(cur))
        new.setdefault("metadata", {})["resourceVersion"] = cur["metadata"].get("resourceVersion")
        if new == cur:
            return False
        if args.dry_run == "client":
            _check_locally(new)
            return True
        path = Client.item(info, ns, name) + (f"/{subresource}" if subresource else "")
        try:
            out = s.client.call("PUT", path, new, dry_run=_server_dry(args))
            if _server_dry(args):
                return True
        except CtlError as exc:
            if exc.status == 409 and attempt < RETRIES - 1:
                continue
            raise
        return bool(out["metadata"].get("resourceVersion") != cur["metadata"].get("resourceVersion"))
    return False


# Kubernetes' qualified names (label and annotation keys) and label values, checked here as kubectl
# does before sending: the admin API checks label values, but not keys.
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _check_key(key: str, what: str) -> None:
    prefix, slash, name = key.rpartition("/")
    ok = bool(_NAME_PART.match(name)) and len(name) <= 63
    if slash:
        ok = ok and bool(_DNS_SUBDOMAIN.match(prefix)) and len(prefix) <= 253
    if not ok:
        raise CtlError(
            f"invalid {what} key {key!r}: [prefix/]name, the name at most 63 alphanumerics, '-', '_' or '.' "
            "(beginning and ending with an alphanumeric), the prefix a DNS subdomain"
        )


def _key_values(pairs: list[str], what: str) -> tuple[dict[str, str], list[str]]:
    sets: dict[str, str] = {}
    removes: list[str] = []
    for pair in pairs:
        if "=" in pair:
            key, _, value = pair.partition("=")
            if not key:
                raise CtlError(f"invalid {what} spec: {pair!r}")
            _check_key(key, what)
            if what == "label" and (len(value) > 63 or not _LABEL_VALUE.match(value)):
                raise CtlError(
                    f"invalid label value: {pair!r}: at most 63 characters, alphanumerics, '-', '_' or '.', "
                    "beginning and ending with an alphanumeric"
                )
            sets[key] = value
        elif pair.endswith("-") and len(pair) > 1:
            removes.append(pair[:-1])
        else:
            raise CtlError(f"invalid {what} spec: {pair!r} (KEY=VALUE or KEY-)")
    both = set(sets) & set(removes)
    if both:
        raise CtlError(
            f"can not both modify and remove the following {what}(s) in the same command: "
            f"{', '.join(sorted(both))}"
        )
    return sets, removes


def cmd_meta(args: argparse.Namespace, s: Session, field: str) -> int:
    """``label`` / ``annotate``: KEY=VALUE sets (an existing key needs ``--overwrite``), KEY- removes."""
    what = "label" if field == "labels" else "annotation"
    # kubectl's split: the first argument is a resource; changes start at the first KEY=VALUE/KEY-.
    split = next((i for i, a in enumerate(args.args) if i and ("=" in a or a.endswith("-"))), len(args.args))
    resources, pairs = args.args[:split], args.args[split:]
    if not pairs and not getattr(args, "list", False):
        raise CtlError(f"at least one {what} update is required")
    args.args = resources
    sets, removes = _key_values(pairs, what)
    chosen, rc = _selected(s, args, what)
    past = "labeled" if what == "label" else "annotated"
    for info, ns, name in chosen:
        notes: list[str] = []

        def mutate(obj: dict[str, Any], notes: list[str] = notes) -> dict[str, Any]:
            notes.clear()
            values = dict(obj["metadata"].get(field) or {})
            if not args.overwrite:
                for key in sets:
                    if key in values:
                        raise CtlError(
                            f"'{key}' already has a value ({values[key]}), and --overwrite is false"
                        )
            for key in removes:
                if key not in values:
                    notes.append(f'{what} "{key}" not found.')
                values.pop(key, None)
            values.update(sets)
            obj["metadata"][field] = values
            return obj

        try:
            changed = _update(s, info, ns, name, mutate, args)
        except CtlError as exc:
            s.err.write((_not_found(info, name) if exc.status == 404 else f"error: {exc.message}") + "\n")
            rc = 1
            continue
        for note in notes:
            s.err.write(note + "\n")
        s.out.write(f"{ref(info, name)} {past if changed else 'not ' + past}{_dry_suffix(args)}\n")
    return rc


def _patch_body(args: argparse.Namespace) -> Any:
    if bool(args.patch) == bool(args.patch_file):
        raise CtlError("must specify exactly one of -p/--patch or --patch-file")
    source = "--patch"
    text = args.patch
    if args.patch_file:
        source = args.patch_file
        try:
            text = Path(args.patch_file).read_text()
        except OSError as exc:
            raise CtlError(f"cannot read {args.patch_file}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CtlError(f"{source}{where}: not valid JSON or YAML ({getattr(exc, 'problem', exc)})") from None


def _patch_one(s: Session, info: KindInfo, ns: str, name: str, body: Any, args: argparse.Namespace) -> bool:
    """The admin API's PATCH with the patch type's content type (the server applies it in one
    write); ``--dry-run=client`` applies it to a GET locally. Returns whether anything changed."""
    path = Client.item(info, ns, name) + (f"/{args.subresource}" if args.subresource else "")
    cur = s.client.get(info, ns, name)
    if args.dry_run == "client":
        try:
            new = patches.apply(args.type, copy.deepcopy(cur), body)
        except patches.PatchError as exc:
            raise CtlError(f"error: {exc}") from None
        _check_locally(new)
        return new != cur
    out = s.client.call(
        "PATCH", path, body, dry_run=_server_dry(args), content_type=patches.CONTENT_TYPES[args.type]
    )
    if _server_dry(args):
        return bool(out != cur)
    return bool(out["metadata"].get("resourceVersion") != cur["metadata"].get("resourceVersion"))


def cmd_patch(args: argparse.Namespace, s: Session) -> int:
    body = _patch_body(args)
    # The patch's shape is checked before any request, so a bad patch is one error, not one per object.
    if args.type == "json" and not isinstance(body, list):
        raise CtlError("json patch: the patch must be a list of operations")
    if args.type != "json" and not isinstance(body, dict):
        raise CtlError(f"{args.type} patch: the patch must be an object")
    if args.subresource not in ("", "status"):
        raise CtlError(f'invalid subresource value: "{args.subresource}". Must be one of [status]')
    chosen, rc = _selected(s, args, "patch")
    for info, ns, name in chosen:
        if args.subresource and not info.has_status:
            s.err.write(f"error: {info.kind} has no status subresource\n")
            rc = 1
            continue
        try:
            changed = _patch_one(s, info, ns, name, body, args)
        except CtlError as exc:
            s.err.write((_not_found(info, name) if exc.status == 404 else exc.message) + "\n")
            rc = 1
            continue
        s.out.write(
            f"{ref(info, name)} {'patched' if changed else 'patched (no change)'}{_dry_suffix(args)}\n"
        )
    return rc


# ---- wait -----------------------------------------------------------------------------------


def _seconds(text: str | float) -> float:
    """Go durations as kubectl takes them (``30s``, ``2m30s``, ``1h``); a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    try:
        return float(text)
    except ValueError:
        pass
    total, num, i = 0.0, "", 0
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = "ms" if text[i : i + 2] == "ms" else c
        if unit not in units or not num:
            raise CtlError(f'invalid duration "{text}" (e.g. 30s, 5m, 1h)')
        total += float(num) * units[unit]
        num, i = "", i + len(unit)
    if num:
        raise CtlError(f'invalid duration "{text}": missing unit in duration')
    return total


def parse_for(text: str) -> tuple[str, str, str]:
    """``--for``: ("delete"|"condition"|"jsonpath", what, expected value or "")."""
    if text == "delete":
        return ("delete", "", "")
    if text.startswith("condition="):
        cond, _, value = text[len("condition=") :].partition("=")
        if not cond:
            raise CtlError("--for=condition=TYPE[=VALUE] needs a condition type")
        return ("condition", cond, value or "True")
    if text.startswith("jsonpath="):
        rest = text[len("jsonpath=") :]
        if rest.startswith("{"):
            end = rest.find("}")
            if end < 0:
                raise CtlError(f"--for={text}: unclosed '{{'")
            path, value = rest[1:end], rest[end + 1 :].removeprefix("=")
        else:
            path, _, value = rest.partition("=")
        jsonpath.compile_path(path)
        return ("jsonpath", path, value)
    raise CtlError(
        f"unrecognized condition: {text!r} (delete, condition=TYPE[=VALUE], jsonpath={{PATH}}=VALUE)"
    )


def _met(obj: dict[str, Any], cond: tuple[str, str, str]) -> bool:
    kind, what, value = cond
    if kind == "condition":
        for c in (obj.get("status") or {}).get("conditions") or []:
            if str(c.get("type", "")).lower() == what.lower():
                return str(c.get("status", "")).lower() == value.lower()
        return False
    if kind == "jsonpath":
        values = jsonpath.find(obj, what)
        return bool(values) if not value else any(jsonpath.text(v) == value for v in values)
    return False


def _wait_one(
    s: Session, info: KindInfo, ns: str, name: str, cond: tuple[str, str, str], deadline: float | None
) -> bool:
    """Wait on a watch (no polling) until ``cond`` holds for one object or the deadline passes."""
    listing = s.client.call("GET", Client.collection(info, ns))
    current = next((o for o in listing["items"] if o["metadata"]["name"] == name), None)
    if current is None:
        if cond[0] == "delete":
            return True
        raise CtlError(_not_found(info, name), 404)
    if _met(current, cond):
        return True
    rv = listing["metadata"]["resourceVersion"]
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        query = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": str(remaining or 0)}
        path = Client.collection(info, ns) + "?" + urllib.parse.urlencode(query)
        for ev in s.client.stream(path, timeout=None if remaining is None else remaining + 30):
            if ev.get("type") == "ERROR":
                raise CtlError(f"watch ended: {(ev.get('object') or {}).get('message', 'error')}")
            obj = ev["object"]
            rv = obj["metadata"].get("resourceVersion", rv)
            if obj["metadata"]["name"] != name:
                continue
            if ev["type"] == "DELETED":
                if cond[0] == "delete":
                    return True
                raise CtlError(f"{info.plural}/{name} was deleted while waiting for {cond[0]} {cond[1]}")
            if _met(obj, cond):
                return True
        if deadline is None:
            continue  # the server ended an unbounded watch: resume from the last version


def cmd_wait(args: argparse.Namespace, s: Session) -> int:
    if not args.for_:
        raise CtlError("--for is required (delete, condition=TYPE[=VALUE], jsonpath={PATH}=VALUE)")
    cond = parse_for(args.for_)
    timeout = _seconds(args.timeout)
    deadline = time.monotonic() + timeout
    chosen, rc = _selected(s, args, "wait for")
    if not chosen:
        raise CtlError("no matching resources found")
    met = {"delete": "deleted", "condition": "condition met", "jsonpath": "condition met"}[cond[0]]
    for info, ns, name in chosen:
        if _wait_one(s, info, ns, name, cond, deadline):
            s.out.write(f"{ref(info, name)} {met}\n")
        else:
            raise CtlError(f"timed out waiting for the condition on {info.plural}/{name}")
    return rc


# ---- explain / api-resources ----------------------------------------------------------------


def _type_of(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "IntOrString"
    typ = schema.get("type")
    if typ == "array":
        return "[]" + _type_of(schema.get("items") or {})
    if typ == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map[string]" + _type_of(schema["additionalProperties"])
    if typ == "object" or typ is None:
        return "Object"
    return str(typ)


def _children(schema: dict[str, Any]) -> dict[str, Any]:
    while schema.get("type") == "array":
        schema = schema.get("items") or {}
    props: dict[str, Any] = schema.get("properties") or {}
    return props


def _fields(schema: dict[str, Any], depth: int, recursive: bool) -> list[str]:
    lines = []
    required = set(schema.get("required") or ())
    for name, sub in _children(schema).items():
        req = " -required-" if name in required else ""
        lines.append(f"{'  ' * depth}{name}\t<{_type_of(sub)}>{req}")
        if recursive:
            lines += _fields(sub, depth + 1, recursive)
        elif sub.get("description"):
            lines.append(f"{'  ' * (depth + 1)}{sub['description']}")
            lines.append("")
    return lines


def cmd_explain(args: argparse.Namespace, s: Session) -> int:
    if len(args.args) != 1:
        raise CtlError("explain takes one argument: TYPE[.FIELD…] (e.g. mr.spec.config)")
    head, *path = args.args[0].split(".")
    info = resolve_type(head)
    schema: dict[str, Any] = info.schema
    for n, part in enumerate(path):
        sub = _children(schema).get(part)
        if sub is None:
            raise CtlError(f'field "{part}" does not exist in {info.kind}.{".".join(path[:n]) or "<root>"}')
        schema = sub
    out = [
        f"GROUP:      {GROUP if not info.core else ''}",
        f"KIND:       {info.kind}",
        f"VERSION:    {VERSION if not info.core else 'v1'}",
        "",
    ]
    if path:
        out += [f"FIELD: {path[-1]} <{_type_of(schema)}>", ""]
    out += ["DESCRIPTION:", f"    {schema.get('description') or '<empty>'}"]
    if "default" in schema:
        out.append(f"    default: {json.dumps(schema['default'])}")
    if "enum" in schema:
        out.append(f"    enum: {', '.join(map(str, schema['enum']))}")
    fields = _fields(schema, 1, args.recursive)
    if fields:
        out += ["", "FIELDS:", *fields]
    s.out.write("\n".join(out).rstrip() + "\n")
    return 0


def cmd_api_resources(args: argparse.Namespace, s: Session) -> int:
    resources = s.client.call("GET", "")["resources"]
    if args.output == "name":
        for r in resources:
            group = r["apiVersion"].rpartition("/")[0]
            s.out.write(f"{r['plural']}{'.' + group if group else ''}\n")
        return 0
    if args.output not in (None, "wide"):
        raise CtlError(f"--output {args.output} is not available in api-resources (name, wide)")
    rows = [] if args.no_headers else [["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]]
    for r in resources:
        rows.append(
            [
                r["plural"],
                ",".join(r.get("shortNames") or []),
                r["apiVersion"],
                str(r["namespaced"]).lower(),
                r["kind"],
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)] if rows else []
    for r in rows:
        s.out.write("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    return 0
