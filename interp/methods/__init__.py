"""Attribution methods, one module per family; importing this package registers them all."""

from . import (  # noqa: F401
    attribution_patching,
    icot,
    lens,
    moe,
    moe_blocking,
    moe_routing,
    patching,
    predictions,
    relation_evidence,
    safety_heads,
    tracing,
)
