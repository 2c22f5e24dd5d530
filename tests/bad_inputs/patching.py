"""Bad inputs of the patching family (activation / attribution patching, context masking, cross-task patching).
Each case must raise before any forward pass (the metric check runs on zero logits, not on the model)."""

from interp.errors import ParameterError, PromptError, SpanError
from interp.methods.attribution_patching import attribution_patching
from interp.methods.icot import context_masking, cross_task_patching
from interp.methods.patching import activation_patching

CLEAN = [{"id": "fr", "prompt": "The capital of France is", "target": " Paris"}]
CORRUPT = [{"id": "es", "prompt": "The capital of Spain is", "target": " Madrid"}]
LONGER = [{"id": "es2", "prompt": "The old capital of Spain is", "target": " Madrid"}]
ICL = [{"id": "c0", "prompt": "Q: red\nA: RED\n\nQ: cat\nA:", "demonstrations": "Q: red\nA: RED", "task": "comp",
        "y_t": " CAT", "y_s1": " cat", "y_s2": " the", "target": " CAT"}]
NO_DEMOS = [{**ICL[0], "demonstrations": ""}]


def _vector_metric(logits, target, wrong):
    return logits[:, :3]


def _no_tensor_metric(logits, target, wrong):
    return 1.0


def _argmax_metric(logits, target, wrong):
    return (logits.argmax(-1) == target).float()


