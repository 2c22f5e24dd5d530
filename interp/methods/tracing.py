"""Causal tracing of factual recall (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", ROME,
arXiv 2202.05262), subject-focused and relation-focused (Liu et al. 2025, "Relation Also Knows", AAAI, arXiv
2408.15091).

For each fact (prompt, subject, target): run the prompt clean (P(o) = ``clean_target_prob``, ROME's "high"), then
``samples`` corrupted copies whose token embeddings at the corrupted tokens get Gaussian noise (mean corrupted
P(o) = ``corrupted_target_prob``, ROME's "low"); then restore one clean state in the corrupted copies and measure
P(o) again (``target_prob``). Indirect effect IE = target_prob - corrupted_target_prob; total effect =
clean_target_prob - corrupted_target_prob. Sites (names from :mod:`interp.activations.sites`): the residual stream after
block l at token t (``resid_post``), or the MLP / attention output at token t over a half-open window of layers
around l (``mlp_out`` / ``attn_out``); ``severed`` adds the ``resid_post`` restoration with the MLP (or attention)
output at that token frozen at its corrupted value in every later layer (rows with ``severed`` = that site).

All restorations of one fact run batched through :func:`interp.activations.variants.run_variants` with the noise as the
base intervention: the corrupted copies x restorations are rows of chunked forwards that start at the first
block a chunk restores, from the corrupted residual (exact; the per-restoration loop is the reference in the
tests). :func:`trace_summary` averages the indirect effects per site x layer x token role (ROME's summary) and
:func:`trace_totals` gives each fact's clean / corrupted probability and total effect. The per-layer relation
evidence at the last position lives in :mod:`interp.methods.relation_evidence`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..activations.hooks import Edit, Intervention, StopForward, hooked
from ..activations.interventions import NOISE_DRAWS, add_embedding_noise, gaussian_noise, rome_noise, set_edit
from ..activations.sites import EMBED, SUBLAYER_OUTPUTS, check_sites, depth, hook_name
from ..activations.variants import forward, run_variants
from ..errors import ParameterError, PromptError, check_choice, check_positive_float, check_positive_int
from ..model.loading import Model, as_model
from ..prompts import EncodedSet, as_prompt_set, encode, make_batch
from ..results.result import Result, concat_tables, make_meta
from . import metrics
from .registry import Schema, ShardPlan, register_method, shard_input

SITES = ("resid_post", "mlp_out", "attn_out")  # the states causal tracing restores (ROME's order)
SEVERABLE = SITES[1:]  # the sublayers a severed restoration freezes
assert set(SEVERABLE) == set(SUBLAYER_OUTPUTS)
CORRUPTIONS = ("subject", "relation")
NOISE_SCALES = ("subjects", "records")  # nu over the distinct subjects (interp), or over every record's (ROME)
ROLES = ("bos", "before subject", "first subject", "middle subject", "last subject", "first subsequent", "further",
         "last")
PAPER = ("Meng et al. 2022, Locating and Editing Factual Associations in GPT (ROME, causal tracing), arXiv "
         "2202.05262; Liu et al. 2025, Relation Also Knows (AAAI; relation-focused corruption), arXiv 2408.15091")
COST = ("per fact: 1 clean forward + 1 corrupted forward of `samples` rows + (len(sites) + len(severed)) x T' x L "
        "restorations of `samples` rows each (T' = tokens from the first corrupted one on), batched in chunks "
        "of max_rows rows that start at the first restored block (+1 corrupted forward with severed)")
# the columns a user metric adds (causal_trace(metric=...))
METRIC_COLUMNS = {"metric_value": "float", "clean_metric": "float", "corrupted_metric": "float"}
SCHEMA = Schema(
    keys=("prompt_id", "site", "severed", "layer", "position"), value="indirect_effect", unit="probability",
    sign="higher",
    columns={"prompt_id": "str", "site": "str", "severed": "str", "layer": "int", "window_start": "int",
             "window_end": "int", "position": "int", "token": "str", "role": "str", "in_subject": "bool",
             "corrupted": "bool", "target_prob": "float", "indirect_effect": "float", "clean_target_prob": "float",
             "corrupted_target_prob": "float", "total_effect": "float", "target_token": "str", "target_id": "int"},
    optional=METRIC_COLUMNS,
    units={"target_prob": "probability", "clean_target_prob": "probability", "corrupted_target_prob": "probability",
           "total_effect": "probability"},
    grid=("layer", "site"),
)


# --- small pieces, public because tests and other tools use them ------------------------------------------
def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, int]:
    """ROME's half-open layer window around ``layer``: [max(0, l - w//2), min(L, l + ceil(w/2))) (start included,
    end excluded); w = 10 -> [l-5, l+5)."""
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


def corrupted_positions(length: int, subject: tuple[int, int], bos: bool, corruption: str) -> list[int]:
    """The token positions that get noise: the subject's tokens (``corruption="subject"``), or every other token
    but BOS, the last included (``"relation"``)."""
    s, e = subject
    if corruption == "subject":
        return list(range(s, e))
    return [t for t in range(int(bos), length) if not s <= t < e]


def subject_embedding_std(model: Any, subjects: Sequence[str], *, weighting: str = "subjects") -> float:
    """nu: the std of the embedding elements (``hook_embed``: what the noise is added to) of the subjects, each
    tokenised alone with no special tokens (unbiased std over all elements).

    ``weighting="subjects"`` (causal_trace's default ``noise_scale``) counts each distinct subject once;
    ``"records"`` counts every record's subject, so a subject that several facts share counts as often: ROME's
    ``collect_embedding_std`` (github.com/kmeng01/rome, ``experiments/causal_trace.py``), which embeds
    ``[k["subject"] for k in knowns]``. (ROME tokenises with ``tokenizer.encode``, which also embeds any special
    token the tokenizer adds by itself: none for GPT-2, the models its code loads, or the organisms.)
    """
    check_choice("weighting", weighting, NOISE_SCALES)
    m = as_model(model)
    ids: list[int] = []
    for s in (dict.fromkeys(subjects) if weighting == "subjects" else subjects):
        ids.extend(m.tokenizer(s, add_special_tokens=False)["input_ids"])
    if not ids:
        raise PromptError("The subjects tokenise to no tokens; cannot measure the embedding std for the noise.")
    x = torch.tensor([ids], device=m.device)
    with torch.no_grad(), hooked(m, read=[EMBED], stop_after=EMBED) as store:
        try:
            m.bridge(x)
        except StopForward:
            pass
    return float(store[EMBED].float().std())


# --- the method -------------------------------------------------------------------------------------------
def _check_params(m: Model, corruption: Any, site_list: Any, window: Any, samples: Any, noise: Any, seed: Any,
                  severed: Any, target: Any, max_rows: Any, noise_scale: Any = "subjects",
                  noise_draws: Any = "torch") -> tuple[tuple[str, ...], tuple[str, ...]]:
    check_choice("corruption", corruption, CORRUPTIONS)
    _check_noise_scale(noise_scale)
    check_choice("noise_draws", noise_draws, NOISE_DRAWS)
    if noise_draws != "torch" and not isinstance(noise, (int, float)):
        raise ParameterError(f"noise_draws={noise_draws!r} chooses how noise is drawn, but noise is given as explicit "
                             "tensors, which are used as they are; give noise as a number, or drop noise_draws.")
    if target is not None and (not isinstance(target, str) or not target):
        raise ParameterError(f"target must be the name of a prompt field (or None: the model's own top-1 token); "
                             f"got {target!r}.")
    sev: tuple[str, ...] = () if severed is None else (severed,) if isinstance(severed, str) else tuple(severed)
    if sev:
        sev = tuple(check_sites(sev, SEVERABLE, model=m, name="severed"))
    if not isinstance(site_list, str) and not list(site_list) and sev:  # only the severed restorations
        chosen: tuple[str, ...] = ()
    else:
        chosen = tuple(check_sites(site_list, SITES, model=m, name="sites"))
    check_positive_int("window", window)
    check_positive_int("samples", samples)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed must be an integer; got {seed!r}.")
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
    return chosen, sev


def _check_noise_scale(noise_scale: Any) -> None:
    if isinstance(noise_scale, str):
        if noise_scale in NOISE_SCALES:
            return
    elif isinstance(noise_scale, (int, float)) and not isinstance(noise_scale, bool):
        check_positive_float("noise_scale", noise_scale)
        return
    raise ParameterError(f"noise_scale must be 'subjects' (nu over the distinct subjects), 'records' (over every "
                         f"record's subject, ROME's collect_embedding_std) or a positive number (nu itself); got "
                         f"{noise_scale!r}.")


def _embedding_unit(m: Model, ps: Any, noise_scale: str | float) -> float:
    """nu, the unit of the noise: measured on the prompt set's subjects, or given."""
    if isinstance(noise_scale, str):
        return subject_embedding_std(m, ps.column("subject"), weighting=noise_scale)
    return float(noise_scale)


def _check_noise_tensor(t: torch.Tensor, samples: int, d_model: int, where: str = "noise") -> None:
    if t.dim() != 3 or t.shape[0] != samples or t.shape[2] != d_model:
        raise ParameterError(
            f"{where} has shape {tuple(t.shape)}; an explicit noise tensor must be [samples={samples}, "
            f"n_corrupted_tokens, d_model={d_model}]."
        )
    if not torch.is_floating_point(t) or not torch.isfinite(t).all():
        raise ParameterError(f"{where} must be a finite floating-point tensor.")


def _noise_for(noise: Any, k: int, n: int, samples: int, d_model: int, scale: float | None, seed: int,
               pid: str, draws: str = "torch") -> torch.Tensor:
    if isinstance(noise, torch.Tensor):
        t = noise
    elif isinstance(noise, (list, tuple)):
        t = noise[k]
    elif draws == "rome":
        return rome_noise(samples, n, d_model, scale=float(scale), seed=1 + seed)
    else:
        return gaussian_noise(samples, n, d_model, scale=float(scale), seed=seed)
    if t.shape[1] != n:
        raise ParameterError(f"Prompt {pid!r}: the noise covers {t.shape[1]} tokens but {n} tokens are corrupted.")
    return t


def _panels(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (site, severed) pairs of a trace, in table order."""
    return list(dict.fromkeys(zip(table["site"], table["severed"])))


def _panel_title(site: str, severed: str) -> str:
    return f"{site}, {severed} severed" if severed else site


def causal_trace_figure(result: Result, prompt_id: str | None = None, view: str | None = None,
                        value: str = "indirect_effect", *, ci: float | None = None, n_boot: int = 1000,
                        seed: int = 0) -> Any:
    """ROME-style figures (Meng et al. 2022, Figure 1). ``view="heatmap"``: one fact (the first by default),
    tokens along x, layers up y (layer 0 at the bottom), one panel per site (and severed site), subject tokens
    marked with ``*``; ``value`` is any numeric column (``target_prob`` for the restored probability).
    ``view="roles"``: the indirect effect per layer averaged over the facts, one curve per token role, one panel
    per site; with ``ci`` (e.g. 0.95), error bars of the seeded bootstrap interval over facts (each fact's mean
    over its tokens of the role is one resampling unit, :meth:`interp.Result.aggregate`). ``view`` None: the
    heatmap, or the roles when ``ci`` is given; ``ci`` with the heatmap (one fact, no average) is a ParameterError."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..figures.viz import DIVERGING, SEQUENTIAL, axis_label, interval_error, interval_title

    view = view if view is not None else ("heatmap" if ci is None else "roles")
    check_choice("view", view, ("heatmap", "roles"))
    if ci is not None and view != "roles":
        raise ParameterError("ci= draws intervals over facts, which only view='roles' averages over; the heatmap "
                             "shows one fact.")
    table = result.table
    if table.empty:
        raise ParameterError("The trace has no rows (every fact was dropped): nothing to draw.")
    if value not in table.columns:
        raise ParameterError(f"value={value!r} is not a column of the trace; columns: {', '.join(table.columns)}.")
    panels = _panels(table)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[_panel_title(*p) for p in panels],
                        shared_yaxes=True, horizontal_spacing=0.04)
    corruption = result.meta.get("parameters", {}).get("corruption", "subject")
    n_facts = table["prompt_id"].nunique()
    unit = "probability"
    if view == "roles":
        summary = trace_summary(result)
        if ci is not None:
            summary = _with_fact_intervals(result, summary, ci, n_boot, seed)
        colours = dict(zip(ROLES, ("#999999", "#bbbbbb", "#1f77b4", "#17becf", "#d62728", "#2ca02c", "#9467bd",
                                   "#ff7f0e")))
        for c, (site, sev) in enumerate(panels, 1):
            part = summary[(summary["site"] == site) & (summary["severed"] == sev)]
            for role in [r for r in ROLES if r in set(part["role"])]:
                rows = part[part["role"] == role]
                fig.add_trace(go.Scatter(x=rows["layer"], y=rows["indirect_effect"], mode="lines+markers",
                                         name=role, legendgroup=role, showlegend=c == 1,
                                         line={"color": colours[role]},
                                         error_y=None if ci is None else interval_error(rows, "indirect_effect"),
                                         hovertemplate=f"{role}<br>layer %{{x}}<br>mean indirect effect "
                                                       "%{y:.4f} (probability)<extra></extra>"), row=1, col=c)
            fig.update_xaxes(title_text="layer", row=1, col=c)
            fig.update_yaxes(title_text=axis_label("mean indirect effect", unit), row=1, col=c)
        over = f"mean over {n_facts} fact{'s' if n_facts != 1 else ''}"
        if ci is not None:
            over += "; bars: " + interval_title(ci, n_facts, "facts")
        fig.update_layout(title=f"Indirect effect by token role ({corruption} corrupted)<br>{over}", autosize=True)
        return fig
    pid = prompt_id if prompt_id is not None else table["prompt_id"].iloc[0]
    one = table[table["prompt_id"] == str(pid)]
    if one.empty:
        raise ParameterError(f"prompt_id={pid!r} is not in the result.")
    tokens = one.drop_duplicates("position").sort_values("position")
    labels = {p: f"{p}: {tok!r}" + ("*" if s else "") for p, tok, s in zip(tokens["position"], tokens["token"],
                                                                           tokens["in_subject"])}
    values = one[value].astype(float)
    diverging = value == "indirect_effect" or bool(values.min() < 0 < values.max())
    vmax = float(values.abs().max()) or 1.0
    scale = {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -vmax, "zmax": vmax} if diverging else \
        {"colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": vmax}
    bar = axis_label(value.replace("_", " "), unit)
    for c, (site, sev) in enumerate(panels, 1):
        grid = one[(one["site"] == site) & (one["severed"] == sev)].pivot_table(index="layer", columns="position",
                                                                                values=value)
        fig.add_trace(go.Heatmap(z=grid.values, x=[labels[p] for p in grid.columns], y=list(grid.index), **scale,
                                 showscale=c == len(panels), colorbar={"title": {"text": bar}},
                                 hovertemplate="token %{x}<br>layer %{y}<br>" + value.replace("_", " ")
                                 + " %{z:.4f} (probability)<extra>" + _panel_title(site, sev) + "</extra>"),
                      row=1, col=c)
        fig.update_xaxes(title_text="token (* = subject)", row=1, col=c)
        fig.update_yaxes(title_text="layer", row=1, col=c)
    r0 = one.iloc[0]
    name = str(pid) if len(str(pid)) <= 40 else str(pid)[:37] + "..."
    fig.update_layout(
        title=f"Causal trace of {name!r} (1 of {n_facts} facts; {corruption} corrupted)<br>target "
              f"{r0['target_token']!r}: clean P {r0['clean_target_prob']:.3f}, corrupted P "
              f"{r0['corrupted_target_prob']:.3f}",
        autosize=True,
    )
    return fig


def _trace_prepare(m: Model, ps: Any, params: dict) -> dict:
    """Fix the noise scale once, from every subject of the set (a shard measuring its own subjects would draw
    different noise), and let a shard keep none of its facts (the merge checks the whole set). Both are shard
    inputs (``subject_std``, ``allow_none_kept``), read with :func:`interp.methods.registry.shard_input`."""
    noise = params.get("noise", 3.0)
    noise_scale = params.get("noise_scale", "subjects")
    _check_noise_scale(noise_scale)
    if isinstance(noise, (list, tuple)):
        raise ParameterError("noise given as one tensor per prompt cannot be split into shards; give a number or "
                             "one tensor for every prompt, or run causal_trace without shards.")
    out = {**params, "allow_none_kept": True}
    if isinstance(noise, (int, float)):
        check_positive_float("noise", noise)
        out["subject_std"] = _embedding_unit(m, ps, noise_scale)
    return out


def _trace_merge(parts: list[Result], meta: dict, _params: dict) -> Result:
    table = concat_tables(parts)
    kept = sum(p.meta["n_kept"] for p in parts)
    dropped = [i for p in parts for i in p.meta["dropped_ids"]]
    if kept == 0:
        raise PromptError(f"None of the {len(dropped)} facts is predicted by the model (clean argmax != the target's "
                          "first token), so there is nothing to trace.")
    return Result(table, {**meta, "n_kept": kept, "n_dropped": len(dropped), "dropped_ids": dropped})


@register_method("causal_trace", paper=PAPER, cost=COST, schema=SCHEMA, inputs="prompts", family="tracing",
                 figure=causal_trace_figure, shards=ShardPlan(prepare=_trace_prepare, merge=_trace_merge),
                 fields=("subject", "target"), organism="dense", corpus="factual",
                 example={"samples": 2, "window": 2, "sites": ("resid_post", "mlp_out"), "only_correct": False})
def causal_trace(
    model: Any,
    prompts: Any,
    *,
    corruption: str = "subject",
    sites: Sequence[str] = SITES,
    window: int = 10,
    samples: int = 10,
    noise: float | torch.Tensor | Sequence[torch.Tensor] = 3.0,
    noise_scale: str | float = "subjects",
    noise_draws: str = "torch",
    seed: int = 0,
    severed: str | Sequence[str] | None = None,
    target: str | None = "target",
    only_correct: bool = True,
    metric: str | metrics.MetricFn | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> Result:
    """Causal tracing (ROME, arXiv 2202.05262; relation-focused: Liu et al. 2025, arXiv 2408.15091): the indirect
    effect on P(target) of restoring each clean state, one at a time, in runs whose embeddings got noise.

    Prompts carry ``subject`` (a whole-token substring of the prompt) and the ``target`` field (the object; its
    first token o is scored). A fact is kept only if the model's clean top-1 token is o (``only_correct``,
    ROME); the others are dropped and counted in ``meta`` (``n_kept``, ``n_dropped``, ``dropped_ids``).

    Args:
        corruption: ``"subject"`` adds noise to the subject's token embeddings (ROME); ``"relation"`` to every
            other token except BOS, the last token included (Liu et al.).
        sites: the states restored, names from :mod:`interp.activations.sites`: ``"resid_post"`` (the residual
            after block l
            at token t), ``"mlp_out"`` / ``"attn_out"`` (the sublayer's output at token t in every layer of the
            half-open window ``window_layers(l, window, L)``, ROME: [l-5, l+5)).
        window: width of that window, in layers (ROME: 10).
        samples: corrupted copies per fact (ROME: 10).
        noise: a multiple of nu (``noise_scale``; ROME: 3): every fact gets N(0, (noise nu)^2) noise on each
            corrupted token's embedding, the same draws for every restoration of the fact. Or an explicit tensor
            [samples, n_corrupted_tokens, d_model] (or a list of them, one per prompt) to match another tool
            exactly (added in the wider of its dtype and the model's, rounded once).
        noise_scale: nu, the unit of ``noise``: ``"subjects"`` (default) the std of the embedding elements of the
            prompt set's distinct subjects, each tokenised alone; ``"records"`` the same over every record's
            subject, so a subject shared by several facts counts as often (ROME's ``collect_embedding_std``; on a
            set whose subjects repeat the two differ); or a positive number, nu itself (e.g. ``noise=1.0,
            noise_scale=0.1`` is ROME's ``--noise_level 0.1``). See :func:`subject_embedding_std`.
        noise_draws: how the noise is drawn: ``"torch"`` (default) ``torch.Generator().manual_seed(seed)``, one
            [samples, n, d_model] float32 draw per fact; ``"rome"`` ROME's own draws
            (github.com/kmeng01/rome, ``experiments/causal_trace.py``, ``trace_with_patch``): a fresh
            ``numpy.random.RandomState(1 + seed)`` per fact (seed 0: ROME's ``RandomState(1)``), one float64
            ``randn(samples, n, d_model)``, added in float64 (:func:`interp.activations.interventions.rome_noise`).
            With ``noise_scale="records"`` and ``load_model(..., prepend_bos=False)`` on GPT-2 this is ROME's
            recipe draw for draw. The severed restorations reuse each fact's draws in both passes (ROME's
            ``trace_with_repatch`` draws its second pass from the already advanced generator: docs/peers.md).
        seed: the seed of the noise draws (see ``noise_draws``).
        severed: ``"mlp_out"`` and / or ``"attn_out"``: also restore ``resid_post`` with that sublayer's output at
            token t frozen at its corrupted value (per sample) in every layer above l (rows with ``severed`` set).
        target: the prompt field whose first token is traced; None traces the model's own clean top-1 token.
        only_correct: keep only facts whose clean top-1 token is the target's first token.
        metric: also score every run with this metric of the last position's logits and the target (a name from
            :data:`interp.methods.metrics.METRICS` without a contrast token, e.g. ``"logprob"``, or a callable
            ``f(logits [B, vocab], target [B], None) -> [B]``); the table then gains ``metric_value`` (mean over
            the corrupted copies with the restoration), ``clean_metric`` and ``corrupted_metric``, in
            ``meta["metric_unit"]``. None: ROME's probability only.
        max_rows: at most this many rows (corrupted copies x restorations) per forward; None: from a memory budget.
        progress: a progress bar over the facts.

    Returns:
        A Result, one row per kept fact x site x severed x layer x position (schema ``SCHEMA``; value
        ``indirect_effect``, in probability, higher matters more): prompt_id, site, severed ("" or the frozen
        sublayer), layer, window_start / window_end (the half-open window of layers restored), position
        (0-based, BOS included), token, role (bos, before subject, first / middle / last subject, first
        subsequent, further, last), in_subject, corrupted, target_prob (mean P(o) over the corrupted copies
        with the restoration), indirect_effect (target_prob - corrupted_target_prob), clean_target_prob (ROME's
        high), corrupted_target_prob (ROME's low), total_effect (clean - corrupted), target_token, target_id.
        ``meta["noise_std"]`` is the noise std used, noise x nu (None with explicit tensors). With ``metric``: also
        metric_value, clean_metric, corrupted_metric.

    Cost per fact: 1 clean forward, 1 corrupted forward of ``samples`` rows, and (len(sites) + len(severed)) x
    T' x L restorations of ``samples`` rows each (T' = tokens from the first corrupted one on: a state before
    every corrupted token is already clean, so its IE is 0 exactly and it is not run), in chunked batches
    starting at the first restored block (+1 corrupted forward when severed).

    Example:
        >>> interp.causal_trace(model, facts, samples=3, window=2, sites=("resid_post", "mlp_out")).figure()
    """
    m = as_model(model)
    ps = as_prompt_set(prompts)
    chosen, sev = _check_params(m, corruption, sites, window, samples, noise, seed, severed, target, max_rows,
                                noise_scale, noise_draws)
    if metric is not None:
        metrics.check_metric(metric, vocab_size=m.info.vocab_size, device=m.device, dtype=m.dtype)
    subject_std = shard_input("subject_std")  # fixed over the whole set by a sharded run
    allow_none_kept = bool(shard_input("allow_none_kept", False))
    if subject_std is not None:
        check_positive_float("subject_std", subject_std)
    if isinstance(noise, (list, tuple)) and len(noise) != len(ps):
        raise ParameterError(f"noise is a list of {len(noise)} tensors but there are {len(ps)} prompts.")
    enc = encode(m, ps, targets=[target] if target is not None else [], spans=["subject"])
    d_model = m.info.d_model
    plans = []
    for k, (item, rec) in enumerate(zip(enc.items, ps.records)):
        span = enc.spans["subject"][k]
        cols = corrupted_positions(len(item), span, item.bos, corruption)
        if not cols:
            raise PromptError(f"Prompt {rec['id']!r}: corruption={corruption!r} leaves no token to corrupt (the "
                              "prompt is all subject).")
        if not isinstance(noise, (int, float)):
            _noise_for(noise, k, len(cols), samples, d_model, None, seed, rec["id"])  # shape check before compute
        plans.append(cols)
    scale = None
    if isinstance(noise, (int, float)):
        nu = _embedding_unit(m, ps, noise_scale) if subject_std is None else float(subject_std)
        scale = float(noise) * nu

    rows: list[dict[str, Any]] = []
    dropped: list[str] = []
    for k, rec in enumerate(tqdm(ps.records, desc="causal_trace", disable=not progress)):
        cols = plans[k]
        nz = _noise_for(noise, k, len(cols), samples, d_model, scale, seed, rec["id"], noise_draws)
        fact = _trace_fact(m, enc, k, cols, nz, chosen, sev, window, target, only_correct, max_rows, metric)
        if fact is None:
            dropped.append(rec["id"])
            continue
        rows.extend(fact)
    if not rows and not allow_none_kept:
        raise PromptError(
            f"None of the {len(ps)} facts is predicted by the model (clean argmax != the target's first token), so "
            "there is nothing to trace; check the targets (leading space?) or pass only_correct=False."
        )
    meta = make_meta(model=m, prompts=ps, noise_std=scale, n_kept=len(ps) - len(dropped), n_dropped=len(dropped),
                     dropped_ids=dropped)
    columns = list(SCHEMA.columns)
    if metric is not None:
        columns += list(METRIC_COLUMNS)
        meta.update(metric=metrics.metric_label(metric), metric_unit=metrics.unit_of(metric))
    return Result(pd.DataFrame(rows, columns=columns), meta)


def _trace_fact(m: Model, enc: EncodedSet, k: int, cols: list[int], nz: torch.Tensor, chosen: tuple[str, ...],
                sev: tuple[str, ...], window: int, target: str | None, only_correct: bool,
                max_rows: int | None, metric: Any = None) -> list[dict[str, Any]] | None:
    """Every restoration of one fact; None when the fact is dropped (clean argmax is not the target)."""
    n_layers = m.info.n_layers
    rec = enc.prompts.records[k]
    item = enc.items[k]
    length = len(item)
    span = enc.spans["subject"][k]
    batch = make_batch(m, enc, [k])  # one prompt: no padding, padded columns = prompt positions
    need = [s for s in SITES if s in chosen or (s == "resid_post" and sev)]
    names = [hook_name(s, layer) for s in need for layer in range(n_layers)]
    logits, clean = forward(m, batch, read=names)
    pred = int(logits[0].argmax())
    target_id = int(enc.targets[target][k]) if target is not None else pred
    if only_correct and pred != target_id:
        return None
    tid = torch.tensor([target_id], device=logits.device)
    clean_prob = float(metrics.prob(logits, tid)[0])
    pid = [rec["id"]]
    clean_metric = None if metric is None else float(metrics.score(metric, logits, tid, None, prompt_ids=pid)[0])
    samples = nz.shape[0]
    rep = batch.repeat(samples)
    base = add_embedding_noise(None, nz, columns=cols)

    corrupted: dict[str, torch.Tensor] = {}
    if sev:  # first pass: the corrupted sublayer outputs that the severed restorations freeze
        snames = [hook_name(s, layer) for s in sev for layer in range(n_layers)]
        last = hook_name(max(sev, key=lambda s: depth(s, 0)), n_layers - 1)
        _, corrupted = forward(m, rep, [base], read=snames, logits=None, stop_after=last)

    # Each table row is a (site, severed, layer, lo, hi, t) key; identical restorations are run once (the window
    # of mlp_out / attn_out is clipped to the model, so near the ends several layers share it; severing nothing
    # above the last layer is the plain restoration), and a state before every noised token is clean in the
    # corrupted run, so it is not run at all: its IE is 0 exactly.
    variants: list[Intervention] = []
    index: dict[tuple, int] = {}
    keys: list[tuple[str, str, int, int, int, int, int]] = []  # (site, severed, layer, lo, hi, t, variant or -1)
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
            for site in chosen:
                lo, hi = (layer, layer + 1) if site == "resid_post" else window_layers(layer, window, n_layers)
                v = add((site, lo, hi, t, None), _restoration, clean, site, lo, hi, t)
                keys.append((site, "", layer, lo, hi, t, v))
            for s in sev:
                frozen = (s, layer + 1, n_layers) if layer + 1 < n_layers else None  # nothing above L-1: plain
                v = add(("resid_post", layer, layer + 1, t, frozen), _severed, clean, corrupted, layer, t, s,
                        n_layers)
                keys.append(("resid_post", s, layer, layer, layer + 1, t, v))

    def reduce(lg: torch.Tensor | None, _store: dict) -> torch.Tensor:
        tids = tid.expand(lg.shape[0])
        p = metrics.prob(lg, tids)
        if metric is None:
            return p
        return torch.stack([p, metrics.score(metric, lg, tids, None, prompt_ids=pid).to(p.dtype)], -1)

    low_rows, restored = run_variants(m, rep, variants, reduce, base=base, max_rows=max_rows)
    if metric is not None:  # (prob, metric) per row: split the two
        low_metric = float(low_rows[:, 1].mean())
        restored_metric = [r[:, 1] for r in restored]
        low_rows, restored = low_rows[:, 0], [r[:, 0] for r in restored]
    low = float(low_rows.mean())
    tok = m.tokenizer
    target_token = tok.decode([target_id])
    token_text = [tok.decode([i]) for i in item.ids]
    corrupted_set = set(cols)
    out = []
    for site, severed, layer, lo, hi, t, v in keys:
        pr = low if v < 0 else float(restored[v].mean())
        extra = {} if metric is None else {
            "metric_value": low_metric if v < 0 else float(restored_metric[v].mean()),
            "clean_metric": clean_metric, "corrupted_metric": low_metric}
        out.append({
            "prompt_id": rec["id"], "site": site, "severed": severed, "layer": layer, "window_start": lo,
            "window_end": hi, "position": t, "token": token_text[t], "role": token_role(t, length, span, item.bos),
            "in_subject": span[0] <= t < span[1], "corrupted": t in corrupted_set, "target_prob": pr,
            "indirect_effect": pr - low, "clean_target_prob": clean_prob, "corrupted_target_prob": low,
            "total_effect": clean_prob - low, "target_token": target_token, "target_id": target_id, **extra,
        })
    return out


def _restoration(clean: dict, site: str, lo: int, hi: int, t: int) -> Intervention:
    """Restore ``site``'s clean state at token t in layers [lo, hi)."""
    edits = tuple(_restore(hook_name(site, ly), clean[hook_name(site, ly)][0, t], t) for ly in range(lo, hi))
    return Intervention(edits, f"restore {site} L{lo}-{hi - 1} t{t}")


def _severed(clean: dict, corrupted: dict, layer: int, t: int, sub: str, n_layers: int) -> Intervention:
    """Restore the residual after block ``layer`` at token t, with ``sub``'s output at t frozen at its corrupted
    value (per row) in every later layer."""
    name = hook_name("resid_post", layer)
    edits = (_restore(name, clean[name][0, t], t),) + tuple(
        _restore(hook_name(sub, ly), corrupted[hook_name(sub, ly)][:, t], t) for ly in range(layer + 1, n_layers))
    return Intervention(edits, f"restore resid_post L{layer} t{t}, {sub} severed")


def _restore(name: str, value: torch.Tensor, column: int) -> Edit:
    """Set hook ``name`` at ``column`` to ``value`` ([d] for every row, or [rows, d] row by row)."""
    return set_edit(name, value, column)


# --- aggregates -------------------------------------------------------------------------------------------
ROLE_KEYS = ["site", "severed", "role", "layer"]


def _role_means_per_fact(result: Result) -> pd.DataFrame:
    """Each fact's mean indirect effect over its tokens of each role, per site x severed x role x layer: the unit
    that :func:`trace_summary` averages and the roles figure's intervals resample."""
    return result.table.groupby([*ROLE_KEYS, "prompt_id"], sort=False)["indirect_effect"].mean().reset_index()


def trace_summary(result: Result) -> pd.DataFrame:
    """ROME's summary: the indirect effect averaged over facts per site x severed x token role x layer.

    A fact contributes the mean over its tokens of that role (e.g. its middle subject tokens), then facts are
    averaged with equal weight. Columns: site, severed, role, layer, indirect_effect (mean, probability), std
    (over facts), n_facts. Roles absent from a fact (e.g. no middle token) are simply absent from its
    contribution.
    """
    _require_trace(result)
    by = ROLE_KEYS
    per_fact = _role_means_per_fact(result)
    out = (per_fact.groupby(by, sort=False)["indirect_effect"]
           .agg(["mean", "std", "count"]).reset_index()
           .rename(columns={"mean": "indirect_effect", "count": "n_facts"}))
    role_order = {r: i for i, r in enumerate(ROLES)}
    panel_order = {p: i for i, p in enumerate(_panels(result.table))}
    out["_panel"] = [panel_order[p] for p in zip(out["site"], out["severed"])]
    out["_role"] = out["role"].map(role_order)
    return (out.sort_values(["_panel", "_role", "layer"], kind="stable").drop(columns=["_panel", "_role"])
            .reset_index(drop=True))


def _with_fact_intervals(result: Result, summary: pd.DataFrame, ci: float, n_boot: int, seed: int) -> pd.DataFrame:
    """``summary`` (:func:`trace_summary`) with indirect_effect_ci_low / _ci_high: the bootstrap interval over facts
    of each site x severed x role x layer mean (a fact's mean over its tokens of the role, as the summary takes)."""
    by = ROLE_KEYS
    agg = Result(_role_means_per_fact(result), {}).aggregate(by, value="indirect_effect", ci=ci, n_boot=n_boot,
                                                             seed=seed).table
    cols = ["indirect_effect_ci_low", "indirect_effect_ci_high"]
    return summary.merge(agg[[*by, *cols]], on=by, how="left", validate="one_to_one")


def trace_totals(result: Result) -> pd.DataFrame:
    """Per fact: the clean and corrupted P(target), the total effect, and for each site (and severed site) the
    largest indirect effect with its layer, position and role. Columns: prompt_id, target_token,
    clean_target_prob, corrupted_target_prob, total_effect, site, severed, best_layer, best_position, best_role,
    best_indirect_effect."""
    _require_trace(result)
    t = result.table
    best = t.loc[t.groupby(["prompt_id", "site", "severed"], sort=False)["indirect_effect"].idxmax()]
    return best.rename(columns={"layer": "best_layer", "position": "best_position", "role": "best_role",
                                "indirect_effect": "best_indirect_effect"})[
        ["prompt_id", "target_token", "clean_target_prob", "corrupted_target_prob", "total_effect", "site",
         "severed", "best_layer", "best_position", "best_role", "best_indirect_effect"]].reset_index(drop=True)


def _require_trace(result: Result) -> None:
    if not isinstance(result, Result) or result.method != "causal_trace":
        raise ParameterError("Expected the Result of interp.causal_trace.")
