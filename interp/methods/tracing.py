"""Causal tracing of factual recall (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME),
subject-focused and relation-focused (Liu et al. 2025, "Relation Also Knows", AAAI).

For each fact (prompt, subject, object): run the prompt clean (P(o) = ``high``), then ``samples`` corrupted copies
whose token embeddings at the corrupted tokens get Gaussian noise (mean corrupted P(o) = ``low``); then restore
one clean state in the corrupted copies and measure P(o) again. Indirect effect IE = P_restored(o) - low; total
effect = high - low. States: the residual stream after block l at token t (``resid``), or the MLP / attention
output at token t over a window of layers around l (``mlp`` / ``attn``); ``severed`` adds the residual
restoration with the MLP (or attention) at that token frozen at its corrupted value in every later layer.

All restorations of one fact run batched through :func:`interp.variants.run_variants` with the noise as the
base intervention: the corrupted copies x restorations are rows of chunked forwards that start at the first
block a chunk restores, from the corrupted residual (exact; the per-restoration loop is the reference in the
tests). :func:`trace_summary` averages the indirect effects per kind x layer x token role (ROME's summary) and
:func:`trace_totals` gives each fact's high, low and total effect. The per-layer relation evidence at the last
position lives in :mod:`interp.methods.relation_evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from ..errors import ParameterError, PromptError, check_choice, check_positive_float, check_positive_int
from ..hooks import Edit, Intervention, StopForward, hooked
from ..model import Model, as_model
from ..prompts import EncodedSet, as_prompt_set, encode, make_batch
from ..registry import ShardPlan, register_method
from ..results import Result, concat_tables, make_meta
from ..variants import forward, run_variants

KINDS = ("resid", "mlp", "attn")
HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}
SEVERABLE = ("mlp", "attn")
CORRUPTIONS = ("subject", "relation")
ANSWERS = ("target", "argmax")
ROLES = ("bos", "before subject", "first subject", "middle subject", "last subject", "first subsequent", "further",
         "last")


# --- small pieces, public because tests and other tools use them ------------------------------------------
def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, int]:
    """ROME's layer window around ``layer``: [max(0, l - w//2), min(L, l + ceil(w/2))); w = 10 -> [l-5, l+5)."""
    return max(0, layer - window // 2), min(n_layers, layer + (window - window // 2))


def token_role(t: int, length: int, subject: tuple[int, int], bos: bool) -> str:
    """ROME's token role of position ``t`` (prompt coordinates, BOS included) given the subject span [s, e).

    The last prompt token is "last" even when it also ends the subject; a one-token subject is "last subject".
    """
    s, e = subject
    if t == length - 1:
        return "last"
    if bos and t == 0:
        return "bos"
    if t < s:
        return "before subject"
    if t == e - 1:
        return "last subject"
    if t == s:
        return "first subject"
    if t < e:
        return "middle subject"
    return "first subsequent" if t == e else "further"


def corrupted_positions(length: int, subject: tuple[int, int], bos: bool, corrupt: str) -> list[int]:
    """The token positions that get noise: the subject's tokens, or every other token but BOS (the last included)."""
    s, e = subject
    if corrupt == "subject":
        return list(range(s, e))
    return [t for t in range(int(bos), length) if not s <= t < e]


def embedding_noise(positions: Sequence[int], noise: torch.Tensor) -> Intervention:
    """Add ``noise`` [rows, n, d_model] to the token embeddings (``hook_embed``) at ``positions`` (n columns)."""
    cols = list(positions)

    def apply(t: torch.Tensor, rows: slice) -> None:
        target = t[rows]
        target[:, cols] += noise.to(device=t.device, dtype=t.dtype)

    return Intervention((Edit("hook_embed", apply),), "embedding noise", {"positions": cols})


def subject_embedding_std(model: Any, subjects: Sequence[str]) -> float:
    """Std of the embedding elements (``hook_embed``: what the noise is added to) of the subjects, each tokenised
    alone with no special tokens (ROME's ``collect_embedding_std``; unbiased std over all elements)."""
    m = as_model(model)
    ids: list[int] = []
    for s in dict.fromkeys(subjects):
        ids.extend(m.tokenizer(s, add_special_tokens=False)["input_ids"])
    if not ids:
        raise PromptError("The subjects tokenise to no tokens; cannot measure the embedding std for the noise.")
    x = torch.tensor([ids], device=m.device)
    with torch.no_grad(), hooked(m, read=["hook_embed"], stop_after="hook_embed") as store:
        try:
            m.bridge(x)
        except StopForward:
            pass
    return float(store["hook_embed"].float().std())


# --- the method -------------------------------------------------------------------------------------------
def _check_params(m: Model, corrupt: str, kinds: Any, window: Any, samples: Any, noise: Any, seed: Any,
                  severed: Any, answer: str, max_rows: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    check_choice("corrupt", corrupt, CORRUPTIONS)
    check_choice("answer", answer, ANSWERS)
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds and not severed:
        raise ParameterError("kinds is empty; name at least one of 'resid', 'mlp', 'attn'.")
    for k in kinds:
        check_choice("kinds", k, KINDS)
    check_positive_int("window", window)
    check_positive_int("samples", samples)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed must be an integer; got {seed!r}.")
    sev: tuple[str, ...] = () if severed is None else (severed,) if isinstance(severed, str) else tuple(severed)
    for s in sev:
        check_choice("severed", s, SEVERABLE)
    if max_rows is not None:
        check_positive_int("max_rows", max_rows)
    if isinstance(noise, torch.Tensor):
        _check_noise_tensor(noise, samples, m.info.d_model)
    elif isinstance(noise, (list, tuple)):
        for k, t in enumerate(noise):
            if not isinstance(t, torch.Tensor):
                raise ParameterError(f"noise[{k}] is a {type(t).__name__}; give one tensor per prompt.")
            _check_noise_tensor(t, samples, m.info.d_model, where=f"noise[{k}]")
    else:
        check_positive_float("noise", noise)
    return kinds, sev


def _check_noise_tensor(t: torch.Tensor, samples: int, d_model: int, where: str = "noise") -> None:
    if t.dim() != 3 or t.shape[0] != samples or t.shape[2] != d_model:
        raise ParameterError(
            f"{where} has shape {tuple(t.shape)}; an explicit noise tensor must be [samples={samples}, "
            f"n_corrupted_tokens, d_model={d_model}]."
        )
    if not torch.is_floating_point(t) or not torch.isfinite(t).all():
        raise ParameterError(f"{where} must be a finite floating-point tensor.")


def _noise_for(noise: Any, k: int, n: int, samples: int, d_model: int, scale: float | None, seed: int,
               pid: str) -> torch.Tensor:
    if isinstance(noise, torch.Tensor):
        t = noise
    elif isinstance(noise, (list, tuple)):
        t = noise[k]
    else:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(samples, n, d_model, generator=gen) * float(scale)
    if t.shape[1] != n:
        raise ParameterError(f"Prompt {pid!r}: the noise covers {t.shape[1]} tokens but {n} tokens are corrupted.")
    return t


def causal_trace_figure(result: Result, prompt_id: str | None = None, view: str = "heatmap",
                        value: str = "indirect_effect") -> Any:
    """ROME-style figures. ``view="heatmap"``: one prompt (the first by default), tokens down, layers across,
    one panel per kind, subject tokens marked with ``*``. ``view="roles"``: the average indirect effect per layer,
    one curve per token role, one panel per kind."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_choice("view", view, ("heatmap", "roles"))
    table = result.table
    kinds = list(dict.fromkeys(table["kind"]))
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=kinds, shared_yaxes=True,
                        horizontal_spacing=0.04)
    corrupt = result.meta.get("parameters", {}).get("corrupt", "subject")
    if view == "roles":
        summary = trace_summary(result)
        colours = dict(zip(ROLES, ("#999999", "#bbbbbb", "#1f77b4", "#17becf", "#d62728", "#2ca02c", "#9467bd",
                                   "#ff7f0e")))
        for c, kind in enumerate(kinds, 1):
            part = summary[summary["kind"] == kind]
            for role in [r for r in ROLES if r in set(part["role"])]:
                rows = part[part["role"] == role]
                fig.add_trace(go.Scatter(x=rows["layer"], y=rows["indirect_effect"], mode="lines+markers",
                                         name=role, legendgroup=role, showlegend=c == 1,
                                         line={"color": colours[role]}), row=1, col=c)
        fig.update_layout(title=f"Average indirect effect by token role ({corrupt} corrupted, "
                                f"{table['prompt_id'].nunique()} facts)", yaxis_title="mean indirect effect")
        for c in range(1, len(kinds) + 1):
            fig.update_xaxes(title_text="layer", row=1, col=c)
        return fig
    pid = prompt_id if prompt_id is not None else table["prompt_id"].iloc[0]
    one = table[table["prompt_id"] == str(pid)]
    if one.empty:
        raise ParameterError(f"prompt_id={pid!r} is not in the result.")
    tokens = one.drop_duplicates("position").sort_values("position")
    labels = [f"{p}: {tok!r}" + ("*" if s else "") for p, tok, s in zip(tokens["position"], tokens["token"],
                                                                           tokens["subject"])]
    vmax = float(one[value].abs().max()) or 1.0
    for c, kind in enumerate(kinds, 1):
        grid = one[one["kind"] == kind].pivot_table(index="position", columns="layer", values=value)
        fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=labels, coloraxis="coloraxis",
                                 hovertemplate="token %{y}<br>layer %{x}<br>" + value + " %{z:.4f}<extra>" + kind
                                 + "</extra>"), row=1, col=c)
        fig.update_xaxes(title_text="layer", row=1, col=c)
    r0 = one.iloc[0]
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=f"Causal trace of {pid!r} ({corrupt} corrupted): object {r0['target']!r}, high={r0['high']:.3f}, "
              f"low={r0['low']:.3f}; * = subject token",
        coloraxis={"colorscale": "RdBu_r", "cmin": -vmax, "cmax": vmax, "colorbar": {"title": value}},
    )
    return fig


def _trace_prepare(m: Model, ps: Any, params: dict) -> dict:
    """Fix the noise scale once, from every subject of the set (a shard measuring its own subjects would draw
    different noise), and let a shard keep none of its facts (the merge checks the whole set)."""
    noise = params.get("noise", 3.0)
    if isinstance(noise, (list, tuple)):
        raise ParameterError("noise given as one tensor per prompt cannot be split into shards; give a number or "
                             "one tensor for every prompt, or run causal_trace without shards.")
    out = {**params, "allow_none_kept": True}
    if isinstance(noise, (int, float)) and params.get("subject_std") is None:
        check_positive_float("noise", noise)
        out["subject_std"] = subject_embedding_std(m, ps.column("subject"))
    return out


def _trace_merge(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    kept = sum(p.meta["n_kept"] for p in parts)
    dropped = [i for p in parts for i in p.meta["dropped_ids"]]
    if kept == 0:
        raise PromptError(f"None of the {len(dropped)} facts is predicted by the model (clean argmax != the target's "
                          "first token), so there is nothing to trace.")
    return Result(table, {**meta, "n_kept": kept, "n_dropped": len(dropped), "dropped_ids": dropped})


@register_method("causal_trace", paper="Meng et al. 2022 (ROME, causal tracing); Liu et al. 2025 (Relation Also "
                 "Knows: relation-focused corruption)",
                 cost="per fact: 1 clean forward + (kinds x tokens x layers) restorations of `samples` rows, batched "
                 "(+1 corrupted forward with severed)", family="tracing", figure=causal_trace_figure,
                 shards=ShardPlan(prepare=_trace_prepare, merge=_trace_merge))
def causal_trace(
    model: Any,
    prompts: Any,
    *,
    corrupt: str = "subject",
    kinds: Sequence[str] = KINDS,
    window: int = 10,
    samples: int = 10,
    noise: float | torch.Tensor | Sequence[torch.Tensor] = 3.0,
    seed: int = 0,
    severed: str | Sequence[str] | None = None,
    answer: str = "target",
    only_correct: bool = True,
    max_rows: int | None = None,
    progress: bool = False,
    subject_std: float | None = None,
    allow_none_kept: bool = False,
) -> Result:
    """Causal tracing: the indirect effect on P(object) of restoring each clean state in corrupted runs.

    ``prompts`` carry ``subject`` (a whole-token substring of the prompt) and ``target`` (the object; its first
    token is o). ``corrupt="subject"`` adds noise to the subject's token embeddings (ROME);
    ``corrupt="relation"`` to every other token except BOS, the last token included (Liu et al.). ``noise``: a
    multiple of nu = the std of the embedding elements of the prompt set's subjects, each tokenised alone
    (ROME uses 3); every fact then gets N(0, nu^2) noise from ``torch.Generator().manual_seed(seed)`` (the
    same draws for every fact, as ROME does); or an explicit tensor [samples, n_corrupted_tokens, d_model]
    (or a list of them, one per prompt) to match another tool exactly. ``kinds``: ``resid`` restores the
    residual after block l at token t; ``mlp`` / ``attn`` restore the MLP / attention output at token t in the
    layers of ``window_layers(l, window, L)`` (ROME: [l-5, l+5)). ``severed="mlp"|"attn"`` (or both) adds
    kinds ``resid_no_mlp`` / ``resid_no_attn``: the residual restoration with that sublayer's output at token t
    frozen at its corrupted value (per sample) in every layer above l. ``answer="argmax"`` traces the model's
    own clean top-1 token instead of the target. With ``only_correct`` (ROME), a fact is kept only if the
    clean argmax is o; the others are dropped and counted in ``meta`` (``n_dropped``, ``dropped_ids``).
    ``subject_std``: nu itself, instead of measuring it on these prompts (a sharded run measures it once on the
    whole set); ``allow_none_kept``: return an empty table rather than raise when every fact is dropped.

    Table: one row per kept prompt x kind x layer x token: prompt_id, kind, layer, window_start, window_end,
    position (0-based, BOS included), token, role (bos, before subject, first / middle / last subject, first
    subsequent, further, last), subject, corrupted, restored_prob, indirect_effect (= restored_prob - low),
    high, low, total_effect (= high - low), target, target_id. Cost per fact: 1 clean forward + restorations
    (len(kinds) x T' x L, +T' x L per severed kind; T' = tokens from the first corrupted one on: a state before
    every corrupted token is already clean, so its IE is 0 exactly and it is not run) of ``samples`` rows each,
    run as chunked batches starting at the first restored block (+1 corrupted forward when severed).
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    kinds, sev = _check_params(m, corrupt, kinds, window, samples, noise, seed, severed, answer, max_rows)
    if subject_std is not None:
        check_positive_float("subject_std", subject_std)
    if isinstance(noise, (list, tuple)) and len(noise) != len(ps):
        raise ParameterError(f"noise is a list of {len(noise)} tensors but there are {len(ps)} prompts.")
    enc = encode(m, ps, targets=["target"] if answer == "target" else [], spans=["subject"])
    d_model = m.info.d_model
    plans = []
    for k, (item, rec) in enumerate(zip(enc.items, ps.records)):
        span = enc.spans["subject"][k]
        cols = corrupted_positions(len(item), span, item.bos, corrupt)
        if not cols:
            raise PromptError(f"Prompt {rec['id']!r}: corrupt={corrupt!r} leaves no token to corrupt (the prompt is "
                              "all subject).")
        if not isinstance(noise, (int, float)):
            _noise_for(noise, k, len(cols), samples, d_model, None, seed, rec["id"])  # shape check before compute
        plans.append((span, cols))
    scale = None
    if isinstance(noise, (int, float)):
        nu = subject_embedding_std(m, ps.column("subject")) if subject_std is None else float(subject_std)
        scale = float(noise) * nu

    rows: list[dict[str, Any]] = []
    dropped: list[str] = []
    for k, rec in enumerate(ps.records):
        span, cols = plans[k]
        nz = _noise_for(noise, k, len(cols), samples, d_model, scale, seed, rec["id"])
        fact = _trace_fact(m, enc, k, cols, nz, kinds, sev, window, answer, only_correct, max_rows, progress)
        if fact is None:
            dropped.append(rec["id"])
            continue
        rows.extend(fact)
    if not rows and not allow_none_kept:
        raise PromptError(
            f"None of the {len(ps)} facts is predicted by the model (clean argmax != the target's first token), so "
            "there is nothing to trace; check the targets (leading space?) or pass only_correct=False."
        )
    params = {"corrupt": corrupt, "kinds": list(kinds), "window": window, "samples": samples,
              "noise": noise if isinstance(noise, (int, float)) else "explicit tensor", "seed": seed,
              "severed": list(sev), "answer": answer, "only_correct": only_correct}
    meta = make_meta("causal_trace", m, ps, params, noise_std=scale, n_kept=len(ps) - len(dropped),
                     n_dropped=len(dropped), dropped_ids=dropped)
    return Result(pd.DataFrame(rows), meta)


def _trace_fact(m: Model, enc: EncodedSet, k: int, cols: list[int], nz: torch.Tensor, kinds: tuple[str, ...],
                sev: tuple[str, ...], window: int, answer: str, only_correct: bool, max_rows: int | None,
                progress: bool) -> list[dict[str, Any]] | None:
    """Every restoration of one fact; None when the fact is dropped (clean argmax is not the object)."""
    n_layers = m.info.n_layers
    rec = enc.prompts.records[k]
    item = enc.items[k]
    length = len(item)
    span = enc.spans["subject"][k]
    batch = make_batch(m, enc, [k])  # one prompt: no padding, padded columns = prompt positions
    need = [kd for kd in KINDS if kd in kinds or (kd == "resid" and sev)]
    names = [f"blocks.{layer}.{HOOKS[kd]}" for kd in need for layer in range(n_layers)]
    logits, clean = forward(m, batch, read=names)
    probs = logits[0].float().softmax(-1)
    pred = int(probs.argmax())
    target = int(enc.targets["target"][k]) if answer == "target" else pred
    if only_correct and pred != target:
        return None
    high = float(probs[target])
    samples = nz.shape[0]
    rep = batch.repeat(samples)
    base = embedding_noise(cols, nz)

    corrupted: dict[str, torch.Tensor] = {}
    if sev:  # first pass: the corrupted sublayer outputs that the severed restorations freeze
        snames = [f"blocks.{layer}.{HOOKS[s]}" for s in sev for layer in range(n_layers)]
        last = max(snames, key=lambda n: (int(n.split(".")[1]), n.endswith("mlp_out")))
        _, corrupted = forward(m, rep, [base], read=snames, logits=None, stop_after=last)

    # Each table row is a (kind, layer, lo, hi, t) key; identical restorations are run once (the window of
    # ``mlp``/``attn`` is clipped to the model, so near the ends several layers share it; severing nothing
    # above the last layer is the plain restoration), and a state before every noised token is clean in the
    # corrupted run, so it is not run at all: its IE is 0 exactly.
    variants: list[Intervention] = []
    index: dict[tuple, int] = {}
    keys: list[tuple[str, int, int, int, int, int]] = []  # (kind, layer, lo, hi, t, variant or -1)
    first_noised = min(cols)

    def add(key: tuple, make: Any, *args: Any) -> int:
        if t < first_noised:
            return -1
        if key not in index:
            index[key] = len(variants)
            variants.append(make(*args))
        return index[key]

    for t in range(length):
        for layer in range(n_layers):
            for kd in kinds:
                lo, hi = (layer, layer + 1) if kd == "resid" else window_layers(layer, window, n_layers)
                v = add((kd, lo, hi, t, None), _restoration, clean, kd, lo, hi, t)
                keys.append((kd, layer, lo, hi, t, v))
            for s in sev:
                frozen = (s, layer + 1, n_layers) if layer + 1 < n_layers else None  # nothing above L-1: plain
                v = add(("resid", layer, layer + 1, t, frozen), _severed, clean, corrupted, layer, t, s, n_layers)
                keys.append((f"resid_no_{s}", layer, layer, layer + 1, t, v))

    def reduce(lg: torch.Tensor | None, _store: dict) -> torch.Tensor:
        return lg.float().softmax(-1)[:, target]

    low_rows, restored = run_variants(m, rep, variants, reduce, base=base, max_rows=max_rows, progress=progress)
    low = float(low_rows.mean())
    tok = m.tokenizer
    target_text = rec.get("target") if answer == "target" else tok.decode([target])
    token_text = [tok.decode([i]) for i in item.ids]
    corrupted_set = set(cols)
    out = []
    for kd, layer, lo, hi, t, v in keys:
        pr = low if v < 0 else float(restored[v].mean())
        out.append({
            "prompt_id": rec["id"], "kind": kd, "layer": layer, "window_start": lo, "window_end": hi,
            "position": t, "token": token_text[t], "role": token_role(t, length, span, item.bos),
            "subject": span[0] <= t < span[1], "corrupted": t in corrupted_set, "restored_prob": pr,
            "indirect_effect": pr - low, "high": high, "low": low, "total_effect": high - low,
            "target": target_text, "target_id": target,
        })
    return out


def _restoration(clean: dict, kind: str, lo: int, hi: int, t: int) -> Intervention:
    """Restore ``kind``'s clean state at token t in layers [lo, hi)."""
    edits = tuple(_restore(f"blocks.{ly}.{HOOKS[kind]}", clean[f"blocks.{ly}.{HOOKS[kind]}"][0, t], t)
                  for ly in range(lo, hi))
    return Intervention(edits, f"restore {kind} L{lo}-{hi - 1} t{t}")


def _severed(clean: dict, corrupted: dict, layer: int, t: int, sub: str, n_layers: int) -> Intervention:
    """Restore the residual after block ``layer`` at token t, with ``sub``'s output at t frozen at its corrupted
    value (per row) in every later layer."""
    name = f"blocks.{layer}.hook_resid_post"
    edits = (_restore(name, clean[name][0, t], t),) + tuple(
        _restore(f"blocks.{ly}.{HOOKS[sub]}", corrupted[f"blocks.{ly}.{HOOKS[sub]}"][:, t], t)
        for ly in range(layer + 1, n_layers))
    return Intervention(edits, f"restore resid L{layer} t{t}, {sub} severed")


def _restore(name: str, value: torch.Tensor, column: int) -> Edit:
    """Set hook ``name`` at ``column`` to ``value`` ([d] for every row, or [rows, d] row by row)."""

    def apply(t: torch.Tensor, rows: slice) -> None:
        t[rows, column] = value.to(device=t.device, dtype=t.dtype)

    return Edit(name, apply)


# --- aggregates -------------------------------------------------------------------------------------------
def trace_summary(result: Result) -> pd.DataFrame:
    """ROME's summary: the indirect effect averaged over facts per kind x token role x layer.

    A fact contributes the mean over its tokens of that role (e.g. its middle subject tokens), then facts are
    averaged with equal weight. Columns: kind, role, layer, indirect_effect (mean), std (over facts), n_facts.
    Roles absent from a fact (e.g. no middle token) are simply absent from its contribution.
    """
    _require_trace(result)
    per_fact = (result.table.groupby(["kind", "role", "layer", "prompt_id"], sort=False)["indirect_effect"]
                .mean().reset_index())
    out = (per_fact.groupby(["kind", "role", "layer"], sort=False)["indirect_effect"]
           .agg(["mean", "std", "count"]).reset_index()
           .rename(columns={"mean": "indirect_effect", "count": "n_facts"}))
    role_order = {r: i for i, r in enumerate(ROLES)}
    kind_order = {k: i for i, k in enumerate(dict.fromkeys(result.table["kind"]))}
    return out.sort_values(["kind", "role", "layer"], key=lambda s: s.map(kind_order) if s.name == "kind" else
                           s.map(role_order) if s.name == "role" else s, kind="stable").reset_index(drop=True)


def trace_totals(result: Result) -> pd.DataFrame:
    """Per fact: high (clean P(o)), low (mean corrupted P(o)), total effect (high - low), and for each kind the
    largest indirect effect with its layer, position and role. Columns: prompt_id, target, high, low,
    total_effect, kind, best_layer, best_position, best_role, best_indirect_effect."""
    _require_trace(result)
    t = result.table
    best = t.loc[t.groupby(["prompt_id", "kind"], sort=False)["indirect_effect"].idxmax()]
    return best.rename(columns={"layer": "best_layer", "position": "best_position", "role": "best_role",
                                "indirect_effect": "best_indirect_effect"})[
        ["prompt_id", "target", "high", "low", "total_effect", "kind", "best_layer", "best_position", "best_role",
         "best_indirect_effect"]].reset_index(drop=True)


def _require_trace(result: Result) -> None:
    if not isinstance(result, Result) or result.method != "causal_trace":
        raise ParameterError("Expected the Result of interp.causal_trace.")
