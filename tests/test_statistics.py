"""Statistics over prompts (interp.results.statistics, Result.aggregate / Result.compare): seeded bootstrap
intervals that are reproducible and cover the true mean at the nominal rate on synthetic tables (400 datasets,
coverage within a binomial tolerance of 0.95), a sign-flip test with its nominal size under the null (and power
under an alternative), estimates equal to plain pandas means, exports that round-trip, and the lens's summary
with intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from interp.errors import ParameterError
from interp.results.result import Result
from interp.results.statistics import bootstrap_ci, sign_flip_test

N_DATASETS = 400


def binomial_range(n: int, p: float, tail: float = 0.001) -> tuple[int, int]:
    """Counts k with P(K < k) >= tail and P(K > k) >= tail for K ~ Binomial(n, p): the two-sided 99.8 % range."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    cdf = np.cumsum(pmf)
    return int(np.searchsorted(cdf, tail)), int(np.searchsorted(cdf, 1 - tail))


def _synthetic(n_datasets: int, n: int, seed: int, draw) -> pd.DataFrame:
    """One table holding n_datasets independent datasets of n prompts each (prompt ids distinct per dataset)."""
    rng = np.random.default_rng(seed)
    x = draw(rng, (n_datasets, n))
    return pd.DataFrame({"dataset": np.repeat(np.arange(n_datasets), n),
                         "prompt_id": [f"d{d}p{i}" for d in range(n_datasets) for i in range(n)],
                         "score": x.reshape(-1)})


@pytest.mark.parametrize("interval", ["bca", "percentile"])
@pytest.mark.parametrize("dist", ["normal", "bernoulli"])
def test_intervals_cover_the_true_mean_at_the_nominal_rate(interval, dist):
    draw, mean = {"normal": (lambda r, s: r.normal(2.0, 3.0, s), 2.0),
                  "bernoulli": (lambda r, s: r.random(s) < 0.3, 0.3)}[dist]
    table = _synthetic(N_DATASETS, 40, seed=11, draw=draw)
    agg = Result(table, {"method": "synthetic"}).aggregate(by="dataset", value="score", ci=0.95, n_boot=1000,
                                                           seed=5, interval=interval).table
    covered = int(((agg["score_ci_low"] <= mean) & (mean <= agg["score_ci_high"])).sum())
    lo, hi = binomial_range(N_DATASETS, 0.95)
    print(f"\n{dist} {interval}: {covered}/{N_DATASETS} intervals cover the mean (accepted {lo}..{hi})")
    if dist == "bernoulli":
        # a mean of 0/1 values lives on the lattice k/40, which holds the true 0.3: an end often lands on it
        # exactly (and counts as covering), so the exact coverage lies above 0.95; the interval must not undercover
        assert lo <= covered
    else:
        assert lo <= covered <= hi
    pd.testing.assert_series_equal(agg["score"], table.groupby("dataset")["score"].mean().reset_index(drop=True),
                                   check_names=False)


def test_bca_covers_a_skewed_mean():
    rng = np.random.default_rng(3)
    x = rng.exponential(1.0, (N_DATASETS, 30))
    _, low, high = bootstrap_ci(x, ci=0.9, n_boot=1000, seed=1)
    covered = int(((low <= 1.0) & (1.0 <= high)).sum())
    lo, hi = binomial_range(N_DATASETS, 0.9)
    assert lo <= covered <= hi


def test_intervals_are_reproducible_with_a_seed():
    table = _synthetic(5, 25, seed=0, draw=lambda r, s: r.normal(size=s))
    r = Result(table, {"method": "synthetic"})
    a = r.aggregate(by="dataset", value="score", seed=7).table
    b = r.aggregate(by="dataset", value="score", seed=7).table
    c = r.aggregate(by="dataset", value="score", seed=8).table
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not np.array_equal(a["score_ci_low"].to_numpy(), c["score_ci_low"].to_numpy())
    assert (a["score_ci_low"] < a["score"]).all() and (a["score"] < a["score_ci_high"]).all()


