"""Resource model: kinds, schemas, validation, CRD and Helm chart generation."""

from elemental_operator.api.schema import (
    API_VERSION,
    GROUP,
    VERSION,
    KindInfo,
    ValidationError,
    json_path,
    kind_info,
    kinds,
    resolve_kind,
    validate,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "KindInfo",
    "ValidationError",
    "json_path",
    "kind_info",
    "kinds",
    "resolve_kind",
    "validate",
]
