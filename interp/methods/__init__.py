"""Attribution methods, one module per family; importing this package registers them all."""

from . import predictions  # noqa: F401
