"""Logit lens and tuned lens: decode every layer's residual stream (and, if asked, each sublayer's output) into a
next-token distribution, with named targets' probability / logit / rank, KL to the model's own distribution and
entropy; dataset aggregates (top-1 accuracy and MRR per layer per target) and the tuned lens's trained
translators.

Papers: nostalgebraist, "interpreting GPT: the logit lens" (LessWrong, 2020); Belrose et al., "Eliciting Latent
Predictions from Transformers with the Tuned Lens" (arXiv 2303.08112, 2023).

Two normalisation conventions, not interchangeable (see :mod:`interp.decode`):

* ``norm="recompute"``: every decoded vector goes through the final norm afresh, ``W_U . LN_f(h)`` (the "true"
  logit lens of the tuned-lens library). A sublayer output (``attn_out`` / ``mlp_out``) is normalised on its own:
  it is read as if it were the whole residual, so only its direction matters.
* ``norm="frozen"``: every decoded vector (residuals and sublayer outputs alike) is divided by the final norm's
  scale of the *real final residual* at that position, then the norm's weight (and bias, for LayerNorm) and the
  unembedding are applied (direct-logit-attribution style). A sublayer output is then read at the scale the
  model really uses; with no norm bias and no soft-cap the logits are linear in the vector, so the frozen logits
  of ``attn_out`` + ``mlp_out`` of a layer add up to those of ``resid_post - resid_pre``.

In both modes the last layer's ``resid_post`` decodes to the model's own logits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..decode import NORM_MODES, decode, final_norm_module, norm_scale, unembed
from ..errors import ParameterError, PromptError, check_choice, check_positive_float, check_positive_int
from ..model import Model, as_model
from ..prompts import PromptSet, as_prompt_set, batches, encode
from ..registry import register_method
from ..results import Result, make_meta
from ..variants import forward
from .lens_figures import lens_curves, lens_figure, lens_heatmap

__all__ = [
    "LensResult", "SITE_KINDS", "SITE_PRESETS", "TunedLens", "lens_curves", "lens_heatmap", "lens_summary",
    "lens_takeover", "logit_lens", "train_tuned_lens",
]

SITE_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
SITE_PRESETS: dict[str, tuple[str, ...]] = {
    "resid_post": ("resid_post",),
    "resid_pre": ("resid_pre",),
    "sublayers": ("attn_out", "mlp_out", "resid_post"),
}
# depth = layer + this: the number of blocks (fractionally, sublayers) applied to the vector
_DEPTH = {"resid_pre": 0.0, "attn_out": 0.25, "resid_mid": 0.5, "mlp_out": 0.75, "resid_post": 1.0}
_RESIDUAL_SITES = ("resid_pre", "resid_mid", "resid_post")
_FINAL_NORMED = "ln_final.hook_out"
_LN2 = math.log(2.0)
POSITION_MODES = ("last", "all")


def _hook(kind: str, layer: int) -> str:
    return f"blocks.{layer}.hook_{kind}"


def resolve_sites(sites: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name ("resid_post", "resid_pre", "sublayers"), one site kind, or a list of site kinds ->
    the site kinds in depth order."""
    if isinstance(sites, str):
        if sites in SITE_PRESETS:
            return SITE_PRESETS[sites]
        items = [sites]
    elif isinstance(sites, Sequence) and sites and all(isinstance(s, str) for s in sites):
        items = list(sites)
    else:
        raise ParameterError(
            f"sites={sites!r} must be one of {', '.join(map(repr, SITE_PRESETS))} or a list of site kinds "
            f"({', '.join(SITE_KINDS)})."
        )
    for s in items:
        if s not in SITE_KINDS:
            raise ParameterError(
                f"Unknown site {s!r} in sites={sites!r}: presets are {', '.join(map(repr, SITE_PRESETS))}, site "
                f"kinds are {', '.join(map(repr, SITE_KINDS))}."
            )
    return tuple(sorted(dict.fromkeys(items), key=_DEPTH.__getitem__))


