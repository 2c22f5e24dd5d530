"""Bad-input cases of causal tracing and relation evidence (collected by tests/test_bad_input.py)."""

import torch

from interp.errors import ParameterError, PromptError, SpanError
from interp.methods.relation_evidence import relation_evidence
from interp.methods.tracing import causal_trace

GOOD = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris", "subject": "France", "task": "cap"}]


def _noise(shape):
    return torch.zeros(*shape)


CASES = [
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
    ("unknown corruption", lambda m, t, d: causal_trace(m, GOOD, corrupt="object"), ParameterError,
     "corrupt='object' is not one of"),
    ("unknown kind", lambda m, t, d: causal_trace(m, GOOD, kinds=("neurons",)), ParameterError,
     "kinds='neurons' is not one of"),
    ("unknown severed sublayer", lambda m, t, d: causal_trace(m, GOOD, severed="resid"), ParameterError,
     "severed='resid' is not one of"),
    ("relation corruption of an all-subject prompt",
     lambda m, t, d: causal_trace(m, [{"id": "s", "prompt": "France", "target": " is", "subject": "France"}],
                                  corrupt="relation"), PromptError, "Prompt 's'.*leaves no token to corrupt"),
    ("every fact wrong", lambda m, t, d: causal_trace(m, [{**GOOD[0], "target": " zzzz"}], samples=1, kinds="resid"),
     PromptError, "None of the 1 facts is predicted"),
    ("relation evidence top_k zero", lambda m, t, d: relation_evidence(m, GOOD, top_k=0), ParameterError,
     "top_k must be an integer >= 1"),
    ("relation evidence window past the model", lambda m, t, d: relation_evidence(m, GOOD, knockout_window=4),
     ParameterError, "knockout_window=4 exceeds the number of layers"),
    ("relation evidence unknown knockout", lambda m, t, d: relation_evidence(m, GOOD, knockout_kinds=("heads",)),
     ParameterError, "knockout_kinds='heads' is not one of"),
    ("relation evidence attributes without the task",
     lambda m, t, d: relation_evidence(m, GOOD, attributes={"language": [" Frenchish"]}), ParameterError,
     "Prompt 'paris': attributes has no entry for its task 'cap'"),
    ("relation evidence empty attributes", lambda m, t, d: relation_evidence(m, GOOD, attributes=[]), ParameterError,
     "attributes for 'attributes' is empty"),
]
