"""The organism findings the README quotes as a mean over prompts, each with its 95 % bootstrap interval
(BCa, prompts resampled, seed 0: :meth:`interp.Result.aggregate`), computed on the shipped organisms.

Run: ``python docs/findings.py`` prints each finding as the README writes it; ``python docs/findings.py --check``
exits 1 unless every one of them appears in README.md word for word (tests/test_findings.py runs that check).
About 20 CPU-seconds (one logit-lens pass over 120 prompts of the dense organism).

Findings:

- ``lens``: the logit lens (recomputed final norm) on the 120 held-out 5-shot composite prompts of
  docs/measure_lens.py (the same seeded sample): the share of prompts whose top-1 decoded token after blocks 0, 1
  and 4 is y_t's first token.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CI, N_BOOT, SEED = 0.95, 2000, 0
LENS_BLOCKS = (0, 1, 4)


def interval_text(mean: float, low: float, high: float, *, percent: bool = False) -> str:
    """``24 % [17, 32]`` (percent) or ``0.47 [0.30, 0.64]``: the mean and its interval, as the README writes them."""
    if percent:
        return f"{100 * mean:.0f} % [{100 * low:.0f}, {100 * high:.0f}]"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def lens_prompts() -> list[dict[str, Any]]:
    """docs/measure_lens.py's sample: 120 held-out N-shot composite prompts (N > 0), seeded."""
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    records = load_jsonl(CORPUS_DIR / "composite.jsonl")
    comp = [r for r in records if r["kind"] == "composite" and r["split"] == "heldout" and r["n_shot"] > 0]
    return random.Random(0).sample(comp, min(120, len(comp)))


def lens_finding(model: Any = None) -> str:
    import interp
    from interp.methods.lens import logit_lens
    from interp.organisms import organism_dir

    m = model if model is not None else interp.load_model(organism_dir("dense"), device="cpu")
    prompts = lens_prompts()
    res = logit_lens(m, prompts, target=("y_t",), top_k=5, batch_size=32)
    agg = res.aggregate(ci=CI, n_boot=N_BOOT, seed=SEED).table.set_index("layer")
    acc = agg[["accuracy", "accuracy_ci_low", "accuracy_ci_high"]]
    parts = [f"{interval_text(*acc.loc[b], percent=True)} after block {b}" for b in LENS_BLOCKS]
    return (f"y_t is top-1 for {', '.join(parts)} (mean [95 % CI] over the {len(prompts)} prompts, "
            "`python docs/findings.py`)")


def findings() -> dict[str, str]:
    """Every finding, by name, as the README writes it."""
    return {"lens": lens_finding()}


def main(argv: list[str]) -> int:
    found = findings()
    if "--check" in argv:
        readme = (ROOT / "README.md").read_text()
        missing = {k: v for k, v in found.items() if v not in readme}
        for k, v in missing.items():
            print(f"README.md does not quote the {k} finding as computed:\n  {v}")
        return 1 if missing else 0
    for k, v in found.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