# --- the tuned lens ---------------------------------------------------------------------------------------
class TunedLens(torch.nn.Module):
    """One affine translator per layer, ``T_l(h) = h + A_l h + b_l`` (A, b zero at init: the identity), applied to
    the residual at ``site`` before the (frozen) final norm and unembedding. Belrose et al. 2023.

    ``info`` holds the model's name and shape, the training parameters and the per-step training loss.
    """

    def __init__(self, n_layers: int, d_model: int, *, site: str = "resid_post", info: dict | None = None):
        super().__init__()
        check_positive_int("n_layers", n_layers)
        check_positive_int("d_model", d_model)
        if site not in _RESIDUAL_SITES:
            raise ParameterError(f"A tuned lens translates a residual site ({', '.join(_RESIDUAL_SITES)}); "
                                 f"got site={site!r}.")
        self.n_layers, self.d_model, self.site = int(n_layers), int(d_model), site
        self.weight = torch.nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))
        self.info: dict[str, Any] = dict(info or {})

    @classmethod
    def identity(cls, model: Any, *, site: str = "resid_post") -> TunedLens:
        """Zero translators for ``model`` (decodes exactly like the logit lens)."""
        m = as_model(model)
        lens = cls(m.info.n_layers, m.info.d_model, site=site, info={"model": m.name})
        return lens.to(m.device)

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """``h + A_l h + b_l`` for vectors ``h`` [..., d_model] of layer ``layer`` (same dtype as ``h``)."""
        x = h.to(self.weight.dtype)
        a, b = self.weight[layer].to(x.device), self.bias[layer].to(x.device)
        return (x + torch.nn.functional.linear(x, a, b)).to(h.dtype)

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:  # nn.Module protocol
        return self.translate(h, layer)

    def check_model(self, model: Any) -> None:
        """Raise a ParameterError unless the lens fits the model's layer count and width."""
        i = as_model(model).info
        if (i.n_layers, i.d_model) != (self.n_layers, self.d_model):
            raise ParameterError(
                f"lens: this tuned lens has {self.n_layers} layers x d_model {self.d_model} (trained on "
                f"{self.info.get('model', '?')!r}), the model has {i.n_layers} x {i.d_model}."
            )

    def save(self, directory: str | Path) -> Path:
        """Write ``translators.safetensors`` and ``config.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()},
                  str(directory / "translators.safetensors"))
        config = {"n_layers": self.n_layers, "d_model": self.d_model, "site": self.site, "info": self.info}
        (directory / "config.json").write_text(json.dumps(config, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = None) -> TunedLens:
        """Read a lens written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").exists() or not (directory / "translators.safetensors").exists():
            raise ParameterError(f"{str(directory)!r} holds no tuned lens (config.json / translators.safetensors).")
        config = json.loads((directory / "config.json").read_text())
        lens = cls(config["n_layers"], config["d_model"], site=config["site"], info=config.get("info", {}))
        tensors = load_file(str(directory / "translators.safetensors"))
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"])
            lens.bias.copy_(tensors["bias"])
        return lens.to(device) if device is not None else lens

    def extra_repr(self) -> str:
        steps = self.info.get("train", {}).get("steps", 0)
        return f"site={self.site!r}, n_layers={self.n_layers}, d_model={self.d_model}, trained_steps={steps}"


