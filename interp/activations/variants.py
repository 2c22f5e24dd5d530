"""One forward pass with interventions, and the variants engine that batches many of them.

:func:`forward` runs a :class:`~interp.prompts.Batch` through the bridge with attention mask and position ids
(exact under left padding), applies interventions, records hooks, and by default unembeds only the last column
(it stops the forward after the final norm, so the full [B, T, vocab] logits are never made).

:func:`run_variants` runs K interventions of one batch as K x B rows of batched forwards, chunked to a row
budget. When a chunk's interventions all start at block l or later, it starts there from the clean residual
(blocks below l are not computed): that is exact, since those blocks see the same inputs as the clean run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from ..model.decode import unembed
from ..model.loading import Model, as_model
from ..prompts import Batch
from .hooks import Intervention, StopForward, hooked
from .sites import hook_name

_FINAL = "ln_final.hook_out"


@contextmanager
def _skip_blocks(model: Model, start: int) -> Iterator[None]:
    """Make blocks [0, start) pass their input through untouched (block ``start`` swaps the real residual in)."""
    blocks = list(model.bridge.blocks)[:start]
    saved = []
    for block in blocks:
        # the instance dict, not setattr: bridge components forward attribute writes to the wrapped module
        saved.append((block, block.__dict__.get("forward")))
        block.__dict__["forward"] = _passthrough
    try:
        yield
    finally:
        for block, original in saved:
            if original is None:
                block.__dict__.pop("forward", None)
            else:
                block.__dict__["forward"] = original


def _passthrough(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def forward(
    model: Any,
    batch: Batch,
    interventions: Sequence[Intervention] = (),
    *,
    read: Sequence[str] = (),
    read_fn: Callable[[str, torch.Tensor], Any] | None = None,
    logits: str | None = "last",
    keep_grad: bool = False,
    start_layer: int = 0,
    start_resid: torch.Tensor | None = None,
    stop_after: str | None = None,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Run one batch. Returns (logits, store).

    ``logits``: "last" -> [B, vocab] at the last real token (column T-1); "all" -> [B, T, vocab]; None -> no
    unembedding. ``stop_after``: with ``logits=None``, a read hook after which the forward stops early.
    ``start_layer``/``start_resid``: begin at that block from the given residual [B, T, d_model] (the clean
    ``blocks.{start_layer}.hook_resid_pre``); no intervention may act below it.
    """
    m = as_model(model)
    bridge = m.bridge
    device = m.device
    b = batch.to(device)
    names = list(read)
    if logits is not None:
        stop_after = None
    fn = read_fn
    if logits == "last":
        names.append(_FINAL)
        stop_after = _FINAL

        def fn(name: str, value: torch.Tensor, _user=read_fn) -> Any:  # noqa: F811
            if name == _FINAL:
                return value[:, -1]
            return _user(name, value) if _user is not None else value

    if m.dtype == torch.float64 and bool((b.attention_mask == 0).any()):
        interventions = [*interventions, finite_pad_rows(m, start_layer)]
    for iv in interventions:
        if start_layer and iv.first_layer < start_layer:
            raise ValueError(f"Intervention {iv.label!r} acts below start_layer={start_layer}.")
    grad_ctx = torch.enable_grad() if keep_grad else torch.no_grad()
    out = None
    final = None
    hooks = hooked(m, interventions, read=names, keep_grad=keep_grad, read_fn=fn, stop_after=stop_after)
    with grad_ctx, hooks as store:
        try:
            if start_layer and start_layer > 0:
                if start_resid is None:
                    raise ValueError("start_layer > 0 needs start_resid (the clean residual entering that block).")
                with _skip_blocks(m, start_layer):
                    out = bridge(
                        start_resid.to(device),
                        start_at_layer=start_layer,
                        attention_mask=b.attention_mask,
                        position_ids=b.position_ids,
                    )
            else:
                out = bridge(b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
        except StopForward:
            pass
        if logits == "last":
            final = store.pop(_FINAL)
    if logits == "last":
        with grad_ctx:
            return unembed(m, final), store
    if logits == "all":
        return out, store
    return None, store


def finite_pad_rows(model: Model, start_layer: int) -> Intervention:
    """In float64 the attention mask is float64's most negative number, and Hugging Face's attention softmax runs
    in float32: the cast makes it -inf, and the pattern row of a left-pad query (every key masked) NaN; 0 x NaN in
    pattern @ V (and in the softmax's backward) then reaches the real rows. Clamping the scores at float32's
    most negative number leaves every real row exactly as it was (masked keys still get exactly 0) and gives pad
    rows a finite, meaningless pattern."""
    from .hooks import Edit

    floor = torch.finfo(torch.float32).min

    def apply(t: torch.Tensor, rows: slice) -> None:
        t[rows] = t[rows].clone().clamp(min=floor)

    edits = tuple(Edit(hook_name("attn_scores", layer), apply)
                  for layer in range(max(start_layer, 0), model.info.n_layers))
    return Intervention(edits, "finite pad rows")


def default_max_rows(model: Any, width: int) -> int:
    """Rows per forward that fit a memory budget: a quarter of free GPU memory; on CPU 32 MiB of activations,
    since there more rows per forward add no parallelism and chunks past the caches run slower (causal tracing of
    the dense organism: 30 % less CPU time than with 2 GiB chunks)."""
    m = as_model(model)
    i = m.info
    elem = torch.finfo(m.dtype).bits // 8
    per_row = width * (8 * i.d_model + 3 * (i.d_mlp or 4 * i.d_model) + 2 * i.n_heads * width) * elem
    per_row += i.vocab_size * 4
    if m.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(m.device)
        budget = free // 4
    else:
        budget = 32 * 1024**2
    return max(1, int(budget // max(per_row, 1)))


def run_variants(
    model: Any,
    batch: Batch,
    variants: Sequence[Intervention],
    reduce: Callable[[torch.Tensor | None, dict[str, Any]], torch.Tensor],
    *,
    read: Sequence[str] = (),
    read_fn: Callable[[str, torch.Tensor], Any] | None = None,
    max_rows: int | None = None,
    reuse_clean: bool = True,
    progress: bool = False,
    base: Intervention | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run every variant on the batch; returns (base, [per-variant]) results of ``reduce``.

    ``reduce(last_logits, store)`` maps a forward's outputs to a tensor with one leading row per batch row;
    each result has the batch's B rows. ``base``: an intervention applied to every row, the reference run
    included (e.g. ROME's embedding noise, with variants restoring clean states); without it the reference is
    the clean run. Cost: one reference forward of B rows, plus K x B rows of forwards in chunks of at most
    ``max_rows`` rows, each starting at its first intervened block (from the reference run's residual) when
    ``reuse_clean``.
    """
    m = as_model(model)
    n_layers = m.info.n_layers
    bsz = batch.size
    max_rows = max_rows or default_max_rows(m, batch.width)
    per_chunk = max(1, max_rows // bsz)
    order = sorted(range(len(variants)), key=lambda k: variants[k].first_layer)
    chunks = [order[i:i + per_chunk] for i in range(0, len(order), per_chunk)]

    starts: dict[int, int] = {}
    if reuse_clean:
        for chunk in chunks:
            first = min(variants[k].first_layer for k in chunk)
            starts[id(chunk)] = min(first, n_layers - 1) if first > 0 else 0
    needed = sorted({s for s in starts.values() if s > 0})
    resid_names = [hook_name("resid_pre", layer) for layer in needed]
    base_ivs = [base] if base is not None else []
    user_fn = read_fn

    def reference_fn(name: str, value: torch.Tensor) -> Any:  # the kept residuals stay whole
        if name in resid_names or user_fn is None:
            return value
        return user_fn(name, value)

    lg, store = forward(m, batch, base_ivs, read=list(read) + resid_names, read_fn=reference_fn)
    clean_resid = {layer: store.pop(hook_name("resid_pre", layer)) for layer in needed}
    clean = reduce(lg, store)

    results: list[torch.Tensor | None] = [None] * len(variants)
    for chunk in tqdm(chunks, desc="variants", disable=not progress, leave=False):
        rep = batch.repeat(len(chunk))
        ivs = [variants[k].on_rows(slice(j * bsz, (j + 1) * bsz)) for j, k in enumerate(chunk)]
        start = starts.get(id(chunk), 0)
        resid = clean_resid[start].repeat(len(chunk), 1, 1) if start > 0 else None
        if base is not None:  # on every copy of the batch; edits below the start are in the reference residual
            kept = base.edits if start == 0 else tuple(e for e in base.edits if e.layer >= start)
            if kept:
                kept_iv = Intervention(kept, base.label)
                ivs = [*(kept_iv.on_rows(slice(j * bsz, (j + 1) * bsz)) for j in range(len(chunk))), *ivs]
        lg, store = forward(m, rep, ivs, read=read, read_fn=read_fn, start_layer=start, start_resid=resid)
        out = reduce(lg, store)
        for j, k in enumerate(chunk):
            results[k] = out[j * bsz:(j + 1) * bsz]
    return clean, results  # type: ignore[return-value]
