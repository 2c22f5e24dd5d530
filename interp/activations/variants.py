"""One forward pass with interventions, and the variants engine that batches many of them.

:func:`forward` runs a :class:`~interp.prompts.Batch` through the bridge with attention mask and position ids
(exact under left padding), applies interventions, records hooks, and by default unembeds only the last column
(it stops the forward after the final norm, so the full [B, T, vocab] logits are never made). Given ``past`` (a
Hugging Face cache holding the keys and values of columns [0, c)), it runs only columns c..T-1 on them.

:func:`run_variants` runs K interventions of one batch as K x B rows of batched forwards, chunked to a row
budget, and cuts each chunk both ways a variant cannot change:

* *layers*: when a chunk's interventions all start at block l or later, it starts there from the reference
  residual (blocks below l are not computed);
* *columns* (prefix reuse): a patch or restoration at column c changes no column before c (attention is
  causal), so when a chunk's variants all first change column c or later, it runs only columns >= c, attending
  to the reference run's cached keys and values of columns < c (every block >= l still fires its hooks on those
  columns, so the interventions apply). The reference run records those keys and values.

Both are exact: what is not computed sees the same inputs as in the reference run. A column is only cut where
every edit declares itself position-wise (``Edit.first_column``; :func:`interp.activations.interventions.set_edit`
and the factories built on it do); an edit without that declaration (attention-pattern edits such as
``mask_attention``, expert blocking on flattened token hooks, a user function) keeps the full recompute of every
column, as does a ``base`` with such an edit or a ``read`` of a hook whose value is not laid out
[batch, position, ...].
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..model.decode import unembed
from ..model.loading import Model, as_model
from ..prompts import Batch
from .hooks import Edit, Intervention, StopForward, hooked
from .sites import EMBED, FINAL_NORMED, RESIDUAL, SUBLAYER_OUTPUTS, hook_name

_FINAL = FINAL_NORMED
# sites whose hook value is laid out [batch, position, ...]: a read of them can be cut to columns >= c and padded
# back with the reference's prefix
_POSITIONAL_SITES = (*RESIDUAL, *SUBLAYER_OUTPUTS, "attn_module_out", "z", "q", "k", "v", "rot_q", "rot_k")
# the fixed cost of one forward (hook dispatch, kernel launches) in row-forwards of the full width: a chunk takes
# in a variant whose start is earlier than the chunk's only while the extra work is below one more forward
_FORWARD_OVERHEAD_ROWS = {"cpu": 4, "cuda": 64}


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
    past: Any = None,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Run one batch. Returns (logits, store).

    ``logits``: "last" -> [B, vocab] at the last real token (column T-1); "all" -> [B, T, vocab]; None -> no
    unembedding. ``stop_after``: with ``logits=None``, a read hook after which the forward stops early.
    ``start_layer``/``start_resid``: begin at that block from the given residual [B, T, d_model] (the clean
    ``blocks.{start_layer}.hook_resid_pre``); no intervention may act below it.
    ``past``: a transformers ``Cache``. Empty, it is filled with every layer's keys and values of this run (the
    variants engine's reference run). Holding c columns (the keys and values of columns [0, c) of this batch's
    rows, computed under the same interventions), the forward runs only columns c..T-1 on them: reads and
    ``logits="all"`` then cover those columns only, ``start_resid`` may be [B, T - c, d_model] (or [B, T, ...],
    cut here), and every intervention must be position-wise (each edit declares ``first_column``; it is applied
    with the columns where they were). Cost: one forward of T - c columns.
    """
    m = as_model(model)
    bridge = m.bridge
    device = m.device
    b = batch.to(device)
    col = int(past.get_seq_length()) if past is not None else 0
    if not 0 <= col < b.width:
        raise ValueError(f"past holds {col} columns; the batch has {b.width}.")
    if col:
        interventions = [_from_column(iv, col) for iv in interventions]
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
    kw: dict[str, Any] = {"attention_mask": b.attention_mask, "position_ids": b.position_ids[:, col:]}
    cache_ctx: Any = nullcontext()
    if past is not None:
        from .generation import _kv_cache_bridge  # the attention bridges read the cache under another keyword

        kw.update(past_key_values=past, use_cache=True)
        cache_ctx = _cache_context(m, _kv_cache_bridge)
    with grad_ctx, hooks as store, cache_ctx:
        try:
            if start_layer and start_layer > 0:
                if start_resid is None:
                    raise ValueError("start_layer > 0 needs start_resid (the clean residual entering that block).")
                resid = start_resid[:, col:] if col and start_resid.shape[1] == b.width else start_resid
                with _skip_blocks(m, start_layer):
                    out = bridge(resid.to(device), start_at_layer=start_layer, **kw)
            else:
                out = bridge(b.input_ids[:, col:], **kw)
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


