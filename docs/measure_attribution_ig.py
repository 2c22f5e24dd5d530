"""How well attribution patching ranks places like exact patching does, on the dense organism, for plain attribution
patching (ig_steps=1, the issue's one backward) and the EAP-IG path average (ig_steps=2, 4, 8): Spearman over every
(pair, place) row and over places (both sides averaged over the pairs) between activation patching's ``effect``
and the ``attribution`` that estimates it, for 12 held-out factual pairs and 12 composite N-shot pairs, sites z
and resid_pre. The README table "Attribution vs exact patching" comes from here.
Run: python docs/measure_attribution_ig.py (about 20 seconds on 2 cores)."""

import pandas as pd

import interp
from interp.organisms import organism_dir
from interp.organisms.pairs import composite_pairs, factual_pairs

KEYS = ["prompt_id", "site", "layer", "head", "position"]


def spearman(x: pd.Series, y: pd.Series) -> float:
    return float(x.rank().corr(y.rank()))


m = interp.load_model(organism_dir("dense"))
rows = []
for name, make in (("factual", factual_pairs), ("composite", composite_pairs)):
    clean, corrupt = make(m, 12)
    for site in ("z", "resid_pre"):
        exact = interp.activation_patching(m, clean, corrupt, sites=site, progress=False).table
        for steps in (1, 2, 4, 8):
            est = interp.attribution_patching(m, clean, corrupt, sites=site, ig_steps=steps, progress=False).table
            j = exact.merge(est, on=KEYS, suffixes=("", "_est"))
            places = [k for k in KEYS[2:] if site == "z" or k != "head"]
            mean = j.groupby(places, dropna=False)[["effect", "attribution"]].mean()
            rows.append({"pairs": name, "site": site, "ig_steps": steps, "rows": len(j),
                         "per_row": spearman(j["effect"], j["attribution"]),
                         "per_place": spearman(mean["effect"], mean["attribution"])})
            print(rows[-1], flush=True)
table = pd.DataFrame(rows).pivot_table(index=["pairs", "site"], columns="ig_steps", values=["per_row", "per_place"])
with pd.option_context("display.width", 200, "display.precision", 3):
    print(table)
