"""Intervention factories: setting a hook at positions (the building block of every patch, restoration and
knock-out), head ablation, activation patching, embedding noise, attention masking.

Each returns an :class:`~interp.activations.hooks.Intervention`; they compose with ``+`` and run through
:func:`interp.activations.hooks.hooked` or the variants engine (:func:`interp.activations.variants.run_variants`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..errors import ParameterError, check_choice, check_positive_float
from ..model.loading import as_model
from .hooks import Edit, Intervention
from .sites import hook_name

# how a head is ablated (ablate_heads' ``ablation``): query / output / key scaled by eps, z zeroed, z replaced by a
# mean, the query replaced by the mean query of the layer's heads
HEAD_ABLATIONS = ("query", "output", "zero", "mean", "key", "mean_query")


def check_heads(model: Any, heads: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validate (layer, head) pairs against the model; an empty list is an error."""
    info = as_model(model).info
    heads = [tuple(h) for h in heads]
    if not heads:
        raise ParameterError("The head list is empty; name at least one (layer, head).")
    for h in heads:
        if len(h) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in h):
            raise ParameterError(f"A head must be a (layer, head) pair of integers; got {h!r}.")
        layer, head = h
        if not 0 <= layer < info.n_layers:
            raise ParameterError(f"Head {h}: layer {layer} is out of range (the model has {info.n_layers} layers).")
        if not 0 <= head < info.n_heads:
            raise ParameterError(f"Head {h}: head {head} is out of range (the model has {info.n_heads} heads).")
    return heads  # type: ignore[return-value]


def ablate_heads(
    model: Any,
    heads: Sequence[tuple[int, int]],
    *,
    ablation: str = "query",
    eps: float = 1e-5,
    means: dict[tuple[int, int], torch.Tensor] | None = None,
) -> Intervention:
    """Ablate attention heads at every position.

    ``ablation`` (one of :data:`HEAD_ABLATIONS`), and which of the masks in Zhou et al.'s code
    (github.com/ydyjya/SafetyHeadAttribution, ``lib/utils/custommodel.py``: ``scale_mask`` / ``mean_mask`` on
    ``q``, ``k`` or ``v``) each one is:

    - ``query``: the head's query times ``eps``, so attention becomes uniform over the causal prefix (the paper's
      "undifferentiated attention"; the authors' scale mask on ``q``). Per query head, so right under
      grouped-query attention.
    - ``output``: the head's output z times ``eps`` (the paper's "scaling contribution"; the authors' scale mask
      on ``v``, which scales the head's attention output, i.e. z).
    - ``zero``: z set to 0 (that scale mask with factor 0, the code's default factor).
    - ``mean``: z replaced by ``means[(l, h)]`` (a dataset mean, shape [d_head]) or, when no means are given, by
      the mean of z over the layer's heads at that position (the authors' mean mask on ``v``).
    - ``mean_query``: the head's query replaced by the mean of the layer's query heads at that position (the
      authors' mean mask on ``q``). The authors take the mean before RoPE; RoPE is linear and the same for every
      head, so the mean after it (where interp reads the query, :func:`_query_hook`) is the same. On models with
      q-norm (Qwen3, OLMoE), which the authors' code does not cover, it is the mean of the normalised queries.
    - ``key``: the key of the head's KV group times ``eps`` (under grouped-query attention this hits every query
      head of the group; the authors' scale mask on ``k`` indexes the KV heads with the query head's index
      instead, which under grouped-query attention is another group or out of range).

    Several heads of one layer are ablated in the order given; with ``mean`` / ``mean_query`` each later head
    takes the mean over the heads as they stand then (as the authors' loop over its head mask does). ``eps`` is a
    dimensionless factor (> 0; used by query, output and key).
    """
    check_choice("ablation", ablation, HEAD_ABLATIONS)
    eps = check_positive_float("eps", eps) if ablation in ("query", "output", "key") else eps
    heads = check_heads(model, heads)
    info = as_model(model).info
    edits = []
    for layer, head in heads:
        z = hook_name("z", layer)
        if ablation == "query":
            edits.append(Edit(_query_hook(model, layer, "q"), _scale_head(head, eps)))
        elif ablation == "output":
            edits.append(Edit(z, _scale_head(head, eps)))
        elif ablation == "zero":
            edits.append(Edit(z, _scale_head(head, 0.0)))
        elif ablation == "key":
            group = head // (info.n_heads // info.n_kv_heads)
            edits.append(Edit(_query_hook(model, layer, "k"), _scale_head(group, eps)))
        elif ablation == "mean_query":
            edits.append(Edit(_query_hook(model, layer, "q"), _mean_head(head, None)))
        else:
            value = None if means is None else means.get((layer, head))
            if means is not None and value is None:
                raise ParameterError(f"means has no entry for head ({layer}, {head}).")
            edits.append(Edit(z, _mean_head(head, value)))
    label = f"{ablation}-ablate " + ", ".join(f"({layer}, {h})" for layer, h in heads)
    edits = [replace(e, first_column=0) for e in edits]  # every position, each on its own (position-wise)
    return Intervention(tuple(edits), label, {"heads": heads, "ablation": ablation, "eps": eps})


