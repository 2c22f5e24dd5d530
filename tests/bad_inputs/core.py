"""(Core cases live in tests/test_bad_input.py itself; this module shows the shape a family's file takes.)"""

import interp
from interp.errors import ParameterError

CASES = [
    ("predictions batch size negative", lambda m, t, d: interp.predictions(m, ["a b"], batch_size=-1),
     ParameterError, "batch_size must be an integer >= 1"),
]
