"""Bad inputs of the MoE attribution family (interp.methods.moe*): each a clear error before any compute.
``m`` is the tiny dense llama fixture; MoE cases load the tiny mixtral fixture from ``d``."""

import functools

import interp
from interp import experts
from interp.errors import ArchitectureError, ParameterError
from interp.methods.moe import expert_attribution, expert_importance
from interp.methods.moe_blocking import block_experts, shared_routed_contrast
from interp.methods.moe_routing import head_expert_correlation, routing_stats

GOOD = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris", "task": "capital"}]
THREE = [dict(GOOD[0], id=f"p{i}") for i in range(3)]


@functools.cache
def _moe(path):
    return interp.load_model(path)


def mixtral(d):
    return _moe(str(d["mixtral"]))


CASES = [
    ("expert level on a dense model", lambda m, t, d: expert_attribution(m, GOOD, levels=("layer", "expert")),
     ArchitectureError, "expert level needs a mixture-of-experts model.*dense"),
    ("neuron level on a dense model", lambda m, t, d: expert_attribution(m, GOOD, levels=["neuron"]),
     ArchitectureError, "neuron level needs a mixture-of-experts model"),
    ("unknown level", lambda m, t, d: expert_attribution(m, GOOD, levels=("experts",)), ParameterError,
     "'experts' is not one of"),
    ("empty levels", lambda m, t, d: expert_attribution(m, GOOD, levels=()), ParameterError, "levels is empty"),
    ("top_neurons zero", lambda m, t, d: expert_attribution(mixtral(d), GOOD, top_neurons=0), ParameterError,
     "top_neurons must be an integer >= 1"),
    ("memory_budget zero", lambda m, t, d: expert_attribution(mixtral(d), GOOD, memory_budget=0), ParameterError,
     "memory_budget must be a positive finite number"),
    ("blocking on a dense model", lambda m, t, d: block_experts(m, GOOD, [(0, 0)]), ArchitectureError,
     "block_experts needs a mixture-of-experts model"),
    ("blocking metric returns a float",
     lambda m, t, d: block_experts(mixtral(d), GOOD, [(0, 0)], metric=lambda lg, tg, wr: 0.5), ParameterError,
     r"metric must return one scalar per prompt"),
    ("contrast metric needs a contrast token",
     lambda m, t, d: shared_routed_contrast(mixtral(d), GOOD, keep=[0], metric="logit_diff"), ParameterError,
     "needs a contrast answer"),
    ("routing stats on a dense model", lambda m, t, d: routing_stats(m, GOOD), ArchitectureError,
     "routing_stats needs a mixture-of-experts model"),
    ("correlation on a dense model", lambda m, t, d: head_expert_correlation(m, GOOD * 3), ArchitectureError,
     "head_expert_correlation needs a mixture-of-experts model"),
    ("expert out of range", lambda m, t, d: block_experts(mixtral(d), GOOD, [(0, 4)]), ParameterError,
     r"Expert \(0, 4\): expert 4 is out of range \(layer 0 has 4 experts\)"),
    ("expert layer out of range", lambda m, t, d: block_experts(mixtral(d), GOOD, [(3, 0)]), ParameterError,
     r"Expert \(3, 0\): layer 3 is out of range \(the model has 3 layers\)"),
    ("negative expert", lambda m, t, d: experts.block_experts_intervention(mixtral(d), [(0, -1)]), ParameterError,
     "expert -1 is out of range"),
    ("expert not a pair", lambda m, t, d: block_experts(mixtral(d), GOOD, [(0,)]), ParameterError,
     r"must be a \(layer, expert\) pair"),
    ("expert set not a list", lambda m, t, d: block_experts(mixtral(d), GOOD, "E3"), ParameterError,
     "list of \\(layer, expert\\) pairs"),
    ("empty expert set", lambda m, t, d: block_experts(mixtral(d), GOOD, []), ParameterError,
     "expert set is empty"),
    ("unknown blocking ablation", lambda m, t, d: block_experts(mixtral(d), GOOD, [(0, 0)], ablation="drop"),
     ParameterError, "ablation='drop' is not one of 'zero', 'reroute'"),
    ("negative controls", lambda m, t, d: block_experts(mixtral(d), GOOD, [(0, 0)], controls=-1), ParameterError,
     "controls must be an integer >= 0"),
    ("blocking prompts without target", lambda m, t, d: block_experts(mixtral(d), [{"id": "q", "prompt": "a b"}],
                                                                      [(0, 0)]),
     interp.PromptError, "Prompt 'q' has no 'target'"),
    ("keep above top_k", lambda m, t, d: shared_routed_contrast(mixtral(d), GOOD, keep=[3]), ParameterError,
     r"keep: 3 must be an integer between 0 and 2 \(the model's experts per token\)"),
    ("keep empty", lambda m, t, d: shared_routed_contrast(mixtral(d), GOOD, keep=[]), ParameterError,
     "keep is empty"),
    ("routing stats unknown field", lambda m, t, d: routing_stats(mixtral(d), GOOD, by="relation_id"),
     ParameterError, "by='relation_id' is not a field"),
    ("routing stats unknown positions", lambda m, t, d: routing_stats(mixtral(d), GOOD, positions="first"),
     ParameterError, "positions='first' is not one of"),
    ("correlation with too few prompts", lambda m, t, d: head_expert_correlation(mixtral(d), GOOD), ParameterError,
     "at least 3 prompts"),
    ("importance of a wrong result", lambda m, t, d: expert_importance(interp.predictions(m, GOOD)), ParameterError,
     "needs the Result of interp.expert_attribution"),
    ("importance without expert rows",
     lambda m, t, d: expert_attribution(mixtral(d), GOOD, levels=("layer",)).expert_importance(), ParameterError,
     "no expert rows"),
    ("correlation top_k zero", lambda m, t, d: head_expert_correlation(mixtral(d), THREE, top_k=0),
     ParameterError, "top_k must be an integer >= 1"),
    ("blocking max_rows zero", lambda m, t, d: block_experts(mixtral(d), GOOD, [(0, 0)], max_rows=0),
     ParameterError, "max_rows must be an integer >= 1"),
]
