"""The demo report's planted-site benchmark section (see :mod:`interp.organisms.benchmark`): a builder with the
signature of :mod:`interp.figures.demo_sections`' builders, to be listed in its ``FAMILY_SECTIONS``."""

from __future__ import annotations

from pathlib import Path

from .report import DemoContext, DemoSection

# written by `interp bench --out docs/benchmark` (seed 0, the full configuration)
COMMITTED_TABLE = Path("docs") / "benchmark" / "benchmark.csv"


def benchmark_figure(table):
    """Per organism x method: the behaviour with the found set ablated against random sets of the same size (mean,
    5-95 % of the draws as the error bar), beside nothing ablated."""
    import plotly.graph_objects as go

    labels = [f"{o} · {m}" for o, m in zip(table["organism"], table["method"])]
    fig = go.Figure()
    fig.add_bar(name="clean", x=labels, y=table["clean"])
    fig.add_bar(name="found set ablated", x=labels, y=table["effect_found"],
                error_y={"type": "data", "symmetric": False,
                         "array": (table["effect_found_hi"] - table["effect_found"]).tolist(),
                         "arrayminus": (table["effect_found"] - table["effect_found_lo"]).tolist()})  # fmt: skip
    fig.add_bar(name="random sets of the same size", x=labels, y=table["effect_random"],
                error_y={"type": "data", "symmetric": False,
                         "array": (table["effect_random_hi"] - table["effect_random"]).tolist(),
                         "arrayminus": (table["effect_random"] - table["effect_random_lo"]).tolist()})  # fmt: skip
    n = int(table["n_prompts"].max()) if len(table) else 0
    fig.update_layout(barmode="group", title=f"Ablating what each method found vs random sets (up to {n} held-out "
                                             "prompts per row; the metric of each row is in the table)",
                      xaxis_title="organism · method", yaxis_title="behaviour (accuracy or MRR)")  # fmt: skip
    return fig


def benchmark_section(ctx: DemoContext) -> DemoSection:
    import pandas as pd

    from ..organisms import REPO_ROOT
    from ..organisms.benchmark import run_benchmark, shipped_planted
    from ..results.result import Result

    committed = REPO_ROOT / COMMITTED_TABLE
    if ctx.quick and committed.exists():  # the quick report shows the committed table (`interp bench`, minutes)
        table = pd.read_csv(committed)
        meta = {"method": "benchmark", "parameters": {"source": str(COMMITTED_TABLE)}}
    else:
        available = shipped_planted(ctx.data_dir)
        table = run_benchmark(organisms=available, seed=0, quick=ctx.quick, n_random=20, data_dir=ctx.data_dir)
        meta = {"method": "benchmark", "parameters": {"organisms": list(available), "seed": 0, "quick": ctx.quick}}
    return DemoSection(
        "Planted sites: does each method find the mechanism a training recipe placed at a known site?",
        "The planted organisms' cards state where their mechanism is (refusal heads, the layer of an internal chain "
        "of thought, the routed experts of each domain). Each method that should find it runs on held-out prompts: "
        "precision@k and the ranks of the planted components, the layer error of the lens, attribution patching "
        "against exact patching, and the behaviour when the found set is ablated against random sets of the same "
        "size. The natural organisms (dense, moe) go through the same methods, with no ground truth.",
        [benchmark_figure(table)],
        {"planted_benchmark": Result(table, meta)},
    )
