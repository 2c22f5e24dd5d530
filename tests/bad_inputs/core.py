"""(Most core cases live in tests/test_bad_input.py itself; generation and capture views add theirs here.)"""

import torch

import interp
from interp.errors import HookNameError, ParameterError, PromptError

GOOD = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris", "subject": "France"}]


def _capture(m):
    return interp.capture(m, GOOD, "blocks.0.hook_resid_post", positions="all", progress=False)


CASES = [
    ("predictions batch size negative", lambda m, t, d: interp.predictions(m, ["a b"], batch_size=-1),
     ParameterError, "batch_size must be an integer >= 1"),
    # --- generation ---
    ("generate zero new tokens", lambda m, t, d: interp.generate(m, GOOD, max_new_tokens=0), ParameterError,
     "max_new_tokens must be an integer >= 1; got 0"),
    ("generate negative new tokens", lambda m, t, d: interp.generate(m, GOOD, max_new_tokens=-3), ParameterError,
     "max_new_tokens must be an integer >= 1"),
    ("generate a head list as an intervention", lambda m, t, d: interp.generate(m, GOOD, interventions={
        "L0H1": [(0, 1)]}), ParameterError, r"interventions\['L0H1'\] is a list, not an interp.Intervention"),
    ("generate a list of interventions", lambda m, t, d: interp.generate(m, GOOD, interventions=[
        interp.ablate_heads(m, [(0, 1)])]), ParameterError, "Give a mapping \\{label: Intervention\\}"),
    ("generate an empty interventions mapping", lambda m, t, d: interp.generate(m, GOOD, interventions={}),
     ParameterError, "interventions is an empty mapping"),
    ("generate an intervention label that is not text", lambda m, t, d: interp.generate(m, GOOD, interventions={
        3: None}), ParameterError, "every label must be a non-empty string; got 3"),
    ("generate an intervention on an unknown hook", lambda m, t, d: interp.generate(
        m, GOOD, interventions=interp.Intervention.from_function("blocks.0.hook_resid_pots", lambda x: x)),
     HookNameError, "no hook named 'blocks.0.hook_resid_pots'"),
    ("generate an empty prompt list", lambda m, t, d: interp.generate(m, []), PromptError,
     "The prompt set is empty"),
    ("generate a single string", lambda m, t, d: interp.generate(m, "The capital of France is"), PromptError,
     r"single string.*model.generate\(text\)"),
    ("generate temperature zero", lambda m, t, d: interp.generate(m, GOOD, do_sample=True, temperature=0),
     ParameterError, "temperature must be a positive finite number"),
    ("generate do_sample not a bool", lambda m, t, d: interp.generate(m, GOOD, do_sample="yes"), ParameterError,
     "do_sample must be True or False"),
    ("generate seed not an integer", lambda m, t, d: interp.generate(m, GOOD, seed=1.5), ParameterError,
     "seed must be an integer"),
    ("generate max_rows zero", lambda m, t, d: interp.generate(m, GOOD, max_rows=0), ParameterError,
     "max_rows must be an integer >= 1"),
    ("generate past learned positions", lambda m, t, d: interp.generate(interp.load_model(d["gpt2"]), GOOD,
                                                                        max_new_tokens=10**4),
     ParameterError, "Prompt 'paris' has 6 tokens; with max_new_tokens=10000.*n_ctx=256"),
    ("model.generate with a bridge keyword", lambda m, t, d: m.generate("hello", verbose=False), ParameterError,
     r"model.generate\(\) got 'verbose'.*it takes interventions, max_new_tokens"),
    ("model.generate with token ids", lambda m, t, d: m.generate(torch.tensor([[1, 2]])), ParameterError,
     "takes text .* not token ids"),
    # --- capture views ---
    ("capture get of an unknown prompt id", lambda m, t, d: _capture(m).get("blocks.0.hook_resid_post", "rome"),
     PromptError, "No prompt with id 'rome' in this capture"),
    ("capture get of an index out of range", lambda m, t, d: _capture(m).prompt("blocks.0.hook_resid_post", 1),
     ParameterError, r"Prompt index 1 is not an integer in \[0, 1\)"),
    ("capture last of an unknown hook", lambda m, t, d: _capture(m).last("blocks.0.hook_resid_pots"),
     HookNameError, "no hook named 'blocks.0.hook_resid_pots'"),
]