def test_a_prompt_with_several_rows_is_one_unit_and_edge_cases():
    # by="layer" over heads: the estimate is the mean over rows, the jackknife leaves a whole prompt out
    rng = np.random.default_rng(0)
    table = pd.DataFrame([{"prompt_id": f"p{p}", "layer": layer, "head": h, "score": rng.normal() + p}
                          for p in range(12) for layer in range(2) for h in range(3)])
    agg = Result(table, {"method": "x"}).aggregate(by="layer", value="score", n_boot=500).table
    assert agg["n_prompts"].tolist() == [12, 12]
    np.testing.assert_allclose(agg["score"], table.groupby("layer")["score"].mean(), rtol=0, atol=1e-12)
    # the interval is that of the per-prompt means (equal row counts: cluster bootstrap = bootstrap of the means)
    per = table[table["layer"] == 0].groupby("prompt_id", sort=False)["score"].mean().to_numpy()
    est, low, high = bootstrap_ci(per, n_boot=500, seed=0)
    direct = Result(table[table["layer"] == 0], {"method": "x"}).aggregate(by="layer", value="score", n_boot=500,
                                                                            seed=0).table
    np.testing.assert_allclose([direct["score"][0], direct["score_ci_low"][0], direct["score_ci_high"][0]],
                               [est, low, high], rtol=0, atol=1e-12)
    # every prompt correct: a zero-width interval; one prompt: none
    same = pd.DataFrame({"prompt_id": ["a", "b", "c"], "layer": 0, "correct": True})
    s = Result(same, {"method": "x"}).aggregate(by="layer", value="correct").table
    assert (s["correct_ci_low"][0], s["correct_ci_high"][0]) == (1.0, 1.0)
    single = Result(same.iloc[:1], {"method": "x"}).aggregate(by="layer", value="correct").table
    assert np.isnan(single["correct_ci_low"][0]) and single["correct"][0] == 1.0


def test_the_sign_flip_test_has_its_size_under_the_null_and_power_under_an_alternative():
    rng = np.random.default_rng(4)
    lo, hi = binomial_range(N_DATASETS, 0.05)
    for n, n_perm in ((8, 1000), (25, 2000)):  # exact enumeration (2^8 patterns), then random sign patterns
        null = rng.normal(0.0, 1.0, (N_DATASETS, n))
        rejected = int((sign_flip_test(null, n_perm=n_perm, seed=1) <= 0.05).sum())
        print(f"\nn={n}: {rejected}/{N_DATASETS} null datasets rejected at 0.05 (accepted {lo}..{hi})")
        assert lo <= rejected <= hi
    skewed_null = rng.laplace(0.0, 1.0, (N_DATASETS, 15))  # symmetric, heavy-tailed
    assert int((sign_flip_test(skewed_null, n_perm=2000, seed=2) <= 0.05).sum()) <= hi
    shifted = rng.normal(0.8, 1.0, (N_DATASETS, 25))
    assert (sign_flip_test(shifted, n_perm=2000, seed=3) <= 0.05).mean() > 0.9


def test_the_exact_test_counts_every_sign_pattern():
    d = np.array([0.5, -0.2, 1.1, 0.3, 0.9])
    observed = abs(d.mean())
    naive = np.mean([abs((d * np.array(s)).mean()) >= observed - 1e-12
                     for s in itertools.product((-1, 1), repeat=len(d))])
    assert sign_flip_test(d, n_perm=10_000) == pytest.approx(naive, abs=0)


