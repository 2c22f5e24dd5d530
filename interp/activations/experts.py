"""Mixture-of-experts blocks, expert by expert: routing, per-expert and per-neuron outputs, expert blocking (the
machinery under the MoE methods of :mod:`interp.methods.moe`, :mod:`~interp.methods.moe_blocking` and
:mod:`~interp.methods.moe_routing`).

TransformerLens's bridge hooks the MoE block's input and output and the router, but not the individual experts
(Hugging Face keeps them as batched 3-D weights). This module recomputes each routed expert's and the shared
expert's contribution to the block output from the block input (site ``mlp_in`` of :mod:`interp.activations.sites`), the
routing and the raw expert weights, following each architecture's rule (see docs/bridge_facts.md section 8):

* router: ``probs = softmax(x W_r^T)`` (float32), top-k, renormalised over the top-k for Mixtral (always) and
  for Qwen/OLMoE when ``norm_topk_prob`` is set;
* expert j: ``E_j(x) = W_down[j] (act(W_gate[j] x) * W_up[j] x)``, weighted by its routing weight g_j;
* Qwen2-MoE's shared expert: ``sigmoid(w_sg . x) * S(x)``.

The contributions sum to the block's real output (``hook_mlp_out``) up to float32 reordering (~1e-6).
Only raw tensors are used: calling the bridge-wrapped submodules would fire hooks.

The blocking interventions edit the site ``expert_weights`` (the [tokens, n_experts] routing weights; the bridge
re-runs top-k on the edited tensor and uses the edited values as they are), because patching the router logits
(site ``router_logits``) has no effect on the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ArchitectureError, ParameterError, check_choice
from ..model.loading import Model, as_model
from .hooks import Edit, Intervention
from .sites import hook_name

ABLATIONS = ("zero", "reroute")  # how an expert is blocked (the ``ablation`` parameter)


@dataclass(frozen=True)
class MoELayer:
    """The raw weights and routing rule of one MoE block."""

    layer: int
    router: torch.Tensor  # [E, d]
    router_bias: torch.Tensor | None  # [E] or None
    gate_up: torch.Tensor  # [E, 2F, d]: first F rows gate, last F rows up
    down: torch.Tensor  # [E, d, F]
    act: Callable[[torch.Tensor], torch.Tensor]
    top_k: int
    renormalize: bool
    shared_gate_proj: torch.Tensor | None = None  # [Fs, d]
    shared_up_proj: torch.Tensor | None = None  # [Fs, d]
    shared_down_proj: torch.Tensor | None = None  # [d, Fs]
    shared_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    shared_gate: torch.Tensor | None = None  # [1, d]

    @property
    def n_experts(self) -> int:
        return int(self.gate_up.shape[0])

    @property
    def expert_width(self) -> int:
        return int(self.down.shape[-1])

    @property
    def has_shared(self) -> bool:
        return self.shared_down_proj is not None


@dataclass
class Routing:
    """A routing decision for N tokens: the router's probabilities, the top-k choice and its weights."""

    probs: torch.Tensor  # [N, E] float32 softmax of the (possibly masked) router logits
    indices: torch.Tensor  # [N, k]
    weights: torch.Tensor  # [N, k] (renormalised where the architecture does)
    dense: torch.Tensor  # [N, E]: weights scattered, 0 off the top-k (the layout of hook_expert_weights)


@dataclass
class ExpertOutputs:
    """Per-expert contributions to the block output for tokens x [..., d] (N of them, flattened in ``routing``)."""

    slots: torch.Tensor  # [..., k, d]: g_j E_j(x) of the token's j-th routed expert, j = routing.indices[:, j]
    shared: torch.Tensor | None  # [..., d]: sigmoid(gate) * S(x), or None
    shared_weight: torch.Tensor | None  # [...]: sigmoid(gate)
    routing: Routing
    n_experts: int

    @property
    def routed(self) -> torch.Tensor:
        """[..., E, d]: g_j E_j(x) for every expert, exactly 0 for the experts not in the token's top-k (built
        from :attr:`slots` on each access)."""
        lead, k, d = self.slots.shape[:-2], self.slots.shape[-2], self.slots.shape[-1]
        flat = self.slots.reshape(-1, k, d)
        out = flat.new_zeros(flat.shape[0], self.n_experts, d)
        rows = torch.arange(flat.shape[0], device=flat.device)[:, None].expand(-1, k)
        out[rows, self.routing.indices] = flat
        return out.reshape(*lead, self.n_experts, d)

    def total(self) -> torch.Tensor:
        """The block output: sum of every contribution [..., d]."""
        out = self.slots.sum(dim=-2)
        return out + self.shared if self.shared is not None else out


