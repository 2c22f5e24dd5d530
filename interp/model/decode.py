"""Residual vectors to logits / log-probs through the final norm (with its weight) and the unembedding.

Two normalisation conventions, not interchangeable:

- ``recompute``: apply the final norm afresh to each vector (the "true" logit lens);
- ``frozen``: divide by a given final-norm scale (``sigma``, e.g. the real final residual's at that position)
  and apply the norm's weight and bias; the decoding is then linear in the vector (direct logit attribution,
  log-probability increase).

The bridge keeps raw Hugging Face weights, so the norm weight (Gemma's ``1 + w`` too) is applied here, and
Gemma-2's final logit soft-capping is applied as the model does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import check_choice
from .loading import as_model

NORM_MODES = ("recompute", "frozen")
OUTPUTS = ("logits", "logprobs", "probs")


def final_norm_module(model: Any) -> torch.nn.Module:
    bridge = as_model(model).bridge
    ln = bridge.ln_final
    return getattr(ln, "original_component", None) or ln._original_component


def _norm_eps(module: torch.nn.Module) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(module, attr):
            return float(getattr(module, attr))
    return 1e-6


def _norm_parts(model: Any) -> tuple[str, torch.Tensor, torch.Tensor | None, float]:
    """(kind, effective weight, bias or None, eps) of the final norm; cached on the Model."""
    m = as_model(model)
    cached = getattr(m, "_final_norm_parts", None)
    if cached is not None:
        return cached
    module = final_norm_module(m)
    eps = _norm_eps(module)
    if m.info.norm == "layernorm":
        weight = module.weight.detach() if getattr(module, "weight", None) is not None else None
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
        if weight is None:
            weight = torch.ones(m.info.d_model, device=m.device, dtype=m.dtype)
        parts = ("layernorm", weight, bias, eps)
    else:
        # the effective weight (w, or 1 + w for Gemma) read off the module itself: norm(c * 1) = w * c / rms ~ w
        probe = torch.full((1, m.info.d_model), 1e3, device=m.device, dtype=torch.float32)
        with torch.no_grad():
            out = module(probe.to(m.dtype)).float()
        weight = out[0] * torch.sqrt(torch.tensor(1.0 + eps / 1e6))
        parts = ("rmsnorm", weight.to(m.dtype), None, eps)
    m._final_norm_parts = parts  # type: ignore[attr-defined]
    return parts


def norm_scale(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """The final norm's scale sigma of each vector ([..., 1]): sqrt(mean(x^2) + eps), or sqrt(var + eps)."""
    kind, _, _, eps = _norm_parts(model)
    x = resid.float()
    if kind == "layernorm":
        return torch.sqrt(x.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


def apply_final_norm(
    model: Any, resid: torch.Tensor, *, norm: str = "recompute", scale: torch.Tensor | None = None
) -> torch.Tensor:
    """The final norm's output for each residual vector, recomputed or with a frozen scale."""
    check_choice("norm", norm, NORM_MODES)
    if norm == "recompute":
        return final_norm_module(model)(resid)
    if scale is None:
        raise ValueError("norm='frozen' needs scale= (the final norm's scale sigma, e.g. norm_scale(model, h_final)).")
    kind, weight, bias, _ = _norm_parts(model)
    x = resid.float()
    if kind == "layernorm":
        x = x - x.mean(dim=-1, keepdim=True)
    out = x / scale.float() * weight.float()
    if bias is not None:
        out = out + bias.float()
    return out.to(resid.dtype)


def unembed(model: Any, normed: torch.Tensor) -> torch.Tensor:
    """Logits from final-norm outputs: lm_head (with its bias) and the model's logit soft-capping if any."""
    m = as_model(model)
    head = m.hf_model.get_output_embeddings()
    logits = head(normed)
    cap = getattr(m.hf_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def decode(
    model: Any,
    resid: torch.Tensor,
    *,
    norm: str = "recompute",
    scale: torch.Tensor | None = None,
    output: str = "logprobs",
) -> torch.Tensor:
    """Residual vectors [..., d_model] to logits, log-probs or probs [..., vocab].

    ``norm="recompute"`` applies the final norm afresh; ``norm="frozen"`` uses ``scale`` ([..., 1], from
    :func:`norm_scale` of the real final residual). Decoding the last layer's ``resid_post`` with
    ``recompute`` gives the model's own logits. Cost: one unembedding, no forward pass.
    """
    check_choice("output", output, OUTPUTS)
    logits = unembed(model, apply_final_norm(model, resid, norm=norm, scale=scale))
    if output == "logits":
        return logits
    logits = logits.float()
    return logits.log_softmax(-1) if output == "logprobs" else logits.softmax(-1)
