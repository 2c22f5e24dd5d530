"""Bad-input cases of sharded and resumable runs (collected by tests/test_bad_input.py). Each is refused while the
arguments are checked against the whole set, before any shard runs; ``refused_without_writing`` also checks that
the run directory was not created."""

import torch

from interp import load_model
from interp.errors import ParameterError, PromptError
from interp.methods.relation_evidence import relation_evidence
from interp.methods.tracing import causal_trace
from interp.runs.distributed import run_on_ray
from interp.runs.resumable import run_resumable

GOOD = [{"id": f"p{i}", "prompt": f"The capital of France is {i}", "target": " Paris", "subject": "France",
         "task": "cap"} for i in range(4)]
CORRUPT = [{**r, "id": r["id"] + "c", "prompt": r["prompt"].replace("France", "Spain")} for r in GOOD]


def refused_without_writing(tmp_path, method, model, prompts, **params):
    out = tmp_path / "run"
    try:
        run_resumable(method, model, prompts, out, shard_size=2, progress=False, **params)
    finally:
        assert not out.exists(), "a refused run wrote its directory"


def _with_shard_inputs(fn, **inputs):
    from interp.methods.registry import shard_inputs

    with shard_inputs(**inputs):
        return fn()


CASES = [
    ("sharded attribution patching with verify_top",
     lambda m, t, d: refused_without_writing(t, "attribution_patching", m, GOOD, corrupt=CORRUPT, verify_top=3,
                                             metric="prob"),
     ParameterError, "verify_top picks the places with the largest mean attribution over the whole set"),
    ("sharded patching with fewer corrupt than clean prompts",
     lambda m, t, d: refused_without_writing(t, "activation_patching", m, GOOD, corrupt=CORRUPT[:3], metric="prob"),
     PromptError, "clean has 4 prompts but corrupt has 3"),
    ("sharded head-expert correlation given an attribution",
     lambda m, t, d: refused_without_writing(t, "head_expert_correlation", load_model(d["mixtral"]), GOOD,
                                             attribution_result=object()),
     ParameterError, "do not pass attribution_result="),
    ("sharded causal trace with one noise tensor per prompt",
     lambda m, t, d: refused_without_writing(t, "causal_trace", m, GOOD, noise=[torch.zeros(2, 1, 64)] * 4,
                                             samples=2),
     ParameterError, "noise given as one tensor per prompt cannot be split into shards"),
    ("sharded generalized ships with r_main above the set's size",
     lambda m, t, d: refused_without_writing(t, "generalized_ships", m, GOOD, heads=[(0, 0)], r_main=5),
     ParameterError, "r_main=5 exceeds min"),
    ("sahara split over Ray workers",
     lambda m, t, d: run_on_ray("sahara", d["llama"], GOOD, workers=2, steps=1), ParameterError,
     "sahara needs the whole prompt set at every stage"),
    ("causal trace with a negative subject std (a shard input)",
     lambda m, t, d: _with_shard_inputs(lambda: causal_trace(m, GOOD), subject_std=-1.0), ParameterError,
     "subject_std must be a positive"),
    ("relation evidence with a token id outside the vocabulary",
     lambda m, t, d: relation_evidence(m, GOOD, attributes=[10**9]), ParameterError,
     "attribute token id 1000000000 is outside the vocabulary"),
]
