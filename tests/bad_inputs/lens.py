"""Bad inputs of the logit / tuned lens (collected by tests/test_bad_input.py)."""

from interp.errors import ParameterError, PromptError
from interp.methods.lens import TunedLens, logit_lens, train_tuned_lens

GOOD = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris"}]
NO_Y = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris", "y_t": " P"},
        {"id": "rome", "prompt": "The capital of Italy is", "target": " Rome"}]

CASES = [
    ("unknown site", lambda m, t, d: logit_lens(m, GOOD, sites="resid_middle"), ParameterError,
     "Unknown site 'resid_middle'.*site kinds are"),
    ("unknown site in a list", lambda m, t, d: logit_lens(m, GOOD, sites=["resid_post", "attn"]), ParameterError,
     "Unknown site 'attn'"),
    ("sites not text", lambda m, t, d: logit_lens(m, GOOD, sites=3), ParameterError, "sites=3 must be one of"),
    ("unknown norm mode", lambda m, t, d: logit_lens(m, GOOD, norm="folded"), ParameterError,
     "norm='folded' is not one of 'recompute', 'frozen'"),
    ("unknown positions", lambda m, t, d: logit_lens(m, GOOD, positions="first"), ParameterError,
     "positions='first' is not one of"),
    ("target field absent from the prompt set", lambda m, t, d: logit_lens(m, GOOD, targets=("y_s1",)), PromptError,
     "no field 'y_s1'"),
    ("target field missing in one prompt", lambda m, t, d: logit_lens(m, NO_Y, targets=("y_t",)), PromptError,
     "Prompt 'rome' has no 'y_t' field"),
    ("targets not names", lambda m, t, d: logit_lens(m, GOOD, targets=[1]), ParameterError,
     "must be a list of field names"),
    ("lens top_k zero", lambda m, t, d: logit_lens(m, GOOD, top_k=0), ParameterError, "top_k must be an integer >= 1"),
    ("lens top_k above vocabulary", lambda m, t, d: logit_lens(m, GOOD, top_k=10**6), ParameterError,
     "top_k=1000000 exceeds the vocabulary size"),
    ("lens batch size zero", lambda m, t, d: logit_lens(m, GOOD, batch_size=0), ParameterError, "batch_size"),
    ("lens of another model", lambda m, t, d: logit_lens(m, GOOD, lens=TunedLens(5, 32)), ParameterError,
     "lens: this tuned lens has 5 layers x d_model 32"),
    ("lens on other sites", lambda m, t, d: logit_lens(m, GOOD, sites="sublayers", lens=TunedLens.identity(m)),
     ParameterError, "translates 'resid_post' only"),
    ("lens not a TunedLens", lambda m, t, d: logit_lens(m, GOOD, lens="tuned"), ParameterError,
     "lens must be a TunedLens"),
    ("tuned lens steps zero", lambda m, t, d: train_tuned_lens(m, ["a b c"], steps=0), ParameterError,
     "steps must be an integer >= 1"),
    ("tuned lens lr negative", lambda m, t, d: train_tuned_lens(m, ["a b c"], lr=-1.0), ParameterError,
     "lr must be a positive"),
    ("tuned lens momentum 1", lambda m, t, d: train_tuned_lens(m, ["a b c"], momentum=1.0), ParameterError,
     r"momentum must be a number in \[0, 1\)"),
    ("tuned lens on attn_out", lambda m, t, d: train_tuned_lens(m, ["a b c"], site="attn_out"), ParameterError,
     "site='attn_out': a tuned lens translates one of resid_pre"),
    ("tuned lens empty text", lambda m, t, d: train_tuned_lens(m, ["a b", "  "]), PromptError,
     "Prompt '1' is empty"),
    ("tuned lens load from nowhere", lambda m, t, d: TunedLens.load(t / "nowhere"), ParameterError,
     "holds no tuned lens"),
]
