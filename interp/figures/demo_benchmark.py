"""The demo report's planted-site benchmark section (see :mod:`interp.organisms.benchmark`): a builder with the
signature of :mod:`interp.figures.demo_sections`' builders, to be listed in its ``FAMILY_SECTIONS``."""

from __future__ import annotations

from pathlib import Path

from .report import DemoContext, DemoFigure, DemoSection

# written by `interp bench --out docs/benchmark --readme README.md` (seed 0, the full configuration)
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
    fig.update_layout(barmode="group", title=f"Found sets vs random sets of their size, ablated (<= {n} prompts a row)",
                      xaxis_title="organism · method", yaxis_title="behaviour (accuracy or MRR)")  # fmt: skip
    return fig


def benchmark_caption(table) -> str:
    """What the figure shows, in numbers read from the table: how many planted rows found the whole planted set,
    and the mean behaviour with the found sets ablated against random sets."""
    planted = table[table["planted"].astype(bool)]
    if not len(planted):
        return "No planted organism is shipped, so every row is a natural organism's (no ground truth)."
    exact = planted[planted["precision_at_k"] == 1.0]
    missed = planted[planted["precision_at_k"] < 1.0]
    text = (f"On the planted organisms, {len(exact)} of {len(planted)} method rows found the whole planted set "
            f"(precision@k 1.00)")
    if len(missed):
        text += "; missed in part: " + ", ".join(f"{o} {m} ({p:.2f})" for o, m, p in
                                                 zip(missed["organism"], missed["method"], missed["precision_at_k"]))
    text += (f". Ablating the found sets gives {planted['effect_found'].mean():.2f} on average, random sets of "
             f"the same size {planted['effect_random'].mean():.2f} (clean {planted['clean'].mean():.2f}).")
    return text


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
        "of thought, the routed experts of each domain, the MLP that writes the facts). Each method that should "
        "find it runs on held-out prompts: "
        "precision@k and the ranks of the planted components, the layer error of the lens, attribution patching "
        "against exact patching, and the behaviour when the found set is ablated against random sets of the same "
        "size. The natural organisms (dense, moe) go through the same methods, with no ground truth.",
        [DemoFigure(benchmark_figure(table), benchmark_caption(table))],
        {"planted_benchmark": Result(table, meta)},
    )
