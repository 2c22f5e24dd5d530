"""interp: mechanistic-interpretability and attribution toolkit on TransformerLens's TransformerBridge.

Research code calls plain functions that return a :class:`Result`::

    import interp
    model = interp.load_model("data/organisms/dense")
    prompts = interp.PromptSet("data/factual_heldout.jsonl")
    result = interp.predictions(model, prompts)
    result.table, result.figure(), result.to_parquet("out.parquet")
"""

__version__ = "0.1.0"

from .capture import Capture, capture, head_outputs  # noqa: E402
from .decode import apply_final_norm, decode, norm_scale, unembed  # noqa: E402
from .errors import (  # noqa: E402
    ArchitectureError,
    DeviceError,
    HookNameError,
    InterpError,
    ModelLoadError,
    ParameterError,
    PromptError,
    SpanError,
)
from .hooks import Edit, Intervention, hook_snapshot, hooked  # noqa: E402
from .interventions import ablate_heads, add_embedding_noise, gaussian_noise, mask_attention, patch  # noqa: E402
from .methods.predictions import predictions  # noqa: E402  (importing registers it)
from .model import Model, ModelInfo, as_model, load_model  # noqa: E402
from .prompts import Batch, PromptSet, batches, encode, make_batch  # noqa: E402
from .registry import get_method, list_methods, register_method  # noqa: E402
from .results import Result, make_meta  # noqa: E402
from .variants import forward, run_variants  # noqa: E402

__all__ = [
    "ArchitectureError", "Batch", "Capture", "DeviceError", "Edit", "HookNameError", "InterpError",
    "Intervention", "Model", "ModelInfo", "ModelLoadError", "ParameterError", "PromptError", "PromptSet",
    "Result", "SpanError", "ablate_heads", "add_embedding_noise", "apply_final_norm", "as_model", "batches",
    "capture", "decode", "encode", "forward", "gaussian_noise", "get_method", "head_outputs", "hook_snapshot",
    "hooked", "list_methods", "load_model", "make_batch", "make_meta", "mask_attention", "norm_scale", "patch",
    "predictions", "register_method", "run_variants", "unembed",
]