def _raw(module: Any) -> Any:
    """The wrapped Hugging Face module behind a bridge component (or the module itself)."""
    inner = getattr(module, "original_component", None)
    return inner if inner is not None else module


def require_moe(model: Any, what: str = "This method") -> Model:
    """The Model, or an ArchitectureError when it has no mixture-of-experts blocks."""
    m = as_model(model)
    if not m.info.is_moe:
        raise ArchitectureError(
            f"{what} needs a mixture-of-experts model; {m.name!r} ({m.info.architecture}) is dense. "
            "On a dense model use the layer and head levels only."
        )
    return m


def is_moe_layer(model: Any, layer: int) -> bool:
    """Whether block ``layer`` has a routed MoE block (some MoE models keep dense MLP layers)."""
    m = as_model(model)
    if not m.info.is_moe:
        return False
    block = _raw(m.bridge.blocks[layer].mlp)
    return hasattr(block, "gate") and hasattr(block, "experts")


def check_layer(model: Any, layer: Any) -> int:
    info = as_model(model).info
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ParameterError(f"A layer must be an integer; got {layer!r}.")
    if not 0 <= layer < info.n_layers:
        raise ParameterError(f"Layer {layer} is out of range (the model has {info.n_layers} layers).")
    return layer


def moe_layer(model: Any, layer: int) -> MoELayer:
    """The raw weights of block ``layer``'s MoE (cached on the Model)."""
    m = require_moe(model)
    check_layer(m, layer)
    cache = m.__dict__.setdefault("_moe_layers", {})
    if layer in cache:
        return cache[layer]
    block = _raw(m.bridge.blocks[layer].mlp)
    if not (hasattr(block, "gate") and hasattr(block, "experts")):
        raise ArchitectureError(f"Block {layer} of {m.name!r} has a dense MLP, not a mixture of experts.")
    router = _raw(block.gate)
    experts = _raw(block.experts)
    if not hasattr(experts, "gate_up_proj") or not hasattr(experts, "down_proj"):
        raise ArchitectureError(
            f"Block {layer}: experts of type {type(experts).__name__} do not keep gate_up_proj/down_proj 3-D "
            "weights; per-expert recomputation supports mixtral, olmoe, qwen2_moe and qwen3_moe."
        )
    if getattr(experts, "gate_up_proj_bias", None) is not None or getattr(experts, "down_proj_bias", None) is not None:
        raise ArchitectureError(f"Block {layer}: expert biases are not supported by the per-expert recomputation.")
    info = m.info
    renorm = bool(info.renormalizes_top_k)
    if hasattr(router, "norm_topk_prob") and info.architecture != "MixtralForCausalLM":
        renorm = bool(router.norm_topk_prob)
    top_k = int(getattr(router, "top_k", info.top_k))
    shared = {}
    if hasattr(block, "shared_expert") and block.shared_expert is not None:
        se = _raw(block.shared_expert)
        shared = dict(
            shared_gate_proj=_raw(se.gate_proj).weight.detach(),
            shared_up_proj=_raw(se.up_proj).weight.detach(),
            shared_down_proj=_raw(se.down_proj).weight.detach(),
            shared_act=se.act_fn,
            shared_gate=_raw(block.shared_expert_gate).weight.detach(),
        )
        for name in ("gate_proj", "up_proj", "down_proj"):
            if getattr(_raw(getattr(se, name)), "bias", None) is not None:
                raise ArchitectureError(f"Block {layer}: a shared expert with biases is not supported.")
    bias = getattr(router, "bias", None)
    out = MoELayer(
        layer=layer,
        router=router.weight.detach(),
        router_bias=bias.detach() if isinstance(bias, torch.Tensor) else None,
        gate_up=experts.gate_up_proj.detach(),
        down=experts.down_proj.detach(),
        act=experts.act_fn,
        top_k=top_k,
        renormalize=renorm,
        **shared,
    )
    cache[layer] = out
    return out