def _query_hook(model: Any, layer: int, which: str) -> str:
    """The query (or key) as the attention scores see it: after q/k-norm and rotary where the model has them.

    hook_q fires before q_norm (Qwen3, OLMoE): a scaled query would be normalised back (and OLMoE's q_norm spans
    all heads, so it would also move the other heads). Rotary embeddings are linear, so scaling after them is the
    same as before them."""
    rotated = hook_name({"q": "rot_q", "k": "rot_k"}[which], layer)
    return rotated if rotated in as_model(model).bridge.hook_dict else hook_name(which, layer)


def _scale_head(head: int, factor: float):
    def apply(t: torch.Tensor, rows: slice) -> None:
        t[rows, :, head] *= factor

    return apply


def _mean_head(head: int, value: torch.Tensor | None):
    def apply(t: torch.Tensor, rows: slice) -> None:
        if value is None:
            t[rows, :, head] = t[rows].mean(dim=2)
        else:
            t[rows, :, head] = value.to(t.dtype).to(t.device)

    return apply


Columns = "torch.Tensor | int | tuple[torch.Tensor, torch.Tensor] | None"


def set_edit(name: str, value: torch.Tensor | float, columns: Any = None, *, head: int | None = None) -> Edit:
    """The one "set hook ``name`` to ``value`` at these positions" edit that every method's patches, restorations
    and knock-outs are built from.

    ``columns``: None sets every position; an int sets that column of every row (negative counts from the end);
    a LongTensor [B, P] sets those columns of each row; a pair ``(row_index, column_index)`` of 1-D LongTensors
    sets exactly those (row, column) entries. ``head``: set only that head of a per-head hook ([B, T, H, d_head]).
    ``value`` is a number or a tensor broadcast onto the entries set, as indexing assignment broadcasts: e.g.
    [d_model] for the same vector in every row, [B, d_model] row by row at an int column, [B, P, d_model] for
    per-row columns, [n, d] for n (row, column) pairs. It is cast to the hook's dtype and device when applied.
    """
    def apply(t: torch.Tensor, rows: slice) -> None:
        target = t[rows]
        if columns is None:
            index: tuple = (slice(None), slice(None))
        elif isinstance(columns, int):
            index = (slice(None), columns)
        elif isinstance(columns, tuple):
            index = (columns[0].to(t.device), columns[1].to(t.device))
        else:
            cols = columns.to(t.device)
            index = (torch.arange(target.shape[0], device=t.device)[:, None].expand_as(cols), cols)
        if head is not None:
            index = (*index, head)
        target[index] = value.to(device=t.device, dtype=t.dtype) if isinstance(value, torch.Tensor) else value

    return Edit(name, apply, first_column=_first_set_column(columns))


def _first_set_column(columns: Any) -> int | None:
    """The first column a set edit changes (it is position-wise: the variants engine may run it on a cached
    prefix); None where tensor columns count from the end (unknown without the width)."""
    if columns is None:
        return 0
    if isinstance(columns, int):
        return columns
    cols = columns[1] if isinstance(columns, tuple) else columns
    if cols.numel() == 0:
        return -1  # sets nothing
    low = int(cols.min())
    return low if low >= 0 else None


def patch(
    name: str, value: torch.Tensor, columns: torch.Tensor | int | None = None, *, label: str = ""
) -> Intervention:
    """Replace hook ``name``'s value by ``value`` at the given columns (:func:`set_edit` as one intervention).

    ``columns``: None patches every position (``value`` [B, T, ...]); an int patches that column in every row
    (``value`` [B, ...]); a LongTensor [B, P] patches those columns of each row (``value`` [B, P, ...]).
    Row b of the intervened rows receives ``value[b]``.
    """
    return Intervention((set_edit(name, value, columns),), label or f"patch {name}", {"hook": name})


