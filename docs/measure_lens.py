"""The logit-lens and tuned-lens numbers of the README (Methods table, the `logit_lens` row) and of
tests/test_lens.py::test_dense_organism_lens_reading, on the shipped dense organism: 120 held-out 5-shot composite
prompts (seeded sample), logit lens with both normalisations, then a tuned lens (250 steps, the paper's settings)
trained on 400 training-split texts and compared with the logit lens by its held-out KL to the final distribution
(nats, every position of 60 of the prompts). Run: python docs/measure_lens.py (about 6 CPU-minutes, mostly
training the tuned lens)."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pandas as pd

import interp
from interp.methods.lens import lens_summary, lens_takeover, logit_lens, train_tuned_lens
from interp.organisms import CORPUS_DIR, organism_dir
from interp.organisms.corpus import load_jsonl

FIELDS = ("y_t", "y_s1", "y_s2")


def measure(model: Any = None) -> dict[str, Any]:
    """Every number printed by :func:`main`, with the results they come from."""
    m = model if model is not None else interp.load_model(organism_dir("dense"), device="cpu")
    records = load_jsonl(CORPUS_DIR / "composite.jsonl")
    comp = [r for r in records if r["kind"] == "composite" and r["split"] == "heldout" and r["n_shot"] > 0]
    comp = random.Random(0).sample(comp, min(120, len(comp)))
    t0 = time.time()
    recompute = logit_lens(m, comp, target=FIELDS, top_k=5, batch_size=32)
    frozen = logit_lens(m, comp, target=FIELDS, norm="frozen", top_k=5, batch_size=32)
    t_lens = time.time() - t0
    summary = pd.concat([recompute.aggregate().table, frozen.aggregate().table], ignore_index=True)

    # tuned lens: trained on training-split texts (all positions), evaluated on held-out composite prompts
    train = [r for r in records if r["split"] == "train" and r.get("target")]
    texts = [r["prompt"] + r["target"] for r in random.Random(1).sample(train, min(400, len(train)))]
    t1 = time.time()
    tuned = train_tuned_lens(m, texts, steps=250, progress=False)
    t_train = time.time() - t1
    held = comp[:60]
    all_logit = logit_lens(m, held, target=FIELDS, positions="all")
    all_tuned = logit_lens(m, held, target=FIELDS, positions="all", lens=tuned)
    kl_logit = lens_summary(all_logit, positions="all").table
    kl_tuned = lens_summary(all_tuned, positions="all").table
    tuned_last = lens_summary(logit_lens(m, comp, target=FIELDS, lens=tuned)).table
    kl_ci, kl_diff = kl_statistics(all_logit, all_tuned)
    return {
        "model": m, "prompts": comp, "recompute": recompute, "frozen": frozen, "summary": summary, "tuned": tuned,
        "kl_logit": kl_logit[kl_logit["target_field"] == "y_t"]["kl"].to_numpy(),
        "kl_tuned": kl_tuned[kl_tuned["target_field"] == "y_t"]["kl"].to_numpy(),
        "tuned_summary": tuned_last, "seconds_lens": t_lens, "seconds_train": t_train,
        "kl_ci": kl_ci, "kl_diff": kl_diff,
    }


def kl_statistics(logit: Any, tuned: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The held-out KL per lens and layer with its 95 % BCa interval over prompts (a prompt's positions resampled
    together), and tuned minus logit lens per layer, paired by prompt (each prompt's mean KL over its positions),
    with its interval and the sign-flip p-value (interp.Result.compare)."""
    rows = []
    for name, r in (("logit", logit), ("tuned", tuned)):
        agg = r.aggregate(positions="all", ci=0.95, seed=0).table
        rows.append(agg[agg["target_field"] == "y_t"][["layer", "kl", "kl_ci_low", "kl_ci_high"]].assign(lens=name))
    both = pd.concat([r.table[r.table["target_field"] == "y_t"] for r in (logit, tuned)], ignore_index=True)
    diff = interp.Result(both, {}).compare("lens", "logit", treatment="tuned", value="kl", by="layer", seed=0).table
    return pd.concat(rows, ignore_index=True), diff


def main() -> None:
    out = measure()
    summary, n = out["summary"], out["model"].info.n_layers
    cols = ["norm", "layer", "target_field", "accuracy", "mrr", "mean_target_prob", "median_target_rank", "kl"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[cols].round(4).to_string())
        print(lens_takeover(summary).to_string())
        print(lens_takeover(summary, metric="mrr").to_string())
        print(out["tuned_summary"][["layer", "target_field", "accuracy", "mrr", "mean_target_prob", "kl"]]
              .round(4).to_string())
    rec = summary[(summary["norm"] == "recompute")]
    y_t = rec[rec["target_field"] == "y_t"].set_index("layer")
    y_s1 = rec[rec["target_field"] == "y_s1"].set_index("layer")
    print(f"\n{len(out['prompts'])} held-out composite prompts, logit lens (recompute):")
    print("  y_t top-1 accuracy after blocks 0.." + str(n - 1) + ": "
          + " / ".join(f"{100 * a:.0f} %" for a in y_t["accuracy"]))
    print(f"  y_s1 top-1 accuracy at most {y_s1['accuracy'].max():.3f}; its mean probability peaks at "
          f"{y_s1['mean_target_prob'].max():.4f} (after block {int(y_s1['mean_target_prob'].idxmax())})")
    same = np.allclose(y_t["accuracy"], summary[(summary["norm"] == "frozen") & (summary["target_field"] == "y_t")]
                       ["accuracy"])
    print(f"  frozen norm gives the same y_t accuracies: {same}")
    print(f"held-out KL to the final distribution, nats, blocks 0..{n - 1} (all positions of 60 prompts):")
    print("  tuned lens " + " / ".join(f"{v:.2f}" for v in out["kl_tuned"]))
    print("  logit lens " + " / ".join(f"{v:.2f}" for v in out["kl_logit"]))
    print("  mean [95 % BCa interval over the 60 prompts]:")
    for name, g in out["kl_ci"].groupby("lens", sort=False):
        print(f"  {name} lens " + " / ".join(f"{k:.2f} [{lo:.2f}, {hi:.2f}]" for k, lo, hi in
                                             zip(g["kl"], g["kl_ci_low"], g["kl_ci_high"])))
    d = out["kl_diff"]
    print("  tuned - logit, paired by prompt: " + " / ".join(
        f"{v:.2f} [{lo:.2f}, {hi:.2f}] p={p:.2g}" for v, lo, hi, p in
        zip(d["difference"], d["difference_ci_low"], d["difference_ci_high"], d["p_value"])))
    print(f"timings: logit lens x2 {out['seconds_lens']:.1f} s, tuned lens training {out['seconds_train']:.1f} s on "
          f"{out['tuned'].info['train']['n_tokens']} tokens")


if __name__ == "__main__":
    main()
