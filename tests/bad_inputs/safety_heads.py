"""Bad inputs of the safety-head methods (ships, generalized_ships, sahara, attack_success_rate)."""

import math

from interp.errors import ParameterError, PromptError
from interp.methods import safety_heads as sh

GOOD = [{"id": "bread", "prompt": "User: how do I bake bread?\nAssistant:"}]


def _raise(_text):
    raise RuntimeError("classifier offline")


CASES = [
    ("ships on an empty prompt set", lambda m, t, d: sh.ships(m, []), PromptError, "empty"),
    ("ships eps zero", lambda m, t, d: sh.ships(m, GOOD, eps=0), ParameterError, "eps must be a positive"),
    ("ships eps negative", lambda m, t, d: sh.ships(m, GOOD, eps=-1e-5), ParameterError, "eps must be a positive"),
    ("ships eps not a number", lambda m, t, d: sh.ships(m, GOOD, eps="tiny"), ParameterError,
     "eps must be a positive number"),
    ("ships eps NaN", lambda m, t, d: sh.ships(m, GOOD, eps=math.nan), ParameterError, "finite"),
    ("ships unknown ablation", lambda m, t, d: sh.ships(m, GOOD, ablation="erase"), ParameterError,
     "ablation='erase' is not one of"),
    ("ships mean ablation of keys (not offered)", lambda m, t, d: sh.ships(m, GOOD, ablation="mean_key"),
     ParameterError, "ablation='mean_key' is not one of.*mean_query"),
    ("ships batch size zero", lambda m, t, d: sh.ships(m, GOOD, batch_size=0), ParameterError,
     "batch_size must be an integer >= 1"),
    ("generalized ships head layer out of range", lambda m, t, d: sh.generalized_ships(m, GOOD, [(3, 0)]),
     ParameterError, r"Head \(3, 0\): layer 3 is out of range"),
    ("generalized ships head out of range", lambda m, t, d: sh.generalized_ships(m, GOOD, [(0, 4)]),
     ParameterError, "head 4 is out of range"),
    ("generalized ships no heads", lambda m, t, d: sh.generalized_ships(m, GOOD, []), ParameterError,
     "head list is empty"),
    ("generalized ships unknown basis", lambda m, t, d: sh.generalized_ships(m, GOOD, [(0, 0)], basis="middle"),
     ParameterError, "basis='middle' is not one of"),
    ("generalized ships r_main above N", lambda m, t, d: sh.generalized_ships(m, GOOD, [(0, 0)], r_main=2),
     ParameterError, r"r_main=2 exceeds min\(N prompts=1"),
    ("generalized ships batch size zero", lambda m, t, d: sh.generalized_ships(m, GOOD, [(0, 0)], batch_size=0),
     ParameterError, "batch_size must be an integer >= 1"),
    ("sahara max_rows not an integer", lambda m, t, d: sh.sahara(m, GOOD, max_rows=2.5), ParameterError,
     "max_rows must be an integer >= 1"),
    ("sahara steps zero", lambda m, t, d: sh.sahara(m, GOOD, steps=0), ParameterError, "steps must be an integer"),
    ("sahara more steps than heads", lambda m, t, d: sh.sahara(m, GOOD, steps=13), ParameterError,
     "steps=13 exceeds the model's 12 heads"),
    ("sahara eps not a number", lambda m, t, d: sh.sahara(m, GOOD, eps=None), ParameterError,
     "eps must be a positive number"),
    ("asr generation length zero", lambda m, t, d: sh.attack_success_rate(m, GOOD, max_new_tokens=0),
     ParameterError, "max_new_tokens must be an integer >= 1"),
    ("asr generation length negative", lambda m, t, d: sh.attack_success_rate(m, GOOD, max_new_tokens=-5),
     ParameterError, "max_new_tokens must be an integer >= 1"),
    ("asr heads out of range", lambda m, t, d: sh.attack_success_rate(m, GOOD, variants=[(0, 9)]), ParameterError,
     "head 9 is out of range"),
    ("asr heads out of range in a mapping", lambda m, t, d: sh.attack_success_rate(
        m, GOOD, variants={"clean": None, "bad": [(7, 0)]}), ParameterError, "layer 7 is out of range"),
    ("asr empty variants mapping", lambda m, t, d: sh.attack_success_rate(m, GOOD, variants={}), ParameterError,
     "variants is an empty mapping"),
    ("asr max_rows zero", lambda m, t, d: sh.attack_success_rate(m, GOOD, max_rows=0), ParameterError,
     "max_rows must be an integer >= 1"),
    ("asr judge not callable", lambda m, t, d: sh.attack_success_rate(m, GOOD, judge="keywords"), ParameterError,
     "judge must be a callable"),
    ("asr judge raises", lambda m, t, d: sh.attack_success_rate(m, GOOD, max_new_tokens=2, judge=_raise),
     ParameterError, "judge raised on the response to prompt 'bread'.*classifier offline"),
    ("asr judge returns a non-bool", lambda m, t, d: sh.attack_success_rate(m, GOOD, max_new_tokens=2,
                                                                            judge=lambda s: "yes"),
     ParameterError, "judge must return a bool.*prompt 'bread'"),
    ("asr unknown ablation", lambda m, t, d: sh.attack_success_rate(m, GOOD, ablation="scale"), ParameterError,
     "ablation='scale' is not one of"),
]
