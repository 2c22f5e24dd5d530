"""Sites and hook names, in one place: what researchers call a component kind, and the bridge hook it lives at.

A *site* is a kind of component of every block (``resid_pre``, ``attn_out``, ``z`` ...); ``hook_name(site,
layer)`` is its TransformerBridge hook. Every method names its components through this module, so a site
means the same hook everywhere (patching, tracing, the lens, knockouts) and no method spells a hook name itself.

``depth(site, layer)`` orders sites along the residual stream: the number of blocks (fractionally, sublayers)
applied to the vector at that site.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import ParameterError, close_matches

# site -> hook name pattern
HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "attn_module_out": "blocks.{layer}.attn.hook_out",  # the attention module's output, before a post-attention norm
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "rot_q": "blocks.{layer}.attn.hook_rot_q",  # the query after q-norm and rotary, where the model has them
    "rot_k": "blocks.{layer}.attn.hook_rot_k",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "mlp_in": "blocks.{layer}.mlp.hook_in",
    "expert_weights": "blocks.{layer}.mlp.hook_expert_weights",
    "expert_indices": "blocks.{layer}.mlp.hook_expert_indices",
    "router_logits": "blocks.{layer}.mlp.gate.hook_out",
}
RESIDUAL = ("resid_pre", "resid_mid", "resid_post")  # the residual stream itself
SUBLAYER_OUTPUTS = ("attn_out", "mlp_out")  # what a sublayer adds to it
HEAD_SITES = ("z",)  # sites with a head axis [batch, pos, head, d_head]
STREAM = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")  # along one block, in depth order
_DEPTH = {"resid_pre": 0.0, "attn_out": 0.25, "resid_mid": 0.5, "mlp_out": 0.75, "resid_post": 1.0}
FINAL_NORMED = "ln_final.hook_out"  # the final norm's output (HF hidden_states[-1])
EMBED = "hook_embed"


def hook_name(site: str, layer: int) -> str:
    """The bridge hook of ``site`` in block ``layer``."""
    try:
        return HOOKS[site].format(layer=int(layer))
    except KeyError:
        raise unknown_site(site, HOOKS) from None


def depth(site: str, layer: int) -> float:
    """Blocks applied to the vector at (site, layer): ``resid_pre`` of layer l is l, its ``resid_post`` l + 1."""
    return layer + _DEPTH[site]


def unknown_site(site: object, allowed: Iterable[str]) -> ParameterError:
    allowed = list(allowed)
    near = close_matches(str(site), allowed)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return ParameterError(f"Unknown site {site!r}.{hint} Sites here are {', '.join(allowed)}.")


def check_sites(sites: Sequence[str] | str, allowed: Sequence[str], *, model: object = None,
                name: str = "sites") -> list[str]:
    """Validate a site list against the sites a method accepts (and, given a model, that it has their hooks):
    a string is one site; empty lists, unknown and repeated sites are refused with the allowed names."""
    items = [sites] if isinstance(sites, str) else list(sites)
    if not items:
        raise ParameterError(f"{name} is empty; name at least one of {', '.join(allowed)}.")
    for s in items:
        if s not in allowed:
            raise unknown_site(s, allowed)
    if len(set(items)) != len(items):
        raise ParameterError(f"{name} names a site twice: {items}.")
    if model is not None:
        from ..model.loading import as_model

        hooks = as_model(model).bridge.hook_dict
        for s in items:
            if hook_name(s, 0) not in hooks:
                raise ParameterError(f"Site {s!r}: this model has no hook {hook_name(s, 0)!r}.")
    return items
