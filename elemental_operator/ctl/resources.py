"""Resource arguments as kubectl reads them: ``TYPE[,TYPE…] [NAME…]``, ``TYPE/NAME…``, ``all``.

A TYPE is a kind, plural, singular or short name in any case, optionally qualified as
``plural.group`` or ``plural.version.group``. Elemental's CRDs declare no shortNames; ours come
from ``api/kinds.py`` (``mr``, ``mi``, ``mis``, ``mist``, ``mos``, ``mosv``, ``mosvc``, ``si``)
plus the few longer aliases below that the Elemental docs and habits use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from elemental_operator.api import GROUP, VERSION, KindInfo, kinds
from elemental_operator.ctl.client import CtlError

# Aliases elementalctl adds on top of kinds.py's short names (no upstream source for them).
EXTRA_ALIASES = {
    "miselector": "MachineInventorySelector",
    "miselectors": "MachineInventorySelector",
    "mistemplate": "MachineInventorySelectorTemplate",
    "mistemplates": "MachineInventorySelectorTemplate",
}


def all_kinds() -> list[KindInfo]:
    """What ``get all`` lists: every Elemental kind (not core Secrets), in dependency order."""
    return [i for i in kinds().values() if not i.core]


def group_of(info: KindInfo) -> str:
    return "" if info.core else GROUP


def qualified(info: KindInfo) -> str:
    """``machineregistration.elemental.cattle.io`` (kubectl's prefix in ``-o name`` and messages)."""
    return f"{info.singular}.{GROUP}" if not info.core else info.singular


def ref(info: KindInfo, name: str) -> str:
    return f"{qualified(info)}/{name}"


def _names(info: KindInfo) -> set[str]:
    extra = {a for a, k in EXTRA_ALIASES.items() if k == info.kind}
    return {info.kind.lower(), info.plural, info.singular, *info.short_names, *extra}


def resolve_type(text: str) -> KindInfo:
    """One TYPE spelling to its kind; ``CtlError`` naming the spelling when none matches."""
    low = text.lower()
    candidates = [(low, "")]
    # plural.group or plural.version.group (kubectl's fully qualified resource names)
    head, dot, rest = low.partition(".")
    if dot:
        candidates.append((head, rest))
    for name, qualifier in candidates:
        for info in kinds().values():
            if name not in _names(info):
                continue
            group = group_of(info)
            if qualifier in ("", group, f"{VERSION}.{group}" if group else "v1"):
                return info
    if low in ("po", "pod", "pods"):
        # Elemental's docs wait for the seed image's build pod; this operator builds without pods.
        raise CtlError(
            f'the server doesn\'t have a resource type "{text}": the operator runs no pods; '
            "a seed image is ready when: elementalctl wait --for=condition=SeedImageReady seedimage/NAME"
        )
    raise CtlError(f'the server doesn\'t have a resource type "{text}"')


@dataclass
class Target:
    info: KindInfo
    names: list[str] = field(default_factory=list)


def parse(args: list[str], *, need_names: bool = False, allow_all: bool = True) -> list[Target]:
    """``["mr,mi"]``, ``["mr", "a", "b"]``, ``["mr/a", "mi/b"]`` or ``["all"]`` to targets."""
    if not args:
        raise CtlError("you must specify the type of resource to get (elementalctl api-resources lists them)")
    if "/" in args[0]:
        targets: list[Target] = []
        for arg in args:
            kind, slash, name = arg.partition("/")
            if not slash or not name or not kind:
                raise CtlError(
                    f"there is no need to specify a resource type as a separate argument "
                    f"when passing arguments in resource/name form (got {arg!r})"
                )
            info = resolve_type(kind)
            for t in targets:
                if t.info is info:
                    t.names.append(name)
                    break
            else:
                targets.append(Target(info, [name]))
        return targets
    infos: list[KindInfo] = []
    for part in args[0].split(","):
        if not part:
            raise CtlError(f"empty resource type in {args[0]!r}")
        if part.lower() == "all" and allow_all:
            infos += [i for i in all_kinds() if i not in infos]
        elif (info := resolve_type(part)) not in infos:
            infos.append(info)
    names = args[1:]
    if any("/" in n for n in names):
        raise CtlError("mixing TYPE NAME and TYPE/NAME arguments is not allowed")
    if need_names and not names:
        raise CtlError(f"{args[0]}: resource name(s) required (or -l SELECTOR, --all)")
    return [Target(i, list(names)) for i in infos]