# --- reading the residuals --------------------------------------------------------------------------------
def _selector(batch: Any, positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the positions to decode, in row-major order (pads never selected)."""
    bsz, width = batch.size, batch.width
    if positions == "last":
        return torch.arange(bsz), torch.full((bsz,), width - 1, dtype=torch.long)
    rows, cols = batch.attention_mask.cpu().bool().nonzero(as_tuple=True)
    return rows, cols


def _read(m: Model, batch: Any, names: list[str], rows: torch.Tensor, cols: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward of the batch (stopped after the final norm) keeping ``names`` at the selected positions
    ([N, d_model] each), plus the final norm's output there."""
    r, c = rows.to(m.device), cols.to(m.device)
    bsz, width = batch.size, batch.width

    def select(_name: str, value: torch.Tensor) -> torch.Tensor:
        if value.dim() == 2 and value.shape[0] == bsz * width:  # a hook that flattens tokens
            value = value.reshape(bsz, width, -1)
        return value[r, c]

    read = list(dict.fromkeys([*names, _FINAL_NORMED]))
    _, store = forward(m, batch, (), read=read, read_fn=select, logits=None, stop_after=_FINAL_NORMED)
    return store


# --- the logit lens ---------------------------------------------------------------------------------------
class LensResult(Result):
    """A logit-lens Result; :meth:`aggregate` gives the per-layer dataset summary (see :func:`lens_summary`)."""

    def aggregate(self, *, positions: str = "last") -> Result:
        return lens_summary(self, positions=positions)


def _token_strings(tokenizer: Any, cache: dict[int, str], ids: np.ndarray) -> np.ndarray:
    flat = ids.reshape(-1)
    for t in np.unique(flat):
        if int(t) not in cache:
            cache[int(t)] = tokenizer.decode([int(t)])
    return np.array([cache[int(t)] for t in flat], dtype=object).reshape(ids.shape)


def _stats(logits: torch.Tensor, logp_final: torch.Tensor, targets: dict[str, torch.Tensor], top_k: int,
           next_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = logits.float()
    logp = logits.log_softmax(-1)
    p = logp.exp()
    out: dict[str, torch.Tensor] = {}
    out["entropy_bits"] = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1) / _LN2
    p_final = logp_final.exp()
    kl = torch.where(p_final > 0, p_final * (logp_final - logp), torch.zeros_like(p_final)).sum(-1)
    out["kl_bits"] = kl / _LN2
    known = next_ids >= 0
    ce = -logp.gather(1, next_ids.clamp(min=0)[:, None])[:, 0] / _LN2
    out["ce_bits"] = torch.where(known, ce, torch.full_like(ce, float("nan")))
    top = logp.topk(top_k, dim=-1)
    out["top_ids"], out["top_probs"] = top.indices, top.values.exp()
    for f, ids in targets.items():
        lt = logits.gather(1, ids[:, None])
        out[f"{f}_logit"] = lt[:, 0]
        out[f"{f}_prob"] = logp.gather(1, ids[:, None])[:, 0].exp()
        out[f"{f}_rank"] = (logits > lt).sum(-1) + 1
    return out


def _next_ids(batch: Any, rows: torch.Tensor, cols: torch.Tensor, last_target: torch.Tensor | None) -> torch.Tensor:
    """The actual next token at each selected position: the next prompt token, or at the last position the first
    target field's token (-1 when unknown)."""
    ids = batch.input_ids.cpu()
    nxt = ids[rows, (cols + 1).clamp(max=batch.width - 1)]
    last = cols == batch.width - 1
    fill = last_target if last_target is not None else torch.full_like(nxt, -1)
    return torch.where(last, fill, nxt)


def _check_targets(ps: PromptSet, targets: str | Sequence[str] | None) -> tuple[str, ...]:
    if targets is None:
        return ("target",) if "target" in ps.fields else ()
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, Sequence) or not all(isinstance(t, str) for t in targets):
        raise ParameterError(f"targets={targets!r} must be a list of field names, e.g. ('target',) or ('y_t', 'y_s1').")
    for t in targets:
        if t not in ps.fields:
            raise PromptError(
                f"targets: the prompt set has no field {t!r} (its fields: {', '.join(ps.fields)}); pass "
                "targets=() to decode without targets."
            )
    return tuple(dict.fromkeys(targets))