def _blocking_table(seed: int = 0, n: int = 24, effect: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        base = rng.random()
        rows.append({"prompt_id": f"p{p}", "condition": "clean", "control": None, "target_rr": base})
        rows.append({"prompt_id": f"p{p}", "condition": "blocked", "control": None,
                     "target_rr": base - effect + rng.normal(0, 0.1)})
        for c in range(3):
            rows.append({"prompt_id": f"p{p}", "condition": "control", "control": c,
                         "target_rr": base + rng.normal(0, 0.1)})
    t = pd.DataFrame(rows)
    t["control"] = pd.array(t["control"].tolist(), dtype="Int64")
    return t


def test_compare_pairs_prompts_and_averages_the_controls():
    t = _blocking_table(effect=0.3)
    res = Result(t, {"method": "block_experts"}).compare("condition", "control", treatment="blocked",
                                                         value="target_rr", n_boot=500, seed=0)
    row = res.table.iloc[0]
    per = t.groupby(["condition", "prompt_id"])["target_rr"].mean().unstack(0)
    d = per["blocked"] - per["control"]
    assert row["treatment"] == "blocked" and row["baseline"] == "control" and row["n_pairs"] == 24
    assert row["difference"] == pytest.approx(d.mean(), abs=1e-12)
    assert row["treatment_mean"] == pytest.approx(per["blocked"].mean(), abs=1e-12)
    assert row["difference_ci_low"] < row["difference"] < row["difference_ci_high"] < 0
    assert row["p_value"] < 0.01
    # every other condition against clean, by default
    both = Result(t, {"method": "block_experts"}).compare("condition", "clean", value="target_rr").table
    assert both["treatment"].tolist() == ["blocked", "control"]


def test_aggregate_and_compare_tables_round_trip_through_the_exports(tmp_path):
    t = _blocking_table()
    r = Result(t, {"method": "block_experts"})
    for out in (r.aggregate(by=["condition", "control"], value="target_rr"),
                r.compare("condition", "control", value="target_rr")):
        assert out.schema is not None and out.schema.value in out.table.columns
        for ext in ("csv", "parquet", "json"):
            path = getattr(out, f"to_{ext}")(tmp_path / f"{out.method}.{ext}")
            back = Result.read(path)
            pd.testing.assert_frame_equal(back.table, out.table, check_exact=True)
            assert back.meta == out.meta and type(back) is Result


def test_the_lens_summary_gets_intervals(models):
    from interp.methods.lens import logit_lens

    from .helpers import PROMPTS

    m = models["llama"]
    res = logit_lens(m, [{**p, "id": f"{p['id']}-{k}"} for k in range(3) for p in PROMPTS])
    plain = res.aggregate().table
    with_ci = res.aggregate(ci=0.9, n_boot=300, seed=1).table
    pd.testing.assert_frame_equal(with_ci[plain.columns], plain, check_exact=True)
    for c in ("accuracy", "mrr", "mean_target_prob", "kl"):
        assert (with_ci[f"{c}_ci_low"] <= with_ci[c] + 1e-12).all() and (with_ci[c] <= with_ci[f"{c}_ci_high"]
                                                                          + 1e-12).all()
    again = res.aggregate(ci=0.9, n_boot=300, seed=1).table
    pd.testing.assert_frame_equal(again, with_ci, check_exact=True)
    by_layer = res.aggregate("layer").table  # the generic view of the same table
    # float32 columns: pandas sums them in float32, the bootstrap in float64
    np.testing.assert_allclose(by_layer["target_prob"], plain["mean_target_prob"], rtol=1e-6)


def test_figures_that_average_over_prompts_can_show_the_interval():
    from interp.figures.viz import check_convention
    from interp.methods.icot import context_masking_figure
    from interp.methods.safety_heads import asr_figure

    rng = np.random.default_rng(0)
    masking = pd.DataFrame([{"prompt_id": f"p{p}", "from_layer": layer, "target_field": f, "correct": bool(
        rng.random() < 0.2 + 0.2 * layer)} for p in range(20) for layer in range(4) for f in ("y_t", "y_s1")])
    r = Result(masking, {"method": "context_masking", "n_layers": 3, "parameters": {"span": "demonstrations"}})
    plain, fig = context_masking_figure(r), context_masking_figure(r, ci=0.9, n_boot=300, seed=2)
    assert all(t.error_y.array is None for t in plain.data)
    agg = r.aggregate(["target_field", "from_layer"], value="correct", ci=0.9, n_boot=300, seed=2).table
    for trace, (_, g) in zip(fig.data, agg.groupby("target_field", sort=False)):
        np.testing.assert_allclose(trace.y, g["correct"])
        np.testing.assert_allclose(trace.error_y.array, g["correct_ci_high"] - g["correct"])
        np.testing.assert_allclose(trace.error_y.arrayminus, g["correct"] - g["correct_ci_low"])
    assert not check_convention(fig)
    asr = pd.DataFrame([{"variant": v, "variant_group": v.split(" #")[0], "prompt_id": f"p{p}",
                         "success": bool(rng.random() < (0.7 if v != "clean" else 0.2))}
                        for v in ("clean", "random-2 #0", "random-2 #1") for p in range(30)])
    ra = Result(asr, {"method": "attack_success_rate"})
    fig = asr_figure(ra, ci=0.95, n_boot=300)
    a = ra.aggregate("variant_group", value="success", ci=0.95, n_boot=300).table
    np.testing.assert_allclose(fig.data[0].y, a["success"])
    np.testing.assert_allclose(fig.data[0].error_y.array, a["success_ci_high"] - a["success"])
    assert not check_convention(fig)


def test_the_blocking_figure_can_show_the_interval():
    from interp.figures.viz import check_convention
    from interp.methods.moe_blocking import blocking_figure, blocking_summary

    t = _blocking_table(seed=1, effect=0.2)
    t["task"] = ["a" if int(p[1:]) % 2 else "b" for p in t["prompt_id"]]
    t["target_in_top10"] = t["target_rr"] > 0.5
    r = Result(t, {"method": "block_experts", "summary": blocking_summary(t)})
    fig = blocking_figure(r, ci=0.95, n_boot=300, seed=0)
    agg = r.aggregate("condition", value="target_rr", ci=0.95, n_boot=300, seed=0).table.set_index("condition")
    by_task = r.aggregate(["task", "condition"], value="target_rr", ci=0.95, n_boot=300,
                          seed=0).table.set_index(["task", "condition"])
    for trace in fig.data:
        cond = "control" if trace.name.startswith("random controls") else trace.name
        assert list(trace.x) == ["all", "a", "b"]
        assert trace.y[0] == pytest.approx(agg.loc[cond, "target_rr"])
        assert trace.y[1] == pytest.approx(by_task.loc[("a", cond), "target_rr"])
        assert trace.error_y.array[0] == pytest.approx(agg.loc[cond, "target_rr_ci_high"] - agg.loc[cond, "target_rr"])
    assert not check_convention(fig)
    plain = blocking_figure(r)
    assert plain.data[-1].name == "random controls (mean ± std)"


def test_the_remaining_prompt_averaging_figures_show_the_interval_they_compute():
    """The error bars and hover intervals of the causal-trace roles, Ships, patching and MoE-attribution figures
    are those of Result.aggregate over the rows they average (the trace: per fact, its mean over the role's
    tokens); the contract test checks every such figure takes ci= at all."""
    from interp.figures.viz import check_convention
    from interp.methods.moe import attribution_figure
    from interp.methods.patching_core import patching_figure
    from interp.methods.safety_heads import ships_figure
    from interp.methods.tracing import causal_trace_figure

    rng = np.random.default_rng(3)
    trace = pd.DataFrame([{"prompt_id": f"f{f}", "site": "resid_post", "severed": "", "layer": layer,
                           "position": pos, "role": "last subject token" if pos == 1 else "last token",
                           "indirect_effect": rng.normal(0.1 * layer, 0.2)}
                          for f in range(12) for layer in range(3) for pos in range(3)])
    fig = causal_trace_figure(Result(trace, {"method": "causal_trace"}), ci=0.9, n_boot=200, seed=4)
    per_fact = trace.groupby(["role", "layer", "prompt_id"])["indirect_effect"].mean().reset_index()
    agg = Result(per_fact, {}).aggregate(["role", "layer"], value="indirect_effect", ci=0.9, n_boot=200,
                                         seed=4).table.set_index("role")
    for t in fig.data:
        g = agg.loc[t.name]
        np.testing.assert_allclose(t.y, g["indirect_effect"])
        np.testing.assert_allclose(t.error_y.array, g["indirect_effect_ci_high"] - g["indirect_effect"])
        np.testing.assert_allclose(t.error_y.arrayminus, g["indirect_effect"] - g["indirect_effect_ci_low"])
    assert not check_convention(fig)
    with pytest.raises(ParameterError, match="one fact"):
        causal_trace_figure(Result(trace, {"method": "causal_trace"}), view="heatmap", ci=0.9)

    heads = pd.DataFrame([{"prompt_id": f"p{p}", "layer": layer, "head": h, "score": rng.exponential(1 + h)}
                          for p in range(10) for layer in range(2) for h in range(3)])
    fig = ships_figure(Result(heads, {"method": "ships", "parameters": {"ablation": "query"}}), ci=0.95,
                       n_boot=200, seed=0)
    agg = Result(heads, {}).aggregate(["layer", "head"], value="score", ci=0.95, n_boot=200,
                                      seed=0).table.set_index(["layer", "head"])
    shown = np.asarray(fig.data[0].customdata)[:, :, 1]
    for i, layer in enumerate(fig.data[0].y):
        for j, h in enumerate(fig.data[0].x):
            low, high = agg.loc[(int(layer), int(h)), ["score_ci_low", "score_ci_high"]]
            assert shown[i, j] == f"[{low:.4g}, {high:.4g}]"
    assert not check_convention(fig)

    pairs = heads.rename(columns={"score": "effect"}).assign(site="z", position=4, pos_from_end=0, token="x")
    fig = patching_figure(Result(pairs, {"method": "activation_patching", "parameters": {}}), value="effect",
                          ci=0.95, n_boot=200, seed=0)
    assert (np.asarray(fig.data[0].customdata) == shown).all() and "interval" in fig.data[0].hovertemplate

    lpi = pd.DataFrame([{"prompt_id": f"p{p}", "layer": layer, "level": lv, "score": rng.normal(layer, 1.0)}
                        for p in range(10) for layer in range(3) for lv in ("attn", "ffn")])
    fig = attribution_figure(Result(lpi, {"method": "expert_attribution"}), ci=0.9, n_boot=200, seed=1)
    agg = Result(lpi, {}).aggregate(["level", "layer"], value="score", ci=0.9, n_boot=200, seed=1).table
    for t in fig.data:
        g = agg[agg["level"] == t.name]
        np.testing.assert_allclose(t.y, g["score"])
        np.testing.assert_allclose(t.error_y.array, g["score_ci_high"] - g["score"])
    assert not check_convention(fig)
