"""interp: mechanistic-interpretability and attribution toolkit on TransformerLens's TransformerBridge.

Research code calls plain functions that return a :class:`Result`::

    import interp
    model = interp.load_model("data/organisms/dense")
    prompts = interp.PromptSet("data/organisms/corpus/factual.jsonl").filter(split="heldout")
    result = interp.predictions(model, prompts)
    result.table, result.figure(), result.to_parquet("out.parquet")

The folders, in the order a computation flows through them:

- ``model/`` (``loading``: load_model and its checks; ``fixtures``: tiny random models; ``decode``: residual -> logits)
- -> ``prompts/`` (``prompt_set``, ``files``, ``tokens``, ``batches``)
- -> ``activations/`` (the batched forwards: ``sites`` names components, ``hooks`` registers hooks that never leak,
  ``capture`` reads activations, ``interventions`` changes them, ``variants`` runs many changed forwards at once,
  ``experts`` holds MoE internals, ``generation`` generates under interventions)
- -> ``methods/`` (one package or module per family, joined through ``registry``, the contract; ``metrics``, what is
  scored; ``checks``, the check runs of any method)
- -> ``results/`` (``result``: Result and its exports; ``provenance``, ``atomic``, ``outputs``)
- -> ``figures/`` (``viz``: the figure convention; the demo report: ``report``, ``demo_sections``, ``demo``).
- Around them: ``runs/`` (sharded, resumable and Ray runs, stage checkpoints), ``cli``, ``vocabulary`` (one name, one
  meaning), ``errors``, ``organisms/`` (the shipped model organisms).
"""

__version__ = "0.1.0"

from .activations import experts, sites  # noqa: E402
from .activations.capture import Capture, capture, head_outputs  # noqa: E402
from .activations.generation import generate  # noqa: E402
from .activations.hooks import Edit, Intervention, hook_snapshot, hooked  # noqa: E402
from .activations.interventions import ablate_heads, add_embedding_noise, gaussian_noise, mask_attention, patch  # noqa: E402
from .activations.variants import forward, run_variants  # noqa: E402
from .errors import (  # noqa: E402
    ArchitectureError,
    DeviceError,
    HookNameError,
    InterpError,
    ModelLoadError,
    ParameterError,
    PromptError,
    SpanError,
    TargetTokenWarning,
)
from .figures import viz  # noqa: E402
from .methods import metrics  # noqa: E402
from .methods.attribution_patching import attribution_patching  # noqa: E402
from .methods.generation import REFUSAL_KEYWORDS, keyword_judge, refuses  # noqa: E402
from .methods.icot import context_masking, cross_task_patching  # noqa: E402
from .methods.lens import (  # noqa: E402
    LensResult,
    TunedLens,
    lens_curves,
    lens_heatmap,
    lens_summary,
    lens_takeover,
    logit_lens,
    train_tuned_lens,
)
from .methods.moe import AttributionResult, expert_attribution, expert_importance, top_experts  # noqa: E402
from .methods.moe_blocking import block_experts, shared_routed_contrast  # noqa: E402
from .methods.moe_routing import head_expert_correlation, routing_stats  # noqa: E402
from .methods.patching import activation_patching  # noqa: E402
from .methods.predictions import predictions  # noqa: E402  (importing a method module registers it)
from .methods.registry import Schema, ShardPlan, get_method, list_methods, register_method  # noqa: E402
from .methods.relation_evidence import relation_evidence  # noqa: E402
from .methods.safety_heads import (  # noqa: E402
    asr_summary,
    attack_success_rate,
    generalized_ships,
    sahara,
    ships,
)
from .methods.tracing import causal_trace, trace_summary, trace_totals  # noqa: E402
from .model.decode import apply_final_norm, decode, norm_scale, unembed  # noqa: E402
from .model.loading import Model, ModelInfo, as_model, load_model  # noqa: E402
from .organisms import data_path  # noqa: E402
from .prompts import Batch, PromptSet, batches, encode, make_batch  # noqa: E402
from .results.result import Result, make_meta  # noqa: E402
from .runs.resumable import run_resumable  # noqa: E402

__all__ = [
    "ArchitectureError", "Batch", "Capture", "DeviceError", "Edit", "HookNameError", "InterpError",
    "Intervention", "Model", "ModelInfo", "ModelLoadError", "ParameterError", "PromptError", "PromptSet",
    "Result", "Schema", "ShardPlan", "SpanError", "TargetTokenWarning", "data_path", "metrics", "sites", "viz",
    "ablate_heads", "add_embedding_noise", "apply_final_norm", "as_model", "batches",
    "capture", "decode", "encode", "forward", "gaussian_noise", "get_method", "head_outputs", "hook_snapshot",
    "hooked", "list_methods", "load_model", "make_batch", "make_meta", "mask_attention", "norm_scale", "patch",
    "predictions", "register_method", "run_variants", "unembed", "generate",
    "activation_patching", "attribution_patching", "context_masking", "cross_task_patching",
    "block_experts", "expert_attribution", "expert_importance", "head_expert_correlation", "experts", "routing_stats",
    "shared_routed_contrast", "top_experts", "AttributionResult", "run_resumable",
    "LensResult", "TunedLens", "lens_curves", "lens_heatmap", "lens_summary", "lens_takeover", "logit_lens",
    "train_tuned_lens", "REFUSAL_KEYWORDS", "asr_summary", "attack_success_rate", "generalized_ships",
    "keyword_judge", "refuses", "sahara", "ships", "causal_trace", "relation_evidence", "trace_summary",
    "trace_totals",
]