def router_logits(lw: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """Router logits [N, E] for block inputs x [N, d] (what ``mlp.gate.hook_out`` holds)."""
    logits = torch.nn.functional.linear(x, lw.router)
    return logits + lw.router_bias if lw.router_bias is not None else logits


def route(lw: MoELayer, x: torch.Tensor, *, blocked: Sequence[int] = (), keep: int | None = None) -> Routing:
    """The routing of tokens x [N, d].

    ``blocked``: experts whose router logit is set to -inf before the softmax and top-k (the token goes to
    its next-best experts; the architecture's renormalisation rule then applies). ``keep``: keep only the
    ``keep`` largest of the top-k weights (0 <= keep <= top_k), renormalised over them where the
    architecture renormalises.
    """
    logits = router_logits(lw, x).float()
    if len(blocked):
        logits = logits.clone()
        logits[:, list(blocked)] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    weights, indices = torch.topk(probs, lw.top_k, dim=-1)
    if keep is not None and keep < lw.top_k:
        weights = weights.clone()
        weights[:, keep:] = 0.0
    if lw.renormalize:
        total = weights.sum(dim=-1, keepdim=True)
        weights = torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny), weights)
    weights = weights.to(x.dtype)
    dense = torch.zeros(probs.shape, dtype=x.dtype, device=x.device).scatter(-1, indices, weights)
    return Routing(probs=probs, indices=indices, weights=weights, dense=dense)


def expert_hidden(lw: MoELayer, x: torch.Tensor, expert: int) -> torch.Tensor:
    """Expert ``expert``'s neuron activations s = act(W_gate x) * (W_up x) [N, F]."""
    gate, up = torch.nn.functional.linear(x, lw.gate_up[expert]).chunk(2, dim=-1)
    return lw.act(gate) * up


