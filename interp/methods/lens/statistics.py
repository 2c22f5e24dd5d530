"""Statistics of the lens. Per decoded row (:func:`row_statistics`): the columns of one chunk of decoded logits,
fused into a few passes over [rows, vocab]. Per dataset: the per-layer aggregates (top-1 accuracy, MRR, mean target
probability, KL, entropy; :func:`lens_summary`, ``LensResult.aggregate()``) and the internal chain-of-thought
reading of them (:func:`lens_takeover`). They read only the table's columns, so they work on a result read back
from disk, merged from shards, or concatenated from several lenses."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from ...errors import ParameterError, check_choice
from ...results.result import Result

SUMMARY_POSITIONS = ("last", "all")
KEYS = ["lens", "norm", "site", "layer", "depth"]
# per-target means of a summary (the rest, kl / entropy / cross_entropy, are per decoded distribution)
TARGET_METRICS = ("accuracy", "mrr", "mean_target_prob", "mean_target_logit", "median_target_rank")
DISTRIBUTION_METRICS = ("kl", "entropy", "cross_entropy")


# elements of one [rows, vocab] chunk of decoded logits: cache-sized on a CPU (each pass over the chunk then reads
# it from cache, not memory), large on an accelerator (fewer kernel launches); at least MIN_CHUNK_ROWS rows so the
# unembedding's weight read is shared by enough rows
CHUNK_ELEMENTS = {"cpu": 2**19, "cuda": 2**26}
MIN_CHUNK_ROWS = 32


def chunk_rows(n_rows: int, vocab: int, device: torch.device | str) -> int:
    """Rows per chunk of decoded logits for :func:`row_statistics` (bounds its memory to a few chunks)."""
    budget = CHUNK_ELEMENTS.get(torch.device(device).type, CHUNK_ELEMENTS["cuda"])
    return max(1, min(n_rows, max(MIN_CHUNK_ROWS, budget // max(1, vocab))))


class Workspace:
    """[rows, vocab] buffers reused from chunk to chunk and layer to layer (a fresh array of a few MB each time
    costs page faults, more than the arithmetic on it); each is cut to the rows of the chunk asked for."""

    def __init__(self):
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The buffer ``name`` with the shape, dtype and device of ``like`` (its contents are garbage)."""
        buf = self.buffers.get(name)
        if (buf is None or buf.shape[0] < like.shape[0] or buf.shape[1:] != like.shape[1:]
                or buf.dtype != like.dtype or buf.device != like.device):
            buf = self.buffers[name] = torch.empty_like(like)
        return buf[:like.shape[0]]


class FinalDistribution:
    """The model's own next-token distribution at a chunk of rows, computed once and shared by every site and
    layer decoded there: log-probs ``logp`` and probs ``p`` [rows, vocab] (float32 or wider). ``of`` makes it
    from logits; :func:`row_statistics` of the final logits themselves (``final=None``) returns it too."""

    def __init__(self, logp: torch.Tensor, p: torch.Tensor):
        self.logp, self.p = logp, p

    @classmethod
    def of(cls, logits: torch.Tensor, workspace: Workspace | None = None) -> FinalDistribution:
        logp, p, _ = distribution(logits, workspace=workspace, names=("final_logp", "final_p"))
        return cls(logp, p)


