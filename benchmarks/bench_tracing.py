"""Causal tracing: batched restorations (interp.causal_trace through run_variants) against the naive loop (one
forward of `samples` rows per restoration, same noise), on 50 facts of the dense organism (or, while it is not
shipped, 50 prompts on a random tiny Llama, tracing its own argmax). Prints both times (process CPU time,
robust on a shared machine, and wall time), the ratios, and the largest
difference between the two (they must agree to 1e-5).

    python benchmarks/bench_tracing.py [--facts 50] [--samples 10] [--threads 1] [--model DIR --corpus FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import interp
from interp.activations.sites import hook_name
from interp.activations.variants import forward
from interp.methods.tracing import (
    SITES,
    _restore,
    causal_trace,
    corrupted_positions,
    embedding_noise,
    window_layers,
)
from interp.organisms import CORPUS_DIR, REPO_ROOT, organism_dir
from interp.prompts import encode, make_batch


def load(n_facts: int, model_dir: str | None = None, corpus: str | None = None):
    dense = Path(model_dir) if model_dir else organism_dir("dense")
    if (dense / "config.json").exists():
        m = interp.load_model(dense, device="cpu")
        path = REPO_ROOT / "data" / "factual.jsonl"
        path = Path(corpus) if corpus else path if path.exists() else CORPUS_DIR / "factual.jsonl"
        if path.exists():
            recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        else:  # the corpus is generated from its seed when its files are not written out
            from interp.organisms.corpus import build_factual, build_world

            recs = build_factual(build_world())
        held = [r for r in recs if r.get("split") == "heldout"]
        step = max(1, len(held) // (3 * n_facts))
        pool = held[::step]
        probe = causal_trace(m, pool, samples=1, sites="resid_post", window=1)  # cheap pass to find the known facts
        kept = set(probe.table["prompt_id"])
        facts = [r for r in pool if r["id"] in kept][:n_facts]
        return m, facts, "target", f"organism {dense}, {len(facts)} known held-out facts"
    from interp.model.fixtures import build_tiny_model

    path = build_tiny_model("llama", tempfile.mkdtemp() + "/llama")
    m = interp.load_model(path, device="cpu")
    names = ["France", "Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Anna", "David"]
    templates = ["The capital of {} is", "{} went to the store and", "Q: where does {} live?\nA:",
                 "User: tell me about {}\nAssistant:", "{} was born in the city of"]
    facts = [{"id": f"r{i}", "prompt": t.format(n), "subject": n, "target": " x"}
             for i, (t, n) in enumerate((t, n) for t in templates for n in names)][:n_facts]
    return m, facts, None, "random tiny Llama fixture (organism not shipped yet; tracing its own argmax)"


def naive(m, facts, target, samples, noise_std, seed, window):
    """One forward per restoration (rows = the corrupted copies), no batching across restorations."""
    enc = encode(m, facts, targets=[target] if target is not None else [], spans=["subject"])
    out = {}
    n_layers = m.info.n_layers
    for k, rec in enumerate(facts):
        item, span = enc.items[k], enc.spans["subject"][k]
        cols = corrupted_positions(len(item), span, item.bos, "subject")
        gen = torch.Generator().manual_seed(seed)
        nz = torch.randn(samples, len(cols), m.info.d_model, generator=gen) * noise_std
        batch = make_batch(m, enc, [k])
        names = [hook_name(site, ly) for site in SITES for ly in range(n_layers)]
        logits, clean = forward(m, batch, read=names)
        target_id = int(enc.targets[target][k]) if target is not None else int(logits[0].argmax())
        rep = batch.repeat(samples)
        base = embedding_noise(cols, nz)
        for t in range(len(item)):
            for layer in range(n_layers):
                for site in SITES:
                    lo, hi = (layer, layer + 1) if site == "resid_post" else window_layers(layer, window, n_layers)
                    iv = interp.Intervention(tuple(_restore(hook_name(site, ly), clean[hook_name(site, ly)][0, t], t)
                                                   for ly in range(lo, hi)))
                    lg, _ = forward(m, rep, [base, iv])
                    out[(rec["id"], site, layer, t)] = float(lg.float().softmax(-1)[:, target_id].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=50)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--model", default=None, help="an organism directory (default data/organisms/dense)")
    ap.add_argument("--corpus", default=None, help="its factual JSONL (default data/factual.jsonl or the corpus)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m, facts, target, what = load(args.facts, args.model, args.corpus)
    print(f"model: {what}; {m.info.n_layers} layers, d_model {m.info.d_model}; samples={args.samples}, "
          f"torch threads={args.threads}")
    w0, c0 = time.perf_counter(), time.process_time()
    res = causal_trace(m, facts, samples=args.samples, target=target, window=args.window, seed=0)
    w_batched, t_batched = time.perf_counter() - w0, time.process_time() - c0
    kept = [r for r in facts if r["id"] in set(res.table["prompt_id"])]
    w0, c0 = time.perf_counter(), time.process_time()
    ref = naive(m, kept, target, args.samples, res.meta["noise_std"], 0, args.window)
    w_loop, t_loop = time.perf_counter() - w0, time.process_time() - c0
    got = {(r.prompt_id, r.site, r.layer, r.position): r.target_prob for r in res.table.itertuples()}
    worst = max(abs(got[k] - v) for k, v in ref.items())
    n_restorations = len(ref)
    print(f"facts traced: {len(kept)} ({res.meta['n_dropped']} dropped), restorations: {n_restorations}")
    print(f"CPU time (this process; robust on a shared machine): batched (causal_trace) {t_batched:.2f} s, "
          f"naive loop {t_loop:.2f} s, ratio {t_loop / t_batched:.1f}x")
    print(f"wall time: batched {w_batched:.2f} s, naive loop {w_loop:.2f} s, ratio {w_loop / w_batched:.1f}x")
    print(f"max |batched - loop| over all restorations: {worst:.2e}")


if __name__ == "__main__":
    main()