@register_method(
    "logit_lens",
    paper="nostalgebraist 2020 (logit lens); Belrose et al. 2023, arXiv 2303.08112 (tuned lens)",
    cost="1 forward per batch (stopped after the final norm) + 1 unembedding per decoded site and layer of the "
         "selected positions only",
    figure=lens_figure,
    family="lens",
)
def logit_lens(
    model: Any,
    prompts: Any,
    *,
    sites: str | Sequence[str] = "resid_post",
    norm: str = "recompute",
    positions: str = "last",
    targets: str | Sequence[str] | None = None,
    top_k: int = 10,
    lens: TunedLens | None = None,
    batch_size: int = 16,
) -> LensResult:
    """Decode each layer's residual (and, with ``sites="sublayers"``, each attention and MLP output) into a
    next-token distribution, at the last real token or at every token.

    ``sites``: "resid_post" (default), "resid_pre", "sublayers" (attn_out, mlp_out and resid_post of every
    layer), or a list of kinds among resid_pre, attn_out, resid_mid, mlp_out, resid_post. ``norm``: "recompute"
    or "frozen" (see the module docstring). ``targets``: fields of the prompts whose first token is scored
    (the token after the prompt in prompt + field); default: ("target",) when the prompts have a target field,
    else none. ``lens``: a :class:`TunedLens` from :func:`train_tuned_lens` (its site only); its translator
    is applied before decoding.

    Table (a :class:`LensResult`): one row per prompt x site x layer x position: prompt_id, lens ("logit" or
    "tuned"), norm, site, layer, depth (layer + 0 / .25 / .5 / .75 / 1 for resid_pre / attn_out / resid_mid /
    mlp_out / resid_post), position (index in the prompt's tokens, BOS included), is_last, token (the input
    token there), then per target field f: f_id, f_prob, f_logit, f_rank (1 + number of tokens with a larger
    logit), f_rr (1 / rank); kl_bits = KL(model's final distribution at that position || decoded),
    entropy_bits and ce_bits (cross-entropy -log2 p of the actual next token: the next prompt token, or at the
    last position the first target field's token; NaN without targets), all in bits; top1_id, top1_token,
    top1_prob ... top{k}_*. Targets are the token after the whole prompt, so with positions="all" their
    columns read the lens's support for the answer at every position. ``.aggregate()`` (=
    :func:`lens_summary`) gives per-layer accuracy / MRR / mean probability.

    Cost: one forward per batch of prompts, stopped after the final norm, keeping only the residuals asked for
    at the selected positions; then one unembedding [positions, d_model] x [d_model, vocab] per site and layer
    (with positions="last", B rows: the [B, T, vocab] logits are never made).
    """
    m = as_model(model)
    kinds = resolve_sites(sites)
    check_choice("norm", norm, NORM_MODES)
    check_choice("positions", positions, POSITION_MODES)
    top_k = check_positive_int("top_k", top_k)
    if top_k > m.info.vocab_size:
        raise ParameterError(f"top_k={top_k} exceeds the vocabulary size {m.info.vocab_size}.")
    batch_size = check_positive_int("batch_size", batch_size)
    if lens is not None:
        if not isinstance(lens, TunedLens):
            raise ParameterError(f"lens must be a TunedLens (from interp.train_tuned_lens), got {type(lens).__name__}.")
        lens.check_model(m)
        if kinds != (lens.site,):
            raise ParameterError(
                f"lens: this tuned lens translates {lens.site!r} only; call logit_lens with sites={lens.site!r} "
                f"(got sites={sites!r})."
            )
    ps = as_prompt_set(prompts)
    fields = _check_targets(ps, targets)
    enc = encode(m, ps, targets=fields)  # checks every record (and tokenises every target) before any forward

    n_layers = m.info.n_layers
    final_resid = _hook("resid_post", n_layers - 1)
    names = [_hook(k, layer) for k in kinds for layer in range(n_layers)]
    if norm == "frozen":
        names.append(final_resid)
    tok = m.tokenizer
    cache: dict[int, str] = {}
    frames = []
    lens_name = "logit" if lens is None else "tuned"
    order = {k: i for i, k in enumerate(SITE_KINDS)}
    grad_ctx = torch.no_grad()
    with grad_ctx:
        for batch in batches(m, enc, batch_size):
            rows, cols = _selector(batch, positions)
            store = _read(m, batch, names, rows, cols)
            logp_final = unembed(m, store[_FINAL_NORMED]).float().log_softmax(-1)
            scale = norm_scale(m, store[final_resid]) if norm == "frozen" else None
            target_ids = {f: batch.targets[f].to(m.device)[rows.to(m.device)] for f in fields}
            next_ids = _next_ids(batch, rows, cols, target_ids[fields[0]].cpu() if fields else None).to(m.device)
            base = {
                "_prompt": np.asarray(batch.indices)[rows.numpy()],
                "position": (cols - batch.offsets[rows]).numpy(),
                "is_last": (cols == batch.width - 1).numpy(),
                "token": _token_strings(tok, cache, batch.input_ids[rows, cols].numpy()),
            }
            for f in fields:
                base[f"{f}_id"] = target_ids[f].cpu().numpy()
            for kind in kinds:
                for layer in range(n_layers):
                    h = store[_hook(kind, layer)]
                    if lens is not None:
                        h = lens.translate(h, layer)
                    logits = decode(m, h, norm=norm, scale=scale, output="logits")
                    st = _stats(logits, logp_final, target_ids, top_k, next_ids)
                    cols_out: dict[str, Any] = dict(base)
                    cols_out.update({"site": kind, "layer": layer, "depth": layer + _DEPTH[kind],
                                     "_site_order": order[kind]})
                    for f in fields:
                        rank = st[f"{f}_rank"].cpu().numpy()
                        cols_out[f"{f}_prob"] = st[f"{f}_prob"].cpu().numpy()
                        cols_out[f"{f}_logit"] = st[f"{f}_logit"].cpu().numpy()
                        cols_out[f"{f}_rank"] = rank
                        cols_out[f"{f}_rr"] = 1.0 / rank
                    cols_out["kl_bits"] = st["kl_bits"].cpu().numpy()
                    cols_out["entropy_bits"] = st["entropy_bits"].cpu().numpy()
                    cols_out["ce_bits"] = st["ce_bits"].cpu().numpy()
                    top_ids = st["top_ids"].cpu().numpy()
                    top_probs = st["top_probs"].cpu().numpy()
                    top_strs = _token_strings(tok, cache, top_ids)
                    for k in range(top_k):
                        cols_out[f"top{k + 1}_id"] = top_ids[:, k]
                        cols_out[f"top{k + 1}_token"] = top_strs[:, k]
                        cols_out[f"top{k + 1}_prob"] = top_probs[:, k]
                    frames.append(pd.DataFrame(cols_out))
    table = pd.concat(frames, ignore_index=True)
    table = table.sort_values(["_prompt", "layer", "_site_order", "position"], kind="stable")
    table.insert(0, "prompt_id", [ps.ids[i] for i in table["_prompt"]])
    table.insert(1, "lens", lens_name)
    table.insert(2, "norm", norm)
    table = table.drop(columns=["_prompt", "_site_order"])
    lead = ["prompt_id", "lens", "norm", "site", "layer", "depth", "position", "is_last", "token"]
    table = table[lead + [c for c in table.columns if c not in lead]]
    for c in ("layer", "position"):
        table[c] = table[c].astype("int64")
    for f in fields:
        table[f"{f}_id"] = table[f"{f}_id"].astype("int64")
        table[f"{f}_rank"] = table[f"{f}_rank"].astype("int64")
    params = {"sites": list(kinds), "norm": norm, "positions": positions, "targets": list(fields), "top_k": top_k,
              "batch_size": batch_size, "lens": None if lens is None else _lens_meta(lens)}
    return LensResult(table, make_meta("logit_lens", m, ps, params, n_layers=n_layers))


