"""Statistics of the lens. Per decoded row (:func:`row_statistics`): the columns of one chunk of decoded logits,
fused into a few passes over [rows, vocab]. Per dataset: the per-layer aggregates (top-1 accuracy, MRR, mean target
probability, KL, entropy; :func:`lens_summary`, ``LensResult.aggregate()``) and the internal chain-of-thought
reading of them (:func:`lens_takeover`). They read only the table's columns, so they work on a result read back
from disk, merged from shards, or concatenated from several lenses."""

from __future__ import annotations

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


class FinalDistribution:
    """The model's own next-token distribution at a chunk of rows, computed once and shared by every site and
    layer decoded there: log-probs ``logp`` and probs ``p`` [rows, vocab] (float32 or wider)."""

    def __init__(self, final_logits: torch.Tensor):
        self.logp = final_logits.float().log_softmax(-1)
        self.p = self.logp.exp()


def row_statistics(logits: torch.Tensor, final: FinalDistribution, next_ids: torch.Tensor,
                   target_ids: torch.Tensor | None, top_k: int) -> dict[str, torch.Tensor]:
    """The per-row columns of a chunk of decoded logits [rows, vocab] (float32 or wider), in nats:

    - ``top_logp``, ``top_ids`` [rows, top_k]: the top_k decoded tokens, best first (ids and log-probs);
    - ``kl`` = KL(final || decoded) = sum p_final (log p_final - log p); ``entropy`` = -sum p log p;
    - ``cross_entropy`` = -log p(next_ids) (NaN where next_ids < 0);
    - with ``target_ids`` [rows, F]: ``target_logit``, ``target_logp``, ``target_rank`` (1 + the number of tokens
      with a strictly larger logit) [rows, F].

    Each quantity is computed by the same formula as :mod:`interp.methods.metrics` (so the numbers are those of
    ``metrics.kl_divergence`` / ``entropy`` / ``rank`` up to float summation order), but the [rows, vocab] array
    is passed over only by log_softmax, exp, the KL's difference (written into the exp's buffer), top-k and, per
    target field, one subtraction whose sign is counted; the entropy and the KL are dot products. The chunk
    should be small enough to stay in cache (:func:`chunk_rows`)."""
    logits = logits.float() if logits.dtype not in (torch.float32, torch.float64) else logits
    logp = logits.log_softmax(-1)
    buf = torch.exp(logp)
    out = {"entropy": -torch.linalg.vecdot(buf, logp)}
    torch.sub(final.logp.to(logp.dtype), logp, out=buf)
    out["kl"] = torch.linalg.vecdot(final.p.to(logp.dtype), buf)
    out["top_logp"], out["top_ids"] = logp.topk(top_k, dim=-1)
    known = next_ids >= 0
    ce = -logp.gather(-1, next_ids.clamp(min=0)[:, None])[:, 0]
    out["cross_entropy"] = torch.where(known, ce, torch.full_like(ce, float("nan")))
    if target_ids is not None:
        t_logit = logits.gather(-1, target_ids)
        out["target_logit"], out["target_logp"] = t_logit, logp.gather(-1, target_ids)
        ranks = []
        for f in range(target_ids.shape[1]):
            # L > t counted as sign(L - t) clamped at 0 (exact for floats: L - t > 0 iff L > t), in float passes
            # that vectorise, into the reused buffer; sums of 0 / 1 are exact in float32 below 2**24 tokens
            torch.sub(logits, t_logit[:, f:f + 1], out=buf).sign_().clamp_(min=0)
            ranks.append(buf.sum(-1))
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
