"""The causal-tracing numbers of the README and tests/test_tracing.py: 24 held-out facts of the dense organism,
subject- and relation-corrupted, 5 samples, window 2.  Run: python docs/measure_organism_tracing.py (about a minute)."""

import pandas as pd

import interp
from interp.methods.tracing import causal_trace, trace_summary
from interp.organisms import CORPUS_DIR, organism_dir
from interp.organisms.corpus import load_jsonl

ROLES = ("last subject", "middle subject", "first subsequent", "last")
ROWS = [(s, r) for s in ("resid_post", "mlp_out", "attn_out") for r in ROLES]
m = interp.load_model(organism_dir("dense"))
held = [r for r in load_jsonl(CORPUS_DIR / "factual.jsonl") if r["split"] == "heldout"]
facts = held[:: len(held) // 24][:24]
for corruption in ("subject", "relation"):
    res = causal_trace(m, facts, corruption=corruption, samples=5, window=2)
    s = trace_summary(res)
    piv = s.pivot_table(index=["site", "role"], columns="layer", values="indirect_effect")
    print(f"\n== {corruption} corrupted: kept {res.meta['n_kept']}/{len(facts)}, mean total effect "
          f"{res.table.groupby('prompt_id')['total_effect'].first().mean():.3f}")
    with pd.option_context("display.width", 250, "display.precision", 3, "display.max_columns", 20):
        print(piv.loc[ROWS].round(3))