def distribution(logits: torch.Tensor, k: int = 1, *, workspace: Workspace | None = None,
                 names: tuple[str, str] = ("logp", "p")) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(log-probs, probs, (top-k log-probs, their ids)) of logits [rows, vocab] (float32 or wider), with one
    fused pass over the array (softmax) and one subtraction: the top k are those of the logits (:func:`largest`;
    the log-probs are the logits less a constant per row), and that constant, log-sum-exp, is read off the top
    token, whose probability is 1 / sum exp(logits - max): lse = max - log p_max. The log-probs are
    ``logits - lse``, as ``log_softmax`` computes them, up to float rounding of lse. With ``workspace``, the
    two arrays are its buffers ``names`` (valid until their next use)."""
    logits = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
    ws = workspace if workspace is not None else Workspace()
    p = torch.softmax(logits, -1, out=ws(names[1], logits))
    top, ids = largest(logits, k)
    lse = top[:, :1] - p.gather(-1, ids[:, :1]).log()
    return torch.sub(logits, lse, out=ws(names[0], logits)), p, (top - lse, ids)


def largest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``values.topk(k, dim=-1)`` ([rows, n]; values, then indices, best first) without a partial sort of whole
    rows: the row is cut into blocks of b values (block j: the values j, j + m, ..., j + (b - 1) m, with m = n // b
    blocks, so the block maxima are m-wide elementwise maxima that vectorise), and the k blocks with the largest
    maxima hold k values equal to the k largest (every block whose maximum exceeds the k-th largest value is
    among them, and each chosen block tied at it adds one value equal to it), so top-k runs on those k x b
    candidates (and the < b values past the last whole block) only. The values are those of ``topk`` exactly;
    only the order among equal values may differ."""
    n = values.shape[-1]
    b = max(1, math.isqrt(max(1, n // max(1, k))))
    blocks = n // b
    if blocks <= 2 * k:  # too few blocks for the cut to save work
        return values.topk(k, dim=-1)
    maxima = values[:, :blocks * b].unflatten(-1, (b, blocks)).amax(1)  # [rows, blocks]
    best = maxima.topk(k, dim=-1, sorted=False).indices  # [rows, k]
    cand = (best[:, :, None] + blocks * torch.arange(b, device=values.device)).flatten(1)
    if blocks * b < n:
        tail = torch.arange(blocks * b, n, device=values.device).expand(values.shape[0], -1)
        cand = torch.cat([cand, tail], dim=1)
    top, at = values.gather(-1, cand).topk(k, dim=-1)
    return top, cand.gather(-1, at)


def row_statistics(logits: torch.Tensor, final: FinalDistribution | None, next_ids: torch.Tensor,
                   target_ids: torch.Tensor | None, top_k: int, workspace: Workspace | None = None
                   ) -> dict[str, torch.Tensor]:
    """The per-row columns of a chunk of decoded logits [rows, vocab] (float32 or wider), in nats:

    - ``top_logp``, ``top_ids`` [rows, top_k]: the top_k decoded tokens, best first (ids and log-probs);
    - ``kl`` = KL(final || decoded) = sum p_final (log p_final - log p); ``entropy`` = -sum p log p;
    - ``cross_entropy`` = -log p(next_ids) (NaN where next_ids < 0);
    - with ``target_ids`` [rows, F]: ``target_logit``, ``target_logp``, ``target_rank`` (1 + the number of tokens
      with a strictly larger logit) [rows, F].

    ``final`` None: these logits are the final distribution's own (kl is 0); then ``out["final"]`` is their
    :class:`FinalDistribution`, for the other layers of the chunk (in the workspace's final buffers).
    ``workspace``: where the [rows, vocab] intermediates go (:class:`Workspace`; None: fresh arrays).

    Each quantity is computed by the same formula as :mod:`interp.methods.metrics` (so the numbers are those of
    ``metrics.kl_divergence`` / ``entropy`` / ``rank`` up to float rounding), but the [rows, vocab] array is
    passed over only by softmax, the log-probs' subtraction (:func:`distribution`), the block maxima of
    :func:`largest`, the entropy's product and sum, the KL's difference, product and sum, and, per target field,
    one comparison whose true values are summed, each into a reused buffer (:class:`Workspace`). The chunk
    should be small enough to stay in cache (:func:`chunk_rows`)."""
    logits = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
    ws = workspace if workspace is not None else Workspace()
    names = ("final_logp", "final_p") if final is None else ("logp", "p")
    logp, p, (top, ids) = distribution(logits, top_k, workspace=ws, names=names)
    # the dot products as a product into a reused buffer, then its sum (what vecdot does, less the allocation)
    buf = ws("product", logits)
    out = {"entropy": -torch.mul(p, logp, out=buf).sum(-1), "top_logp": top, "top_ids": ids}
    if final is None:  # KL(P || P) = 0
        out["final"], out["kl"] = FinalDistribution(logp, p), torch.zeros_like(out["entropy"])
    else:  # p is not read again: the KL's terms go into its memory
        out["kl"] = torch.sub(final.logp.to(logp.dtype), logp, out=p).mul_(final.p.to(logp.dtype)).sum(-1)
    known = next_ids >= 0
    ce = -logp.gather(-1, next_ids.clamp(min=0)[:, None])[:, 0]
    out["cross_entropy"] = torch.where(known, ce, torch.full_like(ce, float("nan")))
    if target_ids is not None:
        t_logit = logits.gather(-1, target_ids)
        out["target_logit"], out["target_logp"] = t_logit, logp.gather(-1, target_ids)
        # L > t written as 1.0 / 0.0 into the reused buffer and summed: sums of 0 / 1 are exact in float32
        # below 2**24 tokens
        ranks = [torch.gt(logits, t_logit[:, f:f + 1], out=buf).sum(-1) for f in range(target_ids.shape[1])]
        out["target_rank"] = torch.stack(ranks, dim=1).long() + 1
    return out


class LensResult(Result):
    """A logit-lens Result; :meth:`aggregate` gives the per-layer dataset summary (see :func:`lens_summary`).
    The class survives :meth:`Result.read` and sharded merges (``interp.run_resumable``)."""

    def aggregate(self, by: str | list[str] | None = None, *, positions: str = "last", ci: float | None = None,
                  n_boot: int = 2000, seed: int = 0, interval: str = "bca") -> Result:
        """:func:`lens_summary` of this result; with ``ci`` (e.g. 0.95), each of its means (accuracy, mrr,
        mean_target_prob, mean_target_logit, kl, entropy, cross_entropy) gets ``<name>_ci_low`` /
        ``<name>_ci_high``: a seeded bootstrap interval with prompts resampled (positions="all": a prompt's
        positions resampled together), as :meth:`interp.Result.aggregate` (see interp.results.statistics). ``by``
        given: :meth:`interp.Result.aggregate` of the table itself (``ci`` default 0.95)."""
        if by is not None:
            return super().aggregate(by, ci=0.95 if ci is None else ci, n_boot=n_boot, seed=seed, interval=interval)
        summary = lens_summary(self, positions=positions)
        if ci is None:
            return summary
        from ...results.statistics import with_intervals

        rows = self.table[self.table["is_last"]] if positions == "last" else self.table
        if "target_field" not in rows.columns:
            rows = rows.assign(target_field="")
        sources = {"accuracy": "correct", "mrr": "target_rr", "mean_target_prob": "target_prob",
                   "mean_target_logit": "target_logit", **{c: c for c in DISTRIBUTION_METRICS}}
        table = with_intervals(summary.table, rows, [*KEYS, "target_field"], sources, ci=ci, n_boot=n_boot,
                               seed=seed, interval=interval)
        meta = {**summary.meta, "aggregate": {"ci": ci, "n_boot": n_boot, "seed": seed, "interval": interval,
                                              "unit": "prompt_id"}}
        return Result(table, meta)


def is_lens_table(table: pd.DataFrame) -> bool:
    """True for a logit_lens table (one row per decoded position), False for a summary."""
    return "is_last" in table.columns and "kl" in table.columns


def lens_summary(result: Result | pd.DataFrame, *, positions: str = "last") -> Result:
    """Per-layer dataset aggregates of a :func:`~interp.methods.lens.logit_lens` result (also one read back from
    disk or merged from shards).

    Args:
        result: a logit_lens Result or its table (tables of several results, e.g. the logit and the tuned lens,
            can be concatenated first).
        positions: "last" (default: only the last prompt token, where the targets are the next token) or "all"
            (every decoded row of the table).

    Returns: a Result with one row per lens x norm x site x layer x target field: lens, norm, site, layer, depth,
    target_field, n (rows averaged over: prompts x positions), accuracy (fraction whose top-1 decoded token is
    the target's first token), mrr (mean of target_rr), mean_target_prob, mean_target_logit (logits),
    median_target_rank, and the mean kl, entropy and cross_entropy (nats; NaN cross-entropies skipped) of the same
    rows. Without target fields, one row per layer with target_field "" and only kl / entropy / cross_entropy.
    Cost: none (pandas on the table).
    """
    check_choice("positions", positions, SUMMARY_POSITIONS)
    table = result.table if isinstance(result, Result) else result
    if not isinstance(table, pd.DataFrame) or not is_lens_table(table):
        raise ParameterError("lens_summary needs a logit_lens result (columns is_last, kl, ...).")
    rows = table[table["is_last"]] if positions == "last" else table
    if rows.empty:
        raise ParameterError("lens_summary: the result holds no last-position rows (it was decoded at other "
                             "positions); pass positions='all'.")
    has_targets = "target_field" in rows.columns
    if not has_targets:
        rows = rows.assign(target_field="")
    out = []
    for key, g in rows.groupby([*KEYS, "target_field"], sort=False):
        rec: dict[str, Any] = dict(zip([*KEYS, "target_field"], key))
        rec["n"] = len(g)
        if has_targets:
            rec.update({
                "accuracy": float(g["correct"].mean()), "mrr": float(g["target_rr"].mean()),
                "mean_target_prob": float(g["target_prob"].mean()),
                "mean_target_logit": float(g["target_logit"].mean()),
                "median_target_rank": float(g["target_rank"].median()),
            })
        rec.update({c: float(g[c].mean()) for c in DISTRIBUTION_METRICS})
        out.append(rec)
    summary = pd.DataFrame(out)
    fields = list(dict.fromkeys(rows["target_field"]))
    summary["_field"] = summary["target_field"].map({f: i for i, f in enumerate(fields)})
    summary = summary.sort_values(["lens", "norm", "_field", "depth"], kind="stable").drop(columns="_field")
    meta = dict(result.meta) if isinstance(result, Result) else {}
    meta.update({"method": "logit_lens_summary", "summary_positions": positions})
    meta.pop("schema", None)
    return Result(summary.reset_index(drop=True), meta)


def as_summary(item: Any, positions: str = "last") -> pd.DataFrame:
    """The summary table of a logit_lens result or table (summarised here), or of a summary (as it is)."""
    if isinstance(item, Result):
        item = item.table
    if not isinstance(item, pd.DataFrame):
        raise ParameterError(f"Expected a logit_lens result or its summary, got {type(item).__name__}.")
    return lens_summary(item, positions=positions).table if is_lens_table(item) else item


def lens_takeover(summary: Result | pd.DataFrame, *, early: str = "y_s1", late: str = "y_t",
                  metric: str = "mean_target_prob", site: str = "resid_post") -> pd.DataFrame:
    """The internal chain-of-thought reading of a summary (Yang et al. 2025, arXiv 2505.14530): for each lens x
    norm, the layer where the target field ``early``'s ``metric`` peaks, and the first layer from which ``late``'s
    metric stays above ``early``'s to the last layer (-1 if it never does).

    Args:
        summary: a :func:`lens_summary` result or table, or a logit_lens result (summarised first).
        early, late: target fields of the summary (the intermediate and the final answer).
        metric: a per-target column of the summary (accuracy, mrr, mean_target_prob, mean_target_logit).
        site: the site whose layers are read.

    Returns: one row per lens x norm: lens, norm, metric, early, late, early_peak_layer, early_peak (the metric
    there), takeover_layer, early_final and late_final (the metric at the last layer).
    """
    table = as_summary(summary)
    check_choice("metric", metric, TARGET_METRICS[:-1])
    for f in (early, late):
        if f not in set(table["target_field"]):
            raise ParameterError(f"lens_takeover: the summary has no target field {f!r} (target fields: "
                                 f"{', '.join(sorted(set(table['target_field'])))}).")
    out = []
    for (lens_name, norm), g in table[table["site"] == site].groupby(["lens", "norm"], sort=True):
        e = g[g["target_field"] == early].set_index("layer")[metric].sort_index()
        t = g[g["target_field"] == late].set_index("layer")[metric].sort_index()
        above = (t > e).to_numpy()
        takeover = -1
        for i in range(len(above)):
            if above[i:].all():
                takeover = int(t.index[i])
                break
        out.append({"lens": lens_name, "norm": norm, "metric": metric, "early": early, "late": late,
                    "early_peak_layer": int(e.idxmax()), "early_peak": float(e.max()), "takeover_layer": takeover,
                    "early_final": float(e.iloc[-1]), "late_final": float(t.iloc[-1])})
    return pd.DataFrame(out)
