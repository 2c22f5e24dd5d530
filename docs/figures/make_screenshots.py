"""Before / after screenshots of the figures issue #17 fixed (docs/figures/README.md lists them).

Renders each figure on the shipped organisms (data/organisms/) with kaleido and the system Chromium, 760 px wide
(a figure that fixes its own width is laid out at that width, the defect, and scaled down to 760 px), and writes
``<name>-<label>.png`` into ``--out``. Run it once with the code before the change and once with the code after:

    git worktree add /tmp/before <commit before the change>
    PYTHONPATH=/tmp/before .venv/bin/python docs/figures/make_screenshots.py --label before \
        --demo-report BEFORE_DEMO/index.html
    .venv/bin/python docs/figures/make_screenshots.py --label after --demo-report AFTER_DEMO/index.html
    git worktree remove /tmp/before

where BEFORE_DEMO / AFTER_DEMO are ``interp demo --quick --out DIR`` reports written by each version (the first
with ``PYTHONPATH=/tmp/before``).

The script only calls the public API (the methods, ``Result.figure``, ``lens_curves``) and the demo's section
builders, so one script renders both versions; which ``interp`` it imported is printed. Cost: a few minutes on
2 CPU cores (small prompt sets; see each builder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "data"
WIDTH = 760  # px: small enough for a review page, wide enough to read the ticks


def _ctx() -> Any:
    from interp.figures.report import DemoContext

    return DemoContext(data_dir=DATA, quick=True)


def lens_heatmap(ctx: Any) -> Any:
    """logit_lens at every position of three composite prompts: the registered figure (the heatmap)."""
    from interp.methods.lens import logit_lens

    comp = ctx.prompts("composite", n=3, kind="composite", n_shot=5)
    return logit_lens(ctx.dense, comp, positions="all", target=("y_t", "y_s1", "y_s2")).figure()


def lens_curves(ctx: Any) -> Any:
    """logit_lens with sites="sublayers" over 8 composite prompts, every site drawn (site=None)."""
    from interp.methods.lens import lens_curves as curves
    from interp.methods.lens import logit_lens

    comp = ctx.prompts("composite", n=8, kind="composite", n_shot=5)
    result = logit_lens(ctx.dense, comp, sites="sublayers", target=("y_t", "y_s1"))
    return curves(result, site=None, metrics=("mean_target_prob", "kl"))


def relation_evidence(ctx: Any) -> Any:
    """relation_evidence on 8 held-out facts (attn_out and mlp_out knockouts, window 2)."""
    from interp.methods.relation_evidence import relation_evidence as run

    facts = ctx.prompts("factual", n=8)
    return run(ctx.dense, facts, top_k=5, window=2, sites=("mlp_out", "attn_out")).figure()


def _pairs(ctx: Any, n: int) -> tuple[list, list]:
    """Clean / corrupt facts of one template and one token length, with different targets (as the demo pairs)."""
    from interp.prompts import tokenize

    groups: dict = {}
    for r in ctx.prompts("factual"):
        key = (r["prompt"].replace(r["subject"], "{}"), len(tokenize(ctx.dense, r["prompt"]).ids))
        groups.setdefault(key, []).append(r)
    clean, corrupt = [], []
    for rs in sorted(groups.values(), key=len, reverse=True):
        for c, k in zip(rs[0::2], rs[1::2]):
            if c["target"] != k["target"]:
                clean.append(c)
                corrupt.append(k)
    return clean[:n], corrupt[:n]


def patching_heatmap(ctx: Any) -> Any:
    """activation_patching of resid_pre over 4 clean / corrupt fact pairs: the registered figure."""
    from interp.methods.patching import activation_patching

    clean, corrupt = _pairs(ctx, 4)
    return activation_patching(ctx.dense, clean, corrupt, sites=("resid_pre",), metric="norm_logit_diff").figure()


def block_experts(ctx: Any) -> Any:
    """block_experts on one relation's held-out facts: its 10 top experts (expert_attribution) and 3 controls."""
    from interp.methods.moe import expert_attribution
    from interp.methods.moe_blocking import block_experts as run

    facts = ctx.prompts("factual", n=32)
    attr = expert_attribution(ctx.moe, facts, top_neurons=5)
    task = facts[0]["task"]
    return run(ctx.moe, facts.filter(task=task), attr.top_experts(10, task=task), controls=3).figure()


def demo_asr(ctx: Any) -> Any:
    """The demo's attack-success figure (its safety section, quick configuration)."""
    from interp.figures.demo_sections import safety_heads_section

    last = safety_heads_section(ctx).figures[-1]
    return getattr(last, "figure", last)  # a DemoFigure (its figure and caption) or, before #17, a bare figure


FIGURES: dict[str, Callable[[Any], Any]] = {
    "lens-heatmap": lens_heatmap, "lens-curves": lens_curves, "relation-evidence": relation_evidence,
    "patching-heatmap": patching_heatmap, "block-experts": block_experts, "demo-asr": demo_asr,
}


def render(fig: Any, path: Path) -> Path:
    """One PNG, WIDTH px wide: laid out at WIDTH, or at the figure's own width when it fixes one (the defect)
    and then scaled down to WIDTH, so what overflowed a report shows as a shrunken, unreadable figure."""
    if not os.environ.get("BROWSER_PATH"):
        found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if found:
            os.environ["BROWSER_PATH"] = found
    width = fig.layout.width or WIDTH
    height = fig.layout.height or 480
    path.write_bytes(fig.to_image(format="png", width=width, height=height, scale=min(1.0, WIDTH / width)))
    return path


def section_shot(report: Path, title: str, path: Path, height: int = 900) -> Path:
    """A browser screenshot (Chromium, 800 px wide) of the top of one section of a demo report: its title, its
    text and its first figures, as a reader sees them."""
    import re
    import subprocess
    import tempfile

    page = report.read_text(encoding="utf-8")
    head = page[: page.index("<body>") + len("<body>")]
    found = [m for m in re.finditer(r"<section[^>]*>(.*?)</section>", page, re.S) if title in m.group(1)[:300]]
    if not found:
        raise SystemExit(f"{report}: no section titled {title!r}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "section.html"
        one.write_text(f"{head}{found[0].group(0)}</body></html>", encoding="utf-8")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp}/profile",
                        f"--window-size=800,{height}", "--virtual-time-budget=20000", f"--screenshot={path}",
                        one.as_uri()], capture_output=True, timeout=180, check=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="'before' or 'after': the file names' suffix")
    parser.add_argument("--out", default=str(HERE), help="the folder the PNGs go to (default: docs/figures/)")
    parser.add_argument("--only", nargs="*", choices=sorted(FIGURES), help="render only these figures")
    parser.add_argument("--demo-report", default=None,
                        help="a demo report's index.html (interp demo --quick): also screenshot its safety section's "
                             "top, to show its text over the stacked figures (demo-safety-text-<label>.png)")
    args = parser.parse_args(argv)
    import interp

    print(f"interp from {Path(interp.__file__).parent}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _ctx()
    for name in FIGURES if args.only is None else args.only:
        path = render(FIGURES[name](ctx), out / f"{name}-{args.label}.png")
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    if args.demo_report:
        path = section_shot(Path(args.demo_report), "Safety heads", out / f"demo-safety-text-{args.label}.png")
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