def _lens_meta(lens: TunedLens) -> dict[str, Any]:
    info = {k: v for k, v in lens.info.items() if k != "history"}
    return {"kind": "tuned", "site": lens.site, **info}


# --- aggregates -------------------------------------------------------------------------------------------
def _target_fields(table: pd.DataFrame) -> list[str]:
    return [c[: -len("_rr")] for c in table.columns if c.endswith("_rr") and f"{c[:-3]}_prob" in table.columns]


def lens_summary(result: Result | pd.DataFrame, *, positions: str = "last") -> Result:
    """Per-layer dataset aggregates of a :func:`logit_lens` result (works on a result read back from disk).

    One row per lens x norm x site x layer x target field: n (prompts x positions averaged over), accuracy
    (top-1 token == the target's first token), mrr (mean reciprocal rank), mean_prob, mean_logit,
    median_rank, and the mean kl_bits / entropy_bits / ce_bits of the same rows (NaN ce_bits skipped).
    ``positions``: "last" (default: only the last prompt token, where the targets are the next token) or
    "all". With no target fields, one row per layer with target "" and only KL / entropy / cross-entropy.
    Tables of several results (e.g. logit and tuned lens) can be concatenated first (pass the DataFrame).
    """
    check_choice("positions", positions, POSITION_MODES)
    table = result.table if isinstance(result, Result) else result
    if "is_last" not in table.columns or "kl_bits" not in table.columns:
        raise ParameterError("lens_summary needs a logit_lens result (columns is_last, kl_bits, ...).")
    rows = table[table["is_last"]] if positions == "last" else table
    keys = ["lens", "norm", "site", "layer", "depth"]
    fields = _target_fields(table)
    out = []
    for key, g in rows.groupby(keys, sort=True):
        common = dict(zip(keys, key))
        kl, ent = float(g["kl_bits"].mean()), float(g["entropy_bits"].mean())
        ce = float(g["ce_bits"].mean()) if "ce_bits" in g else float("nan")
        if not fields:
            out.append({**common, "target": "", "n": len(g), "kl_bits": kl, "entropy_bits": ent, "ce_bits": ce})
        for f in fields:
            out.append({
                **common, "target": f, "n": len(g),
                "accuracy": float((g["top1_id"] == g[f"{f}_id"]).mean()) if "top1_id" in g else float("nan"),
                "mrr": float(g[f"{f}_rr"].mean()), "mean_prob": float(g[f"{f}_prob"].mean()),
                "mean_logit": float(g[f"{f}_logit"].mean()), "median_rank": float(g[f"{f}_rank"].median()),
                "kl_bits": kl, "entropy_bits": ent, "ce_bits": ce,
            })
    summary = pd.DataFrame(out)
    summary = summary.sort_values(["lens", "norm", "target", "depth"], kind="stable").reset_index(drop=True)
    meta = dict(result.meta) if isinstance(result, Result) else {}
    meta.update({"method": "logit_lens_summary", "summary_positions": positions})
    return Result(summary, meta)