def shared_hidden(lw: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The shared expert's neuron activations [N, Fs]."""
    if not lw.has_shared:
        raise ArchitectureError(f"Block {lw.layer} has no shared expert.")
    return lw.shared_act(x @ lw.shared_gate_proj.T) * (x @ lw.shared_up_proj.T)  # type: ignore[misc,operator]


def shared_weight(lw: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """The shared expert's gate sigmoid(w_sg . x) [N]."""
    return torch.sigmoid(x @ lw.shared_gate.T)[..., 0]  # type: ignore[union-attr]


def expert_outputs(model: Any, layer: int, x: torch.Tensor, *, routing: Routing | None = None) -> ExpertOutputs:
    """Each expert's weighted contribution to block ``layer``'s output for block inputs x [..., d].

    ``routing`` defaults to the model's own (:func:`route`). Each expert is computed only for the tokens routed
    to it (as the block itself does); the contributions of the other experts are exactly zero and are not
    stored (:attr:`ExpertOutputs.routed` scatters them on demand). Cost: no forward pass; k expert MLPs per
    token (+ the shared expert's).
    """
    lw = moe_layer(model, layer)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    r = routing if routing is not None else route(lw, flat)
    weights = r.dense.gather(-1, r.indices)  # [N, k]: the routing weight of each slot (0 where an edit dropped it)
    slots = flat.new_zeros(flat.shape[0], r.indices.shape[-1], flat.shape[-1])
    for e in torch.unique(r.indices).tolist():
        tok, slot = (r.indices == e).nonzero(as_tuple=True)
        y = torch.nn.functional.linear(expert_hidden(lw, flat[tok], e), lw.down[e])
        slots[tok, slot] = y * weights[tok, slot, None]
    shared = sw = None
    if lw.has_shared:
        sw = shared_weight(lw, flat)
        shared = sw[:, None] * (shared_hidden(lw, flat) @ lw.shared_down_proj.T)  # type: ignore[union-attr]
        shared = shared.reshape(*lead, -1)
        sw = sw.reshape(lead)
    return ExpertOutputs(
        slots=slots.reshape(*lead, *slots.shape[1:]),
        shared=shared,
        shared_weight=sw,
        routing=r,
        n_experts=lw.n_experts,
    )


def neuron_outputs(lw: MoELayer, x: torch.Tensor, expert: int | str | torch.Tensor, weight: torch.Tensor
                   ) -> torch.Tensor:
    """Each neuron's weighted write v_k = g * s_k * W_out[:, k] for tokens x [N, d]: [N, F, d].

    ``expert``: a routed expert index, "shared", or a LongTensor [N] of one routed expert per token;
    ``weight``: its gate g per token [N].
    """
    if isinstance(expert, str):
        if expert != "shared":
            raise ParameterError(f"expert={expert!r}: give an expert index or 'shared'.")
        s, w_out = shared_hidden(lw, x), lw.shared_down_proj[None]  # type: ignore[index]
    elif isinstance(expert, torch.Tensor):
        gate, up = torch.einsum("nfd,nd->nf", lw.gate_up[expert], x).chunk(2, dim=-1)
        s, w_out = lw.act(gate) * up, lw.down[expert]  # w_out [N, d, F]
    else:
        s, w_out = expert_hidden(lw, x, int(expert)), lw.down[int(expert)][None]
    return (weight[:, None] * s)[:, :, None] * w_out.transpose(-1, -2)


# --- blocking interventions -------------------------------------------------------------------------------
def check_experts(model: Any, experts: Iterable[Any]) -> list[tuple[int, int]]:
    """Validate (layer, expert) pairs against the model; an empty set is an error."""
    m = require_moe(model, "Expert blocking")
    pairs = []
    for item in experts:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ParameterError(f"An expert must be a (layer, expert) pair of integers; got {item!r}.")
        layer, e = item
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (layer, e)):
            raise ParameterError(f"An expert must be a (layer, expert) pair of integers; got {item!r}.")
        if not 0 <= layer < m.info.n_layers:
            raise ParameterError(
                f"Expert {(layer, e)}: layer {layer} is out of range (the model has {m.info.n_layers} layers)."
            )
        if not is_moe_layer(m, layer):
            raise ParameterError(f"Expert {(layer, e)}: block {layer} is a dense MLP, it has no experts.")
        n = moe_layer(m, layer).n_experts
        if not 0 <= e < n:
            raise ParameterError(f"Expert {(layer, e)}: expert {e} is out of range (layer {layer} has {n} experts).")
        pairs.append((layer, e))
    if not pairs:
        raise ParameterError("The expert set is empty; name at least one (layer, expert).")
    return sorted(set(pairs))


def _token_rows(rows: slice, width: int) -> slice:
    """Batch rows -> rows of the flattened [B*T, ...] token layout of the routing hooks."""
    start = (rows.start or 0) * width
    stop = None if rows.stop is None else rows.stop * width
    return slice(start, stop)


def _routing_edits(layer: int, lw: MoELayer, change: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple:
    """Two edits of one block: remember the block input (needed for the token layout and the re-routing), then
    replace the routing weights of the edited rows by ``change(x_tokens, weights)``."""
    state: dict[str, torch.Tensor] = {}

    def remember(t: torch.Tensor, rows: slice) -> None:  # a no-op edit: the value is left as it is
        state["x"] = t

    def edit(t: torch.Tensor, rows: slice) -> None:
        x = state.pop("x")
        tok = _token_rows(rows, x.shape[1])
        xs = x.reshape(-1, x.shape[-1])[tok]
        t[tok] = change(xs, t[tok]).to(t.dtype)

    return (Edit(hook_name("mlp_in", layer), remember), Edit(hook_name("expert_weights", layer), edit))


def block_experts_intervention(model: Any, experts: Iterable[Any], *, ablation: str = "zero") -> Intervention:
    """An Intervention that blocks the given (layer, expert) pairs at every token.

    ``zero``: drop the experts' contributions and keep the other routing weights as they are. ``reroute``: set
    their router logits to -inf before softmax and top-k, so each token goes to its next-best experts, with the
    architecture's renormalisation rule (weights recomputed from the block input by :func:`route`).
    Composes with other interventions; two reroutes of the same block compose as the later one alone.
    """
    check_choice("ablation", ablation, ABLATIONS)
    pairs = check_experts(model, experts)
    by_layer: dict[int, list[int]] = {}
    for layer, e in pairs:
        by_layer.setdefault(layer, []).append(e)
    edits: list[Edit] = []
    for layer, es in by_layer.items():
        lw = moe_layer(model, layer)
        if ablation == "zero":
            def change(xs, w, es=es):
                w = w.clone()
                w[:, es] = 0
                return w
        else:
            def change(xs, w, es=es, lw=lw):
                return route(lw, xs, blocked=es).dense
        edits.extend(_routing_edits(layer, lw, change))
    label = f"{ablation}-block " + ", ".join(f"L{layer}E{e}" for layer, e in pairs)
    return Intervention(tuple(edits), label, {"experts": pairs, "ablation": ablation})


def keep_top_experts_intervention(model: Any, keep: int, *, layers: Sequence[int] | None = None) -> Intervention:
    """Keep only each token's ``keep`` highest-weighted routed experts (0 = shared expert(s) only), renormalised
    over the kept ones where the architecture renormalises (the "shared only / shared + top-n" contrast)."""
    m = require_moe(model, "Routing restriction")
    top_k = int(m.info.top_k or 0)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= top_k:
        raise ParameterError(f"keep must be an integer between 0 and top_k={top_k}; got {keep!r}.")
    layers = [check_layer(m, layer) for layer in layers] if layers is not None else [
        layer for layer in range(m.info.n_layers) if is_moe_layer(m, layer)]
    edits: list[Edit] = []
    for layer in layers:
        lw = moe_layer(m, layer)

        def change(xs, w, lw=lw):
            return route(lw, xs, keep=keep).dense

        edits.extend(_routing_edits(layer, lw, change))
    label = "shared only" if keep == 0 else f"top-{keep} routed"
    return Intervention(tuple(edits), label, {"keep": keep, "layers": layers})
