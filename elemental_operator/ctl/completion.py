"""``elementalctl completion bash|zsh``: shell functions that complete verbs, flags, resource
types and (by asking the operator with ``-o jsonpath``) resource names."""

# ruff: noqa: E501  (the shell scripts stay readable as shell, not wrapped for Python)

from __future__ import annotations

from elemental_operator.api import kinds
from elemental_operator.ctl.client import CtlError
from elemental_operator.ctl.resources import EXTRA_ALIASES


def _types() -> list[str]:
    names: set[str] = {"all"}
    for info in kinds().values():
        names.update((info.plural, info.singular, *info.short_names))
    names.update(EXTRA_ALIASES)
    return sorted(names)


_BASH = r"""# bash completion for elementalctl; load with: source <(elementalctl completion bash)
_elementalctl() {
    local cur prev verb type i
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    verb="" type=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -n|--namespace|-o|--output|-l|--selector|-s|--server|--token|--context|-f|--filename|-p|--patch|--for|--timeout|--type) ((i++)) ;;
            -*) ;;
            *) if [[ -z "$verb" ]]; then verb="${COMP_WORDS[i]}"; elif [[ -z "$type" ]]; then type="${COMP_WORDS[i]}"; fi ;;
        esac
    done
    case "$prev" in
        -o|--output) COMPREPLY=($(compgen -W "yaml json wide name jsonpath= jsonpath-file= custom-columns= custom-columns-file= go-template= go-template-file=" -- "$cur")); return ;;
        -f|--filename|--patch-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --context) COMPREPLY=($(compgen -W "$(elementalctl config get-contexts -o name 2>/dev/null)" -- "$cur")); return ;;
        -n|--namespace) return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "__FLAGS__" -- "$cur")); return
    fi
    if [[ -z "$verb" ]]; then
        COMPREPLY=($(compgen -W "__VERBS__" -- "$cur"))
    elif [[ "$verb" == config ]]; then
        COMPREPLY=($(compgen -W "get-contexts current-context use-context set-context delete-context" -- "$cur"))
    elif [[ "$verb" == completion ]]; then
        COMPREPLY=($(compgen -W "bash zsh" -- "$cur"))
    elif [[ -z "$type" ]]; then
        COMPREPLY=($(compgen -W "__TYPES__" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(elementalctl get "$type" -o 'jsonpath={.items[*].metadata.name}' 2>/dev/null)" -- "$cur"))
    fi
}
complete -o default -F _elementalctl elementalctl
"""

_ZSH = r"""#compdef elementalctl
# zsh completion for elementalctl; load with: source <(elementalctl completion zsh)
_elementalctl() {
    local -a words_left
    local verb="" type="" w i
    for ((i = 2; i < CURRENT; i++)); do
        w="${words[i]}"
        case "$w" in
            -n|--namespace|-o|--output|-l|--selector|-s|--server|--token|--context|-f|--filename|-p|--patch|--for|--timeout|--type) ((i++)) ;;
            -*) ;;
            *) if [[ -z "$verb" ]]; then verb="$w"; elif [[ -z "$type" ]]; then type="$w"; fi ;;
        esac
    done
    case "${words[CURRENT-1]}" in
        -o|--output) compadd -- yaml json wide name jsonpath= jsonpath-file= custom-columns= custom-columns-file= go-template= go-template-file=; return ;;
        -f|--filename|--patch-file) _files; return ;;
        -n|--namespace) return ;;
    esac
    if [[ "${words[CURRENT]}" == -* ]]; then
        compadd -- __FLAGS__; return
    fi
    if [[ -z "$verb" ]]; then
        compadd -- __VERBS__
    elif [[ "$verb" == config ]]; then
        compadd -- get-contexts current-context use-context set-context delete-context
    elif [[ "$verb" == completion ]]; then
        compadd -- bash zsh
    elif [[ -z "$type" ]]; then
        compadd -- __TYPES__
    else
        compadd -- ${=$(elementalctl get "$type" -o 'jsonpath={.items[*].metadata.name}' 2>/dev/null)}
    fi
}
if [[ "${funcstack[1]}" == "_elementalctl" ]]; then _elementalctl "$@"; else compdef _elementalctl elementalctl; fi
"""


def script(shell: str, verbs: list[str], flags: list[str]) -> str:
    templates = {"bash": _BASH, "zsh": _ZSH}
    if shell not in templates:
        raise CtlError(f'unsupported shell type "{shell}" (bash, zsh)')
    return (
        templates[shell]
        .replace("__VERBS__", " ".join(verbs))
        .replace("__FLAGS__", " ".join(sorted(set(flags))))
        .replace("__TYPES__", " ".join(_types()))
    )