def lens_takeover(summary: Result | pd.DataFrame, *, early: str = "y_s1", late: str = "y_t",
                  metric: str = "mean_prob", site: str = "resid_post") -> pd.DataFrame:
    """The internal chain-of-thought reading of a summary: for each lens x norm, the layer where ``early``'s
    ``metric`` peaks, and the first layer from which ``late``'s metric stays above ``early``'s to the end
    (-1 if it never does). Accepts a :func:`lens_summary` result or a logit_lens result (summarised first).
    """
    if isinstance(summary, Result) and summary.method == "logit_lens" or (
            isinstance(summary, pd.DataFrame) and "is_last" in summary.columns):
        summary = lens_summary(summary)
    table = summary.table if isinstance(summary, Result) else summary
    for f in (early, late):
        if f not in set(table["target"]):
            raise ParameterError(f"lens_takeover: the summary has no target {f!r} (targets: "
                                 f"{', '.join(sorted(set(table['target'])))}).")
    out = []
    for (lens_name, norm), g in table[table["site"] == site].groupby(["lens", "norm"], sort=True):
        e = g[g["target"] == early].set_index("layer")[metric].sort_index()
        t = g[g["target"] == late].set_index("layer")[metric].sort_index()
        above = (t > e).to_numpy()
        takeover = -1
        for i in range(len(above)):
            if above[i:].all():
                takeover = int(t.index[i])
                break
        out.append({"lens": lens_name, "norm": norm, "metric": metric, f"{early}_peak_layer": int(e.idxmax()),
                    f"{early}_peak": float(e.max()), f"{late}_takeover_layer": takeover,
                    f"{late}_final": float(t.iloc[-1]), f"{early}_final": float(e.iloc[-1])})
    return pd.DataFrame(out)


