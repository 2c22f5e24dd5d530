"""The speed goals of issue #19, in one place: each names the benchmark rows it reads, the measured number and
its bound; :func:`verdicts` computes goal met / missed from a run's rows (benchmarks/run_all.py prints them and
writes them under the table). A goal none of whose rows ran is reported as not measured."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from harness import Row


@dataclasses.dataclass(frozen=True)
class Goal:
    text: str  # what the issue asks, in words
    bench: str  # the benchmark file (stem)
    case_prefix: str  # the rows whose case name starts with this
    value: Callable[[Row], float | None]  # the measured number of a row
    label: str  # its name in the verdict
    bound: float  # met when value <= bound (every row)


def _extra(key: str) -> Callable[[Row], float | None]:
    return lambda r: (r.extra or {}).get(key)


GOALS: tuple[Goal, ...] = (
    Goal("MoE expert level within 3x of its floor", "bench_moe", "expert level", lambda r: r.vs_floor,
         "interp/floor", 3.0),
    Goal("attribution patching at least as fast as hand-written HF on the same batch",
         "bench_attribution_patching", "attribution", lambda r: r.vs_equal_work, "interp/equal work", 1.0),
    Goal("attribution patching: Python per table row below 0.2 us", "bench_attribution_patching", "attribution",
         _extra("table_build_us_per_row"), "us per row (wall)", 0.2),
    Goal("exact patching over positions within 1.3x of the causal-prefix floor", "bench_patching", "positions",
         lambda r: r.vs_floor, "interp/floor", 1.3),
    Goal("causal tracing within 1.3x of the causal-prefix floor", "bench_tracing", "trace", lambda r: r.vs_floor,
         "interp/floor", 1.3),
    Goal("head patching at the last position within 2x of its floor", "bench_patching", "heads_last",
         lambda r: r.vs_floor, "interp/floor", 2.0),
    Goal("logit lens within 1.5x of its floor at every position", "bench_lens", "logit_lens positions=all",
         lambda r: r.vs_floor, "interp/floor", 1.5),
    Goal("logit lens within 1.5x of its floor at the last position", "bench_lens", "logit_lens positions=last",
         lambda r: r.vs_floor, "interp/floor", 1.5),
)


def verdicts(rows: Sequence[Row], goals: Sequence[Goal] = GOALS) -> list[tuple[Goal, str, str]]:
    """(goal, "met" / "MISSED" / "not measured", the measured numbers in words) per goal."""
    out = []
    for g in goals:
        vals = [(r.case, g.value(r)) for r in rows if r.bench == g.bench and r.case.startswith(g.case_prefix)]
        vals = [(c, v) for c, v in vals if v is not None]
        if not vals:
            out.append((g, "not measured", f"no {g.bench} row '{g.case_prefix}...' in this run"))
            continue
        ok = all(v <= g.bound for _, v in vals)
        said = "; ".join(f"{g.label} {v:.3g} ({c})" for c, v in vals)
        out.append((g, "met" if ok else "MISSED", f"{said}; goal <= {g.bound:g}"))
    return out


def lines(rows: Sequence[Row]) -> list[str]:
    """One Markdown line per goal: the verdict, the goal, the numbers."""
    return [f"- goal {v}: {g.text}: {said}" for g, v, said in verdicts(rows)]