CASES = [
    ("mismatched clean / corrupt lengths", lambda m, t, d: activation_patching(m, CLEAN, LONGER), PromptError,
     r"Pair 0 \(clean 'fr', corrupt 'es2'\) has 6 vs 7 tokens.*align='end'"),
    ("clean and corrupt sets of different sizes",
     lambda m, t, d: activation_patching(m, CLEAN, CORRUPT + [{**CORRUPT[0], "id": "x"}]),
     PromptError, "clean set has 1 prompts and the corrupt set 2"),
    ("unknown site", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, sites=("resid_pree",)), ParameterError,
     "Unknown site 'resid_pree'.*Did you mean resid_pre"),
    ("unknown site (attribution)", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, sites="mlp"),
     ParameterError, "Unknown site 'mlp'"),
    ("empty site list", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, sites=()), ParameterError,
     "sites is empty"),
    ("target field missing", lambda m, t, d: activation_patching(m, [{"id": "fr", "prompt": CLEAN[0]["prompt"]}],
                                                                 CORRUPT), PromptError,
     "Prompt 'fr' has no 'target' field"),
    ("wrong answer missing", lambda m, t, d: activation_patching(m, CLEAN, [{"id": "es", "prompt": "The capital of "
                                                                            "Spain is"}]),
     PromptError, "needs a wrong answer.*wrong='<field>'"),
    ("target merges with the prompt", lambda m, t, d: activation_patching(
        m, [{"id": "fr", "prompt": "The capital of Fr", "target": "ance"}],
        [{"id": "es", "prompt": "The capital of Sp", "target": "ain"}]),
     SpanError, "Prompt 'fr'.*merges with the end of the prompt"),
    ("target equals the wrong answer", lambda m, t, d: activation_patching(m, CLEAN, [{**CORRUPT[0],
                                                                                      "target": " Paris"}]),
     PromptError, "Pair 0 \\(clean 'fr'\\): the target and the wrong answer start with the same token"),
    ("answer= is now target=", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, answer="target"),
     ParameterError, "unexpected keyword argument 'answer'"),
    ("target not a field name", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, target=""), ParameterError,
     "target='' must name a field of the clean prompts"),
    ("rank is not differentiable", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, metric="rank"),
     ParameterError, "metric='rank' is not one of"),
    ("metric returns a vector per prompt", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT,
                                                                               metric=_vector_metric),
     ParameterError, r"metric must return one scalar per prompt.*\(1,\).*returned \(1, 3\)"),
    ("metric returns a float", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, metric=_no_tensor_metric),
     ParameterError, "one scalar per prompt.*returned float"),
    ("metric without a gradient", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, metric=_argmax_metric),
     ParameterError, "differentiable in the logits"),
    ("unknown metric", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, metric="accuracy"), ParameterError,
     "metric='accuracy' is not one of"),
    ("unknown direction", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, direction="forward"),
     ParameterError, "direction='forward' is not one of"),
    ("positions not understood", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, positions="first"),
     ParameterError, "positions='first'"),
    ("layer out of range", lambda m, t, d: activation_patching(m, CLEAN, CORRUPT, layers=[3]), ParameterError,
     r"layers: 3 is not a layer index in \[0, 3\)"),
    ("ig_steps zero", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, ig_steps=0), ParameterError,
     "ig_steps must be an integer >= 1"),
    ("ig_steps with pairs of different lengths",
     lambda m, t, d: attribution_patching(m, CLEAN, LONGER, align="end", ig_steps=2), PromptError,
     r"ig_steps > 1 interpolates .* pair 0 \(clean 'fr', corrupt 'es2'\) has 6 vs 7 tokens"),
    ("verify_top negative", lambda m, t, d: attribution_patching(m, CLEAN, CORRUPT, verify_top=-1), ParameterError,
     "verify_top must be an integer >= 0"),
    ("unknown align", lambda m, t, d: activation_patching(m, CLEAN, LONGER, align="start"), ParameterError,
     "align='start' is not one of"),
    # --- context masking ---
    ("masking metric returns a vector per prompt",
     lambda m, t, d: context_masking(m, ICL, metric=_vector_metric), ParameterError,
     r"metric must return one scalar per prompt"),
    ("masked span empty", lambda m, t, d: context_masking(m, NO_DEMOS), PromptError,
     "Prompt 'c0' has no 'demonstrations' field"),
    ("masked span absent from the prompt", lambda m, t, d: context_masking(m, [{**ICL[0], "demonstrations": "Q: dog"}]),
     SpanError, "Prompt 'c0'.*'Q: dog' does not occur"),
    ("span field unknown", lambda m, t, d: context_masking(m, ICL, span="context"), PromptError,
     "no 'context' field to mask"),
    ("target field unknown", lambda m, t, d: context_masking(m, ICL, target=["y_final"]), PromptError,
     "no 'y_final' field to score against"),
    ("no target field", lambda m, t, d: context_masking(m, ICL, target=[]), ParameterError, "target is empty"),
    ("target field twice", lambda m, t, d: context_masking(m, ICL, target=["y_t", "y_t"]), ParameterError,
     "target names a field twice"),
    ("from layer past the model", lambda m, t, d: context_masking(m, ICL, from_layers=[4]), ParameterError,
     r"from_layers: 4 is not in \[0, 3\]"),
    # --- cross-task patching ---
    ("subtask without N-shot prompts", lambda m, t, d: cross_task_patching(m, ICL, [{**ICL[0], "id": "z",
                                                                                     "demonstrations": None,
                                                                                     "prompt": "Q: cat\nA:"}]),
     PromptError, "Subtask 'comp' has no N-shot prompt"),
    ("subtask field unknown", lambda m, t, d: cross_task_patching(m, ICL, ICL, subtask="kind"), PromptError,
     "no 'kind' field naming their subtask"),
    ("checkpoint_dir is the runner's, not a parameter",
     lambda m, t, d: cross_task_patching(m, ICL, ICL, checkpoint_dir=str(t)), ParameterError,
     "unexpected keyword argument 'checkpoint_dir'"),
    ("n_vectors zero", lambda m, t, d: cross_task_patching(m, ICL, ICL, n_vectors=0), ParameterError,
     "n_vectors must be an integer >= 1"),
    ("cross-task hook of a missing layer", lambda m, t, d: cross_task_patching(m, ICL, ICL, layers=[-1]),
     ParameterError, "layers: -1 is not a layer index"),
]
