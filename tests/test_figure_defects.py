"""Properties of figures that once misled a reader (issue #17), each checked on the figure a user gets:

- the lens heatmap has no fixed width, says which prompt of how many it shows and how many positions;
- lens curves give every series its own style and never join different sites into one curve;
- relation-evidence panels are titled and draw the attribute rate over its whole range [0, 1];
- the patching heatmap says over how many pairs it averages and names a column's token only where every pair
  has that token there;
- block_experts draws points zoomed to their spread (no bars from 0 hiding 0.99 against 0.975).

The convention's generic checks (titles, colourbars, shared styles: interp.figures.viz.check_convention) run on
every figure here too; tests/test_figure_convention.py runs them on every method's default figure."""

import pytest

from interp.figures.viz import check_convention
from interp.methods import checks
from interp.methods.lens import lens_curves, lens_summary, logit_lens
from interp.methods.moe_blocking import block_experts
from interp.methods.patching import activation_patching
from interp.methods.relation_evidence import relation_evidence


@pytest.fixture(scope="module")
def composite():
    return checks.corpus_prompts("composite", 3)


def _title(fig) -> str:
    return fig.layout.title.text or ""


def test_lens_heatmap_follows_its_container_and_says_which_prompt(models, composite):
    result = logit_lens(models("llama"), composite, positions="all", target=["y_t", "y_s1"])
    n_positions = result.table[result.table["prompt_id"] == composite[0]["id"]]["position"].nunique()
    fig = result.figure()
    assert fig.data[0].type == "heatmap"
    assert fig.layout.width is None and not check_convention(fig)
    title = _title(fig)
    assert f"prompt 1 of {len(composite)}" in title and composite[0]["id"][:40] in title
    shown = len(fig.data[0].x)
    assert shown <= n_positions
    assert (f"the last {shown} of {n_positions} positions" in title if shown < n_positions
            else f"all {n_positions} positions" in title)
    second = result.figure(prompt_id=composite[1]["id"], last_n=2)
    assert "prompt 2 of" in _title(second) and len(second.data[0].x) == 2


def test_lens_curves_one_style_per_series_and_no_curve_across_sites(models, composite):
    result = logit_lens(models("llama"), composite, sites="sublayers", target=["y_t", "y_s1"])
    fig = lens_curves(result, site=None, metrics=("mean_target_prob", "kl"))
    assert not check_convention(fig)
    summary = lens_summary(result).table
    styles = {}
    for trace in fig.data:
        styles.setdefault(trace.name, (trace.line.color, trace.line.dash, trace.marker.symbol))
        points = list(zip(trace.x, trace.y))
        sites = set()
        for x, _y in points:
            match = summary[(summary["depth"] == x)]
            sites |= set(match["site"])
        assert len(sites) == 1, f"{trace.name} joins points of {sorted(sites)}"
        assert list(trace.x) == sorted(trace.x)
    assert len(set(styles.values())) == len(styles), f"two series share a style: {styles}"


def test_relation_evidence_panels_titled_and_rates_over_their_range(models):
    facts = checks.corpus_prompts("factual", 4)
    fig = relation_evidence(models("llama"), facts, top_k=3, window=1, sites=("mlp_out",)).figure()
    assert not check_convention(fig), check_convention(fig)
    for axis in (fig.layout.xaxis, fig.layout.yaxis, fig.layout.xaxis2, fig.layout.yaxis2, fig.layout.xaxis3,
                 fig.layout.yaxis3):
        assert axis.title.text
    rate_axis = fig.layout.yaxis
    assert "attribute rate" in rate_axis.title.text
    assert rate_axis.range[0] <= 0 and rate_axis.range[1] >= 1, "a rate drawn over [0, 1], not zoomed into a cliff"


def test_patching_heatmap_says_mean_over_n_pairs_and_labels_only_shared_tokens(models):
    model = models("llama")
    clean, corrupt = checks.pair_prompts(model, "composite", 3)
    result = activation_patching(model, clean, corrupt, sites=("resid_pre",), layers=[0, 1], positions="all")
    fig = result.figure()
    assert not check_convention(fig)
    n = result.table["prompt_id"].nunique()
    assert f"mean over {n} prompt pair" in _title(fig)
    t = result.table[result.table["site"] == "resid_pre"]
    same_len = t.groupby("prompt_id")["position"].max().nunique() == 1
    col = "position" if same_len else "pos_from_end"
    for label in fig.data[0].x:
        number, _, token = str(label).partition(" ")
        key = int(number) if same_len else -int(number) - 1
        tokens = set(t[t[col] == key]["token"])
        if token:
            assert len(tokens) == 1 and repr(next(iter(tokens))) == token, f"{label} names one pair's token"
        else:
            assert len(tokens) > 1, f"column {label}: every pair has one token there; name it"


def test_block_experts_points_are_zoomed_to_their_spread(models):
    model = models("qwen2_moe")
    facts = checks.corpus_prompts("factual", 4)
    fig = block_experts(model, facts, [(0, 0), (1, 1)], controls=2).figure()
    assert not check_convention(fig)
    assert all(t.type == "scatter" and t.mode == "markers" for t in fig.data), "points, not bars from 0"
    low, high = [], []  # each point's extent, with its error bar
    for t in fig.data:
        errors = list(t.error_y.array) if t.error_y is not None and t.error_y.array is not None else [0.0] * len(t.y)
        low += [v - e for v, e in zip(t.y, errors)]
        high += [v + e for v, e in zip(t.y, errors)]
    lo, hi = fig.layout.yaxis.range
    assert lo <= min(low) and hi >= max(high), "every point and error bar is inside the axis"
    spread = max(high) - min(low)
    if spread > 0:
        assert spread / (hi - lo) >= 0.5, "the points' spread fills most of the axis"
