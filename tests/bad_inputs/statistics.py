"""Bad inputs of the statistics over prompts (Result.aggregate, Result.compare), collected by
tests/test_bad_input.py."""

import pandas as pd

from interp.errors import ParameterError
from interp.results.result import Result


def _r():
    t = pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "condition": ["clean", "blocked"] * 2,
                      "target_rr": [1.0, 0.5, 0.25, 0.2], "token": ["x", "y", "z", "w"]})
    return Result(t, {"method": "toy"})


CASES = [
    ("aggregate ci above 1", lambda m, t, d: _r().aggregate("condition", value="target_rr", ci=1.5), ParameterError,
     "ci must be a confidence level strictly between 0 and 1"),
    ("aggregate ci as a percentage", lambda m, t, d: _r().aggregate("condition", value="target_rr", ci=95),
     ParameterError, "ci must be a confidence level"),
    ("aggregate zero replicates", lambda m, t, d: _r().aggregate("condition", value="target_rr", n_boot=0),
     ParameterError, "n_boot must be an integer >= 1"),
    ("aggregate unknown interval", lambda m, t, d: _r().aggregate("condition", value="target_rr", interval="normal"),
     ParameterError, "interval"),
    ("aggregate negative seed", lambda m, t, d: _r().aggregate("condition", value="target_rr", seed=-1),
     ParameterError, "seed must be an integer >= 0"),
    ("aggregate by a missing column", lambda m, t, d: _r().aggregate("layer", value="target_rr"), ParameterError,
     "no column 'layer' to group by"),
    ("aggregate by the prompt", lambda m, t, d: _r().aggregate("prompt_id", value="target_rr"), ParameterError,
     "includes 'prompt_id', the unit resampled"),
    ("aggregate a text column", lambda m, t, d: _r().aggregate("condition", value="token"), ParameterError,
     "column 'token' .* is not numeric"),
    ("aggregate without a schema or value", lambda m, t, d: _r().aggregate("condition"), ParameterError,
     "declares no schema; name the value"),
    ("aggregate a table without prompts", lambda m, t, d: Result(pd.DataFrame({"layer": [0], "x": [1.0]}),
                                                                 {"method": "toy"}).aggregate("layer", value="x"),
     ParameterError, "has no 'prompt_id' column"),
    ("compare an unknown baseline", lambda m, t, d: _r().compare("condition", "ablated", value="target_rr"),
     ParameterError, "column 'condition' has no value 'ablated'"),
    ("compare the baseline with itself", lambda m, t, d: _r().compare("condition", "clean", treatment="clean",
                                                                      value="target_rr"),
     ParameterError, "is the baseline itself"),
    ("compare zero sign patterns", lambda m, t, d: _r().compare("condition", "clean", value="target_rr", n_perm=0),
     ParameterError, "n_perm must be an integer >= 1"),
    ("compare grouped by the condition", lambda m, t, d: _r().compare("condition", "clean", value="target_rr",
                                                                      by="condition"),
     ParameterError, "must be distinct columns"),
]
