"""The statutory purpose registry, as the gateway knows it: the core's
:mod:`jukinet.purposes` (the national node loads the same registry)."""

from jukinet.purposes import (
    OPERATIONS,
    PACKAGED_FILE,
    RECORD_FIELDS,
    Agency,
    Bilingual,
    Operation,
    Purpose,
    PurposeDenied,
    PurposeRegistry,
    Quota,
    allowed_fields,
    load_registry,
    parse_registry,
)

__all__ = [
    "OPERATIONS",
    "PACKAGED_FILE",
    "RECORD_FIELDS",
    "Agency",
    "Bilingual",
    "Operation",
    "Purpose",
    "PurposeDenied",
    "PurposeRegistry",
    "Quota",
    "allowed_fields",
    "load_registry",
    "parse_registry",
]