def add_embedding_noise(
    spans: Sequence[tuple[int, int]] | None, noise: torch.Tensor, *, columns: Sequence[int] | None = None,
    hook: str = "hook_embed",
) -> Intervention:
    """Add ``noise`` to the token embeddings (ROME's corruption; the one embedding-noise intervention, causal
    tracing's included), added in the wider of the two dtypes and rounded once to the model's (float64 noise, as
    ROME's in-place add).

    ``spans[b]`` = (start, end) columns of row b; ``noise`` is [B, n, d_model] with n = end - start for every
    row (or [n, d_model], shared by all rows). Or ``spans=None`` and ``columns``: the same n columns of every
    row, not necessarily contiguous (the relation-focused corruption noises every token but the subject's).
    """
    if columns is not None:
        if spans is not None:
            raise ParameterError("Give the noised tokens as spans or as columns, not both.")
        cols = list(columns)
        if noise.shape[-2] != len(cols):
            raise ParameterError(f"The noise covers {noise.shape[-2]} tokens but {len(cols)} columns are noised.")

        def add_at_columns(t: torch.Tensor, rows: slice) -> None:
            target = t[rows]
            target[:, cols] += noise.to(device=t.device)

        return Intervention((Edit(hook, add_at_columns, first_column=min(cols, default=-1)),), "embedding noise",
                            {"positions": cols})
    if spans is None:
        raise ParameterError("Give the noised tokens as spans (one (start, end) per row) or as columns.")
    lengths = {e - s for s, e in spans}
    if len(lengths) != 1:
        raise ParameterError("Every row's noised span must have the same number of tokens.")
    n = lengths.pop()
    if noise.shape[-2] != n:
        raise ParameterError(f"The noise covers {noise.shape[-2]} tokens but the span has {n}.")

    def apply(t: torch.Tensor, rows: slice) -> None:
        target = t[rows]
        nz = noise.to(device=t.device)  # added in the wider dtype, rounded once (float64 noise: as ROME)
        for b, (s, e) in enumerate(spans):
            target[b, s:e] += nz[b] if nz.dim() == 3 else nz

    first = min((s for s, _ in spans), default=-1)  # position-wise from the first noised column
    return Intervention((Edit(hook, apply, first_column=first),), "embedding noise", {"spans": list(spans)})


def gaussian_noise(rows: int, n_tokens: int, d_model: int, *, scale: float, seed: int = 0) -> torch.Tensor:
    """Seeded N(0, scale^2) noise [rows, n_tokens, d_model] (float32, CPU) for :func:`add_embedding_noise`: the
    draws of ``torch.Generator().manual_seed(seed)`` (interp's causal tracing, ``noise_draws="torch"``)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(rows, n_tokens, d_model, generator=gen) * float(scale)


NOISE_DRAWS = ("torch", "rome")  # causal_trace's noise_draws: interp's torch generator, or ROME's numpy draws


def rome_noise(rows: int, n_tokens: int, d_model: int, *, scale: float, seed: int = 1) -> torch.Tensor:
    """ROME's noise draws (Meng et al. 2022, github.com/kmeng01/rome ``experiments/causal_trace.py``,
    ``trace_with_patch``): a fresh ``numpy.random.RandomState(seed)`` (ROME: 1) per traced run, one standard-normal
    array [rows, n_tokens, d_model] from it, times ``scale``, kept in float64 (CPU) as ROME keeps it. Added in
    float64 and rounded once to the model's dtype (an in-place add, as ROME's), it reproduces ROME's corrupted
    embeddings exactly."""
    import numpy as np

    return torch.from_numpy(np.random.RandomState(int(seed)).randn(rows, n_tokens, d_model)) * float(scale)


def mask_attention(model: Any, key_mask: torch.Tensor, *, from_layer: int = 0) -> Intervention:
    """Forbid attention to key columns (``key_mask`` [B, T] bool, True = forbidden) in every layer >= from_layer.

    Adds -inf to those columns of the attention scores before the softmax, in every head and query row. A
    query row whose every allowed key would be forbidden is left as it was (never a fully masked row: NaN).
    """
    info = as_model(model).info
    if not 0 <= from_layer <= info.n_layers:
        raise ParameterError(f"from_layer={from_layer} is out of range [0, {info.n_layers}].")
    forbidden = key_mask.bool()

    def apply(t: torch.Tensor, rows: slice) -> None:
        scores = t[rows]  # [B, H, Q, K]
        f = forbidden.to(t.device)[:, None, None, :]
        allowed = scores > torch.finfo(scores.dtype).min / 2
        still = (allowed & ~f).any(dim=-1, keepdim=True)
        scores.masked_fill_(f & still, float("-inf"))

    edits = tuple(Edit(hook_name("attn_scores", layer), apply) for layer in range(from_layer, info.n_layers))
    return Intervention(edits, f"mask attention from L{from_layer}", {"from_layer": from_layer})