@contextmanager
def _cache_context(model: Model, kv_cache_bridge: Callable[[Model], Any]) -> Iterator[None]:
    """The cache passed on to the attention bridges; the bridge hands it to transformers as ``past_key_values``,
    which transformers 5 reports as deprecated on every call (the name still works)."""
    with warnings.catch_warnings(), kv_cache_bridge(model):
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        yield


def _from_column(iv: Intervention, col: int) -> Intervention:
    """``iv`` for a forward of columns >= ``col``: each edit sees its hook's value with the columns where they
    were (the prefix zero-filled: a position-wise edit never reads it) and keeps what it writes at columns >= col."""
    edits = []
    for e in iv.edits:
        if e.first_column is None:
            raise ValueError(f"Intervention {iv.label!r}: its edit of {e.name!r} does not declare itself position-wise "
                             "(Edit.first_column), so it cannot run on a cached prefix.")
        edits.append(replace(e, apply=_shifted(e.apply, col)))
    return Intervention(tuple(edits), iv.label, iv.params)


def _shifted(apply: Callable[[torch.Tensor, slice], None], col: int) -> Callable[[torch.Tensor, slice], None]:
    def shifted(t: torch.Tensor, rows: slice) -> None:
        part = t[rows]
        full = torch.cat([part.new_zeros((part.shape[0], col, *part.shape[2:])), part], 1)
        apply(full, slice(None))
        part.copy_(full[:, col:])

    return shifted


def first_column(iv: Intervention, width: int) -> int:
    """The first column ``iv`` changes in a batch of ``width`` columns: the least of its edits' declared
    ``first_column`` (negative ones counted from the end); 0 when an edit declares none (it may change any column);
    width - 1 for an intervention without edits."""
    out = width - 1
    for e in iv.edits:
        if e.first_column is None:
            return 0
        c = e.first_column + width if e.first_column < 0 else e.first_column
        out = min(out, max(c, 0))
    return out