# --- training the tuned lens ------------------------------------------------------------------------------
def train_tuned_lens(
    model: Any,
    data: Any,
    *,
    steps: int = 250,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    site: str = "resid_post",
    tokens_per_step: int = 512,
    max_tokens: int = 50_000,
    batch_size: int = 16,
    clip_grad: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TunedLens:
    """Train a tuned lens (Belrose et al. 2023): one affine translator per layer, ``T_l(h) = h + A_l h + b_l``
    initialised to the identity, trained to minimise the sum over layers of KL(p_final || p_lens_l), where
    ``p_lens_l = softmax(W_U . LN_f(T_l(h_l)))`` and ``p_final`` is the model's own distribution at the same
    token. The final norm and unembedding stay frozen; SGD with Nesterov momentum 0.9, lr 1.0, weight decay
    1e-3 (the paper's settings).

    ``data``: texts (a list of strings), records or a PromptSet; every real token of every text is a training
    position (up to ``max_tokens``). ``tokens_per_step`` positions are drawn (seeded) for each step. The loss is
    averaged over tokens and summed over layers; with that scaling the paper's lr 1.0 trains stably on the tiny
    fixtures and a toy-dense organism (no lr rescaling needed). ``clip_grad``: an optional gradient-norm clip (off by
    default, as in the spec); lower ``lr`` or set it if ``lens.info['history']`` (mean KL per layer per step,
    bits) rises.

    Cost: one forward per batch of texts (stopped after the final norm) to cache the residuals, then ``steps``
    x n_layers unembeddings + backward of ``tokens_per_step`` rows (no model forward per step). Memory:
    (n_layers + 1) x tokens x d_model floats.
    """
    m = as_model(model)
    steps = check_positive_int("steps", steps)
    lr = check_positive_float("lr", lr)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ParameterError(f"momentum must be a number in [0, 1); got {momentum!r}.")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ParameterError(f"weight_decay must be a number >= 0; got {weight_decay!r}.")
    if site not in _RESIDUAL_SITES:
        raise ParameterError(f"site={site!r}: a tuned lens translates one of {', '.join(_RESIDUAL_SITES)}.")
    tokens_per_step = check_positive_int("tokens_per_step", tokens_per_step)
    max_tokens = check_positive_int("max_tokens", max_tokens)
    batch_size = check_positive_int("batch_size", batch_size)
    if clip_grad is not None:
        clip_grad = check_positive_float("clip_grad", clip_grad)
    ps = as_prompt_set(data)
    enc = encode(m, ps)

    n_layers = m.info.n_layers
    names = [_hook(site, layer) for layer in range(n_layers)]
    hs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    finals: list[torch.Tensor] = []
    n_tokens = 0
    with torch.no_grad():
        for batch in batches(m, enc, batch_size, sort_by_length=False):
            rows, cols = _selector(batch, "all")
            store = _read(m, batch, names, rows, cols)
            for layer, n in enumerate(names):
                hs[layer].append(store[n].float())
            finals.append(store[_FINAL_NORMED])
            n_tokens += len(rows)
            if n_tokens >= max_tokens:
                break
    h_all = torch.stack([torch.cat(h)[:max_tokens] for h in hs])  # [L, N, d]
    final_normed = torch.cat(finals)[:max_tokens]
    n = final_normed.shape[0]

    lens = TunedLens.identity(m, site=site)
    opt = torch.optim.SGD(lens.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                          weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    frozen = [p for p in [*final_norm_module(m).parameters(), *m.hf_model.get_output_embeddings().parameters()]]
    flags = [p.requires_grad for p in frozen]
    history: list[float] = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in tqdm(range(steps), desc="tuned lens", disable=not progress, leave=False):
            idx = torch.randint(0, n, (min(tokens_per_step, n),), generator=gen).to(m.device)
            with torch.no_grad():
                logp_final = unembed(m, final_normed[idx]).float().log_softmax(-1)
                p_final = logp_final.exp()
            opt.zero_grad(set_to_none=True)
            total = 0.0
            loss = torch.zeros((), device=m.device)
            with torch.enable_grad():
                for layer in range(n_layers):
                    h = h_all[layer, idx].to(m.dtype)
                    logp = decode(m, lens.translate(h, layer), output="logits").float().log_softmax(-1)
                    kl = (p_final * (logp_final - logp)).sum(-1).mean()
                    loss = loss + kl
                    total += float(kl.detach())
                loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(lens.parameters(), clip_grad)
            opt.step()
            history.append(total / n_layers / _LN2)
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)
    lens.info.update({
        "model": m.name,
        "train": {"steps": steps, "lr": lr, "momentum": momentum, "nesterov": momentum > 0,
                  "weight_decay": weight_decay, "tokens_per_step": tokens_per_step, "n_tokens": int(n),
                  "clip_grad": clip_grad, "seed": seed, "dataset_fingerprint": ps.fingerprint(),
                  "n_texts": len(ps)},
        "history": history,  # mean KL per layer (bits) on each step's tokens, before that step's update
    })
    lens.requires_grad_(False)
    return lens
