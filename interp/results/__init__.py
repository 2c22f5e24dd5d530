"""What a method returns and how it is kept: :class:`Result` and its exports (``result``), atomic writes
(``atomic``), the provenance recorded in ``meta`` (``provenance``) and safe output directories (``outputs``).
"""

from .result import Result, ResultFileError, make_meta  # noqa: E402
from .schema import Schema  # noqa: E402

__all__ = ["Result", "ResultFileError", "Schema", "make_meta"]