class _PrefixLayer(DynamicLayer):
    """One layer's keys and values of the first c columns of B rows, shared by ``copies`` copies of the batch: an
    update returns them joined with the new columns and keeps nothing (every chunk reuses the same prefix)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, copies: int):
        super().__init__()
        self.keys, self.values, self.copies = keys, values, copies
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return _join(self.keys, key_states, self.copies), _join(self.values, value_states, self.copies)

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]


def _join(prefix: torch.Tensor, new: torch.Tensor, copies: int) -> torch.Tensor:
    """[copies x B, heads, c + w, d]: copy j of the prefix [B, heads, c, d] followed by the new columns."""
    b, h, c, d = prefix.shape
    out = new.new_empty((new.shape[0], h, c + new.shape[2], d))
    out.view(copies, b, h, c + new.shape[2], d)[:, :, :, :c] = prefix.to(new.dtype)
    out[:, :, c:] = new
    return out


def prefix_cache(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], col: int, copies: int) -> Any:
    """A cache of the first ``col`` columns of per-layer keys/values [B, kv heads, T, d_head], for a forward of
    ``copies`` copies of the batch (:func:`forward`'s ``past``)."""
    cache = DynamicCache()
    cache.layers = [_PrefixLayer(k[:, :, :col], v[:, :, :col], copies) for k, v in zip(keys, values)]
    return cache


def _recorded(cache: Any, n_layers: int, width: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """The keys and values a reference run left in ``cache``; None if it did not fill (another bridge /
    transformers pairing that does not pass the cache on): the caller then recomputes every column."""
    layers = list(getattr(cache, "layers", []))
    if len(layers) != n_layers:
        return None
    keys, values = [], []
    for layer in layers:
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(k, torch.Tensor) or k.ndim != 4 or k.shape[2] != width or v is None or v.shape[2] != width:
            return None
        keys.append(k)
        values.append(v)
    return keys, values


def positional_reads(names: Sequence[str], n_layers: int) -> bool:
    """Whether every hook in ``names`` is laid out [batch, position, ...] (so a cut read can be padded back)."""
    ok = {hook_name(s, layer) for s in _POSITIONAL_SITES for layer in range(n_layers)} | {_FINAL, EMBED}
    return all(n in ok for n in names)


def finite_pad_rows(model: Model, start_layer: int) -> Intervention:
    """In float64 the attention mask is float64's most negative number, and Hugging Face's attention softmax runs
    in float32: the cast makes it -inf, and the pattern row of a left-pad query (every key masked) NaN; 0 x NaN in
    pattern @ V (and in the softmax's backward) then reaches the real rows. Clamping the scores at float32's
    most negative number leaves every real row exactly as it was (masked keys still get exactly 0) and gives pad
    rows a finite, meaningless pattern."""

    floor = torch.finfo(torch.float32).min

    def apply(t: torch.Tensor, rows: slice) -> None:
        t[rows] = t[rows].clone().clamp(min=floor)

    edits = tuple(Edit(hook_name("attn_scores", layer), apply)
                  for layer in range(max(start_layer, 0), model.info.n_layers))
    return Intervention(edits, "finite pad rows")


def default_max_rows(model: Any, width: int, keys: int | None = None) -> int:
    """Rows per forward that fit a memory budget: a quarter of free GPU memory; on CPU 32 MiB of activations,
    since there more rows per forward add no parallelism and chunks past the caches run slower (causal tracing of
    the dense organism: 30 % less CPU time than with 2 GiB chunks). ``keys``: the columns attended to when only the
    last ``width`` columns run on a cached prefix (default ``width``)."""
    m = as_model(model)
    i = m.info
    keys = width if keys is None else keys
    elem = torch.finfo(m.dtype).bits // 8
    per_row = width * (8 * i.d_model + 3 * (i.d_mlp or 4 * i.d_model) + 2 * i.n_heads * keys) * elem
    if keys > width:  # one layer's joined keys and values at a time, repeated to the query heads
        per_row += 4 * i.n_heads * (i.d_head or i.d_model // i.n_heads) * keys * elem
    per_row += i.vocab_size * 4
    if m.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(m.device)
        budget = free // 4
    else:
        budget = 32 * 1024**2
    return max(1, int(budget // max(per_row, 1)))


def plan_chunks(starts: Sequence[tuple[int, int]], bsz: int, n_layers: int, width: int,
                rows_for: Callable[[int], int], overhead: float) -> list[tuple[list[int], int, int]]:
    """Group variants into chunks [(variant indices, start block, first column)].

    ``starts[k]`` = (block, column) where variant k's first change is; a chunk runs from the least block and the
    least column of its members, for ``len x bsz`` rows of at most ``rows_for(column)``. Cost model, in
    full-width forwards of one batch copy: a chunk costs ``overhead`` plus ``len x (L - block) (T - column) /
    (L T)``. Variants are taken in (block, column) order and in (column, block) order; a variant joins the open
    chunk while that is cheaper than opening a new one; the cheaper of the two plans is kept.
    """
    def work(layer: int, col: int) -> float:
        return (n_layers - layer) * (width - col) / (n_layers * width)

    best: tuple[float, list[tuple[list[int], int, int]]] | None = None
    for key in (lambda k: (starts[k][0], starts[k][1], k), lambda k: (starts[k][1], starts[k][0], k)):
        chunks: list[tuple[list[int], int, int]] = []
        cur: list[int] = []
        lo = co = 0
        for k in sorted(range(len(starts)), key=key):
            layer, col = starts[k]
            if cur:
                l2, c2 = min(lo, layer), min(co, col)
                fits = (len(cur) + 1) * bsz <= max(rows_for(c2), bsz)
                if fits and (len(cur) + 1) * work(l2, c2) <= len(cur) * work(lo, co) + overhead + work(layer, col):
                    cur.append(k)
                    lo, co = l2, c2
                    continue
                chunks.append((cur, lo, co))
            cur, lo, co = [k], layer, col
        if cur:
            chunks.append((cur, lo, co))
        cost = sum(overhead + len(ch) * work(layer, col) for ch, layer, col in chunks)
        if best is None or cost < best[0]:
            best = (cost, chunks)
    return best[1] if best is not None else []


@dataclass
class Reference:
    """The reference run of a batch (clean, or under ``base``) as the variants engine restarts from it: last-column
    ``logits``, the ``store`` of its reads (after ``read_fn``), ``whole`` (the reads before ``read_fn``), ``resid``
    {block: the residual entering it}, ``kv`` (every layer's keys and values, or None)."""

    logits: torch.Tensor
    store: dict[str, Any]
    whole: dict[str, torch.Tensor]
    resid: dict[int, torch.Tensor]
    kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None
    base: Intervention | None
    size: int
    width: int


def reference_run(model: Any, batch: Batch, *, read: Sequence[str] = (),
                  read_fn: Callable[[str, torch.Tensor], Any] | None = None, base: Intervention | None = None,
                  layers: Sequence[int] | None = None, keys_values: bool = True) -> Reference:
    """One forward of ``batch`` (under ``base``) that keeps what :func:`run_variants` restarts from: the residual
    entering each block of ``layers`` (default: every block above 0) and, with ``keys_values``, every layer's keys
    and values. Its ``logits`` / ``store`` are :func:`forward`'s. Cost: one forward."""
    m = as_model(model)
    read = list(read)
    layers = range(1, m.info.n_layers) if layers is None else [layer for layer in layers if layer > 0]
    resid_names = {hook_name("resid_pre", layer): layer for layer in layers}
    whole: dict[str, torch.Tensor] = {}

    def fn(name: str, value: torch.Tensor) -> Any:  # the kept residuals stay whole
        if name in read:
            whole[name] = value
        if name in resid_names and name not in read:
            return value
        return value if read_fn is None else read_fn(name, value)

    past = DynamicCache() if keys_values and batch.width > 1 else None
    lg, store = forward(m, batch, [base] if base is not None else [], read=read + [n for n in resid_names
                                                                                   if n not in read],
                        read_fn=fn, past=past)
    resid = {}
    for name, layer in resid_names.items():
        resid[layer] = whole[name] if name in read else store.pop(name)
    kv = _recorded(past, m.info.n_layers, batch.width) if past is not None else None
    return Reference(lg, store, whole, resid, kv, base, batch.size, batch.width)


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
    reuse_prefix: bool = True,
    progress: bool = False,
    base: Intervention | None = None,
    reference: Reference | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run every variant on the batch; returns (base, [per-variant]) results of ``reduce``.

    ``reduce(last_logits, store)`` maps a forward's outputs to a tensor with one leading row per batch row;
    each result has the batch's B rows. ``base``: an intervention applied to every row, the reference run
    included (e.g. ROME's embedding noise, with variants restoring clean states); without it the reference is
    the clean run. ``read`` hooks reach ``reduce`` whole ([rows, T, ...], before ``read_fn``), also from a chunk
    that ran only the last columns (their prefix is the reference's).

    ``reuse_clean``: a chunk starts at its first intervened block, from the reference run's residual.
    ``reuse_prefix``: a chunk whose variants first change column c or later runs only columns >= c on the
    reference run's keys and values (the module doc says when a column cannot be cut: then every column runs).
    ``reference``: the batch's :func:`reference_run` (with the same ``base`` and ``read``) when the caller has
    made it already (e.g. to see its values before building the variants); then no reference forward runs here.
    Chunks group variants by where they start (:func:`plan_chunks`). Cost: one reference forward of B rows, plus
    per chunk one forward of (its variants x B) rows of at most ``max_rows`` rows (default: a memory budget at the
    chunk's width), over T - c columns from block l: about sum over variants of (T - c) / T x (L - l) / L
    forwards of the batch.
    """
    m = as_model(model)
    n_layers = m.info.n_layers
    bsz = batch.size
    width = batch.width
    read = list(read)
    cut = (reuse_prefix and width > 1 and positional_reads(read, n_layers)
           and (base is None or all(e.first_column is not None for e in base.edits)))
    starts = []
    for v in variants:
        layer = (min(v.first_layer, n_layers - 1) if v.first_layer > 0 else 0) if reuse_clean else 0
        starts.append((layer, first_column(v, width) if cut else 0))

    def rows_for(col: int) -> int:
        return max_rows or default_max_rows(m, width - col, width)

    overhead = _FORWARD_OVERHEAD_ROWS.get(m.device.type, _FORWARD_OVERHEAD_ROWS["cuda"]) / bsz
    chunks = plan_chunks(starts, bsz, n_layers, width, rows_for, overhead)
    if reference is None:
        reference = reference_run(m, batch, read=read, read_fn=read_fn, base=base,
                                  layers=sorted({layer for _, layer, _ in chunks if layer > 0}),
                                  keys_values=any(col > 0 for _, _, col in chunks))
    elif reference.size != bsz or reference.width != width or reference.base is not base:
        raise ValueError("reference: not a reference run of this batch with this base.")
    clean = reduce(reference.logits, reference.store)
    clean_resid, kv, whole = reference.resid, reference.kv, reference.whole
    if kv is None and any(col > 0 for _, _, col in chunks):  # the cache did not fill: every column runs
        chunks = plan_chunks([(layer, 0) for layer, _ in starts], bsz, n_layers, width, rows_for, overhead)
    # a start whose residual the reference did not keep begins lower, at the nearest kept block (or at 0)
    chunks = [(ch, max([lv for lv in clean_resid if lv <= layer], default=0), col) for ch, layer, col in chunks]

    results: list[torch.Tensor | None] = [None] * len(variants)
    for chunk, start, col in tqdm(chunks, desc="variants", disable=not progress, leave=False):
        n = len(chunk)
        rep = batch.repeat(n)
        ivs = [variants[k].on_rows(slice(j * bsz, (j + 1) * bsz)) for j, k in enumerate(chunk)]
        resid = clean_resid[start][:, col:].repeat(n, 1, 1) if start > 0 else None
        if base is not None:  # on every copy of the batch; edits below the start are in the reference residual
            kept = base.edits if start == 0 else tuple(e for e in base.edits if e.layer >= start)
            if kept:
                kept_iv = Intervention(kept, base.label)
                ivs = [*(kept_iv.on_rows(slice(j * bsz, (j + 1) * bsz)) for j in range(n)), *ivs]
        chunk_past, fn = None, read_fn
        if col > 0 and kv is not None:
            if any(name not in whole for name in read):
                raise ValueError("reference: it did not read every hook in read.")
            chunk_past = prefix_cache(kv[0], kv[1], col, n)
            if read:
                fn = _padded_reads(whole, col, n, read_fn)
        lg, store = forward(m, rep, ivs, read=read, read_fn=fn, start_layer=start, start_resid=resid,
                            past=chunk_past)
        for name in read:  # a hook below the chunk's start did not fire: it has the reference's value
            if name not in store:
                value = whole[name].repeat(n, *([1] * (whole[name].ndim - 1)))
                store[name] = value if read_fn is None else read_fn(name, value)
        out = reduce(lg, store)
        for j, k in enumerate(chunk):
            results[k] = out[j * bsz:(j + 1) * bsz]
    return clean, results  # type: ignore[return-value]


def _padded_reads(whole: dict[str, torch.Tensor], col: int, copies: int,
                  read_fn: Callable[[str, torch.Tensor], Any] | None) -> Callable[[str, torch.Tensor], Any]:
    """A read of columns >= col, with the reference's columns < col put back in front (then ``read_fn``)."""
    def fn(name: str, value: torch.Tensor) -> Any:
        prefix = whole[name][:, :col]
        full = torch.cat([prefix.repeat(copies, *([1] * (prefix.ndim - 1))).to(value.dtype), value], 1)
        return full if read_fn is None else read_fn(name, full)

    return fn
