"""Bad-input cases of causal tracing and relation evidence (collected by tests/test_bad_input.py)."""

import torch

from interp.errors import ParameterError, PromptError, SpanError
from interp.methods.registry import shard_inputs
from interp.methods.relation_evidence import relation_evidence
from interp.methods.tracing import causal_trace
from interp.runs.resumable import run_resumable

GOOD = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris", "subject": "France", "task": "cap"}]


def _noise(shape):
    return torch.zeros(*shape)


def _with_shard_inputs(fn, **values):
    with shard_inputs(**values):
        return fn()


def _vector_metric(logits, target, wrong):
    return logits[:, :3]


CASES = [
    ("tracing metric returns a vector per prompt",
     lambda m, t, d: causal_trace(m, GOOD, metric=_vector_metric), ParameterError,
     r"metric must return one scalar per prompt"),
    ("tracing metric needs a contrast token", lambda m, t, d: causal_trace(m, GOOD, metric="logit_diff"),
     ParameterError, "needs a contrast answer"),
    ("tracing metric unknown", lambda m, t, d: causal_trace(m, GOOD, metric="probability"), ParameterError,
     "metric='probability' is not one of"),
    ("relation evidence metric returns a vector per prompt",
     lambda m, t, d: relation_evidence(m, GOOD, metric=_vector_metric), ParameterError,
     r"metric must return one scalar per prompt"),
    ("subject absent from the prompt",
     lambda m, t, d: causal_trace(m, [{**GOOD[0], "subject": "Spain"}]), SpanError,
     "Prompt 'paris'.*'Spain' does not occur"),
    ("subject empty",
     lambda m, t, d: causal_trace(m, [{**GOOD[0], "id": "q", "subject": ""}]), PromptError,
     "Prompt 'q' has no 'subject'"),
    ("no target", lambda m, t, d: causal_trace(m, [{"id": "r", "prompt": "a b", "subject": "a"}]), PromptError,
     "Prompt 'r' has no 'target'"),
    ("window zero", lambda m, t, d: causal_trace(m, GOOD, window=0), ParameterError,
     "window must be an integer >= 1"),
    ("samples zero", lambda m, t, d: causal_trace(m, GOOD, samples=0), ParameterError,
     "samples must be an integer >= 1"),
    ("noise negative", lambda m, t, d: causal_trace(m, GOOD, noise=-1.0), ParameterError,
     "noise must be a positive"),
    ("noise tensor of the wrong rank", lambda m, t, d: causal_trace(m, GOOD, samples=2, noise=_noise((2, 64))),
     ParameterError, r"noise has shape \(2, 64\).*\[samples=2, n_corrupted_tokens, d_model=64\]"),
    ("noise tensor with the wrong number of samples",
     lambda m, t, d: causal_trace(m, GOOD, samples=2, noise=_noise((3, 1, 64))), ParameterError,
     r"noise has shape \(3, 1, 64\)"),
    ("noise tensor over the wrong number of tokens",
     lambda m, t, d: causal_trace(m, GOOD, samples=2, noise=_noise((2, 3, 64))), ParameterError,
     "Prompt 'paris': the noise covers 3 tokens but 1 tokens are corrupted"),
    ("noise list of the wrong length",
     lambda m, t, d: causal_trace(m, GOOD, samples=2, noise=[_noise((2, 1, 64))] * 2), ParameterError,
     "noise is a list of 2 tensors but there are 1 prompts"),
    ("unknown corruption", lambda m, t, d: causal_trace(m, GOOD, corruption="object"), ParameterError,
     "corruption='object' is not one of"),
    ("unknown noise_scale", lambda m, t, d: causal_trace(m, GOOD, noise_scale="facts"), ParameterError,
     "noise_scale must be 'subjects'.*'records'.*or a positive number.*got 'facts'"),
    ("negative noise_scale", lambda m, t, d: causal_trace(m, GOOD, noise_scale=-0.1), ParameterError,
     "noise_scale must be a positive"),
    ("noise_scale as a bool", lambda m, t, d: causal_trace(m, GOOD, noise_scale=True), ParameterError,
     "noise_scale must be 'subjects'"),
    ("unknown noise_draws", lambda m, t, d: causal_trace(m, GOOD, noise_draws="numpy"), ParameterError,
     "noise_draws='numpy' is not one of"),
    ("ROME draws with explicit noise tensors",
     lambda m, t, d: causal_trace(m, GOOD, samples=2, noise=_noise((2, 1, 64)), noise_draws="rome"), ParameterError,
     "noise_draws='rome' chooses how noise is drawn, but noise is given as explicit tensors"),
    ("unknown noise_scale in a sharded run",
     lambda m, t, d: run_resumable("causal_trace", m, GOOD, t / "run", noise_scale="facts"), ParameterError,
     "noise_scale must be 'subjects'"),
    ("unknown site", lambda m, t, d: causal_trace(m, GOOD, sites=("neurons",)), ParameterError,
     "Unknown site 'neurons'.*resid_post, mlp_out, attn_out"),
    ("old site name", lambda m, t, d: causal_trace(m, GOOD, sites=("mlp",)), ParameterError,
     "Unknown site 'mlp'. Did you mean mlp_out"),
    ("site named twice", lambda m, t, d: causal_trace(m, GOOD, sites=("mlp_out", "mlp_out")), ParameterError,
     "sites names a site twice"),
    ("no site and nothing severed", lambda m, t, d: causal_trace(m, GOOD, sites=()), ParameterError,
     "sites is empty"),
    ("unknown severed sublayer", lambda m, t, d: causal_trace(m, GOOD, severed="resid_post"), ParameterError,
     "Unknown site 'resid_post'.*mlp_out, attn_out"),
    ("target that is not a field name", lambda m, t, d: causal_trace(m, GOOD, target=3), ParameterError,
     "target must be the name of a prompt field"),
    ("target field absent", lambda m, t, d: causal_trace(m, GOOD, target="object"), PromptError,
     "Prompt 'paris' has no 'object'"),
    ("negative subject std from a sharded run",
     lambda m, t, d: _with_shard_inputs(lambda: causal_trace(m, GOOD), subject_std=-1.0), ParameterError,
     "subject_std must be a positive"),
    ("run plumbing passed as a parameter", lambda m, t, d: causal_trace(m, GOOD, subject_std=1.0), ParameterError,
     "unexpected keyword argument 'subject_std'"),
    ("relation corruption of an all-subject prompt",
     lambda m, t, d: causal_trace(m, [{"id": "s", "prompt": "France", "target": " is", "subject": "France"}],
                                  corruption="relation"), PromptError, "Prompt 's'.*leaves no token to corrupt"),
    ("every fact wrong",
     lambda m, t, d: causal_trace(m, [{**GOOD[0], "target": " zzzz"}], samples=1, sites="resid_post"),
     PromptError, "None of the 1 facts is predicted"),
    ("relation evidence top_k zero", lambda m, t, d: relation_evidence(m, GOOD, top_k=0), ParameterError,
     "top_k must be an integer >= 1"),
    ("relation evidence window past the model", lambda m, t, d: relation_evidence(m, GOOD, window=4),
     ParameterError, "window=4 exceeds the number of layers"),
    ("relation evidence unknown knockout site", lambda m, t, d: relation_evidence(m, GOOD, sites=("heads",)),
     ParameterError, "Unknown site 'heads'.*mlp_out, attn_out"),
    ("relation evidence knocks out no site", lambda m, t, d: relation_evidence(m, GOOD, sites=[]),
     ParameterError, "sites is empty"),
    ("relation evidence target field absent", lambda m, t, d: relation_evidence(m, GOOD, target="object"),
     PromptError, "Prompt 'paris' has no 'object'"),
    ("relation evidence attributes without the task",
     lambda m, t, d: relation_evidence(m, GOOD, attributes={"language": [" Frenchish"]}), ParameterError,
     "Prompt 'paris': attributes has no entry for its task 'cap'"),
    ("relation evidence empty attributes", lambda m, t, d: relation_evidence(m, GOOD, attributes=[]), ParameterError,
     "attributes for 'attributes' is empty"),
]
