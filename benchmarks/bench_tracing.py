"""Causal tracing: ``interp.causal_trace`` against the loop a researcher writes, the same loop doing only
interp's work, and the causal-prefix floor.

Facts: known held-out facts of the dense organism (data/organisms/dense, data/organisms/corpus/factual.jsonl)
of one token length T (so one floor forward is the same for every fact). Noise: one explicit seeded tensor per
fact, passed to causal_trace and used by both loops, so the three sides compute the same numbers.

Sides (see benchmarks/harness.py):

- naive: ROME's loop: per fact, one bridge ``run_with_hooks`` of the `samples` noised rows per token x layer x
  site (resid_post restores one layer, mlp_out / attn_out a window of layers), every token and every layer;
- equal_work: only the restorations interp runs (tokens from the first noised one on; a clipped window that
  repeats a neighbour's is run once), stacked as rows of full forwards (every column, every block) in chunks of
  interp's row budget;
- floor: one plain forward of the `samples` rows of every fact; floor_forwards = 1 (the corrupted run) +
  1 / samples (the clean run, one row) + the sum over the restorations interp runs of (T - t) / T (a
  restoration at token t cannot change the tokens before it).

Run: .venv/bin/python benchmarks/bench_tracing.py [--quick]
"""

from __future__ import annotations

import json
from collections import Counter

import torch
from harness import ROOT, Case, main

import interp
from interp.activations.sites import hook_name
from interp.activations.variants import default_max_rows
from interp.methods.tracing import SITES, causal_trace, corrupted_positions, subject_embedding_std, window_layers
from interp.organisms import CORPUS_DIR
from interp.prompts import encode, make_batch

MODEL = ROOT / "data" / "organisms" / "dense"


class Setup:
    def __init__(self, n_facts: int, samples: int, window: int):
        m = self.m = interp.load_model(MODEL, device="cuda" if torch.cuda.is_available() else "cpu")
        recs = [json.loads(x) for x in (CORPUS_DIR / "factual.jsonl").read_text().splitlines() if x.strip()]
        pool = [r for r in recs if r.get("split") == "heldout"][: 12 * n_facts]
        probe = causal_trace(m, pool, samples=1, sites="resid_post", window=1)  # which facts the model knows
        known = [r for r in pool if r["id"] in set(probe.table["prompt_id"])]
        lengths = {r["id"]: len(interp.prompts.tokenize(m, r["prompt"]).ids) for r in known}
        width, _ = Counter(lengths.values()).most_common(1)[0]
        self.facts = [r for r in known if lengths[r["id"]] == width][:n_facts]
        self.width, self.samples, self.window = width, samples, window
        self.enc = encode(m, self.facts, targets=["target"], spans=["subject"])
        scale = 3.0 * subject_embedding_std(m, [r["subject"] for r in self.facts])
        gen = torch.Generator().manual_seed(0)
        self.cols, self.noise = [], []
        for k in range(len(self.facts)):
            item = self.enc.items[k]
            cols = corrupted_positions(len(item), self.enc.spans["subject"][k], item.bos, "subject")
            self.cols.append(cols)
            self.noise.append(torch.randn(samples, len(cols), m.info.d_model, generator=gen) * scale)
        self.batches = [make_batch(m, self.enc, [k]) for k in range(len(self.facts))]
        self.clean = []
        n_layers = m.info.n_layers
        self.names = [hook_name(s, ly) for s in SITES for ly in range(n_layers)]
        with torch.no_grad():
            for b in self.batches:
                _, cache = m.bridge.run_with_cache(b.input_ids, names_filter=lambda n: n in self.names)
                self.clean.append({n: cache[n][0].clone() for n in self.names})
        self.needed = [self.restorations(k, needed_only=True) for k in range(len(self.facts))]

    def restorations(self, k: int, needed_only: bool) -> list[tuple[str, int, int, int, list[int]]]:
        """(site, lo, hi, t, table layers) of fact k: every token x layer x site, or only what interp runs."""
        n_layers = self.m.info.n_layers
        out: dict[tuple, list[int]] = {}
        first = min(self.cols[k])
        for t in range(self.width):
            if needed_only and t < first:
                continue
            for layer in range(n_layers):
                for site in SITES:
                    lo, hi = (layer, layer + 1) if site == "resid_post" else window_layers(layer, self.window,
                                                                                              n_layers)
                    key = (site, lo, hi, t) if needed_only else (site, lo, hi, t, layer)
                    out.setdefault(key, []).append(layer)
        return [(key[0], key[1], key[2], key[3], layers) for key, layers in out.items()]

    def floor_forwards(self) -> float:
        per_fact = [1.0 + 1.0 / self.samples + sum((self.width - t) / self.width for _, _, _, t, _ in need)
                    for need in self.needed]
        return sum(per_fact) / len(per_fact)

    def target_id(self, k: int) -> int:
        return int(self.enc.targets["target"][k])

    def hooks(self, k: int, items: list[tuple[int, tuple[str, int, int, int, list[int]]]], rows: int):
        """Bridge hooks: the noise on every copy, and restoration j on rows [j x samples, (j + 1) x samples)."""
        s, cols, nz = self.samples, self.cols[k], self.noise[k]
        copies = rows // s

        def noise_hook(value, hook):
            value = value.clone()
            value[:, cols] += nz.to(value.dtype).repeat(copies, 1, 1)
            return value

        by_hook: dict[str, list[tuple[int, int]]] = {}
        for j, (site, lo, hi, t, _layers) in items:
            for ly in range(lo, hi):
                by_hook.setdefault(hook_name(site, ly), []).append((j, t))

        def make(name, todo):
            clean = self.clean[k][name]

            def hook(value, hook):
                value = value.clone()
                for j, t in todo:
                    value[j * s:(j + 1) * s, t] = clean[t]
                return value

            return hook

        return [("hook_embed", noise_hook), *[(n, make(n, todo)) for n, todo in by_hook.items()]]

    def prob(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        return logits[:, -1].float().softmax(-1)[:, self.target_id(k)]

    # --- the sides -------------------------------------------------------------------------------------------
    def interp(self) -> dict:
        res = causal_trace(self.m, self.facts, samples=self.samples, window=self.window, noise=self.noise,
                           target="target", seed=0)
        t = res.table
        return {(p, s, int(la), int(po)): float(v) for p, s, la, po, v in
                zip(t["prompt_id"], t["site"], t["layer"], t["position"], t["target_prob"])}

    def naive(self) -> dict:
        out = {}
        for k, rec in enumerate(self.facts):
            b = self.batches[k]
            ids = b.input_ids.repeat(self.samples, 1)
            for item in self.restorations(k, needed_only=False):
                with torch.no_grad():
                    logits = self.m.bridge.run_with_hooks(ids, fwd_hooks=self.hooks(k, [(0, item)], self.samples))
                site, _, _, t, layers = item
                out[(rec["id"], site, layers[0], t)] = float(self.prob(logits, k).mean())
        return out

    def equal_work(self) -> dict:
        out = {}
        s = self.samples
        per = max(1, default_max_rows(self.m, self.width) // s)
        for k, rec in enumerate(self.facts):
            need, b = self.needed[k], self.batches[k]
            with torch.no_grad():
                ids = b.input_ids.repeat(s, 1)
                low = float(self.prob(self.m.bridge.run_with_hooks(ids, fwd_hooks=self.hooks(k, [], s)), k).mean())
            for a in range(0, len(need), per):
                chunk = list(enumerate(need[a:a + per]))
                rows = len(chunk) * s
                with torch.no_grad():
                    logits = self.m.bridge.run_with_hooks(b.input_ids.repeat(rows, 1),
                                                          fwd_hooks=self.hooks(k, chunk, rows))
                p = self.prob(logits, k).view(len(chunk), s).mean(1)
                for j, (site, _, _, t, layers) in chunk:
                    for layer in layers:
                        out[(rec["id"], site, layer, t)] = float(p[j])
            for t in range(min(self.cols[k])):  # before the noise: the corrupted run itself
                for layer in range(self.m.info.n_layers):
                    for site in SITES:
                        out[(rec["id"], site, layer, t)] = low
        return out

    def floor(self) -> None:
        with torch.no_grad():
            for b in self.batches:
                self.m.bridge(b.input_ids.repeat(self.samples, 1))


def check(got: dict, ref: dict) -> float:
    if set(got) != set(ref):
        raise AssertionError(f"interp and the loop traced different places ({len(got)} vs {len(ref)})")
    return max(abs(got[k] - v) for k, v in ref.items())


def cases(quick: bool = False) -> list[Case]:
    s = Setup(n_facts=2 if quick else 4, samples=5 if quick else 10, window=10)
    n_needed = sum(len(x) for x in s.needed)
    n_all = sum(len(s.restorations(k, needed_only=False)) for k in range(len(s.facts)))
    return [Case("trace", s.interp, s.naive, s.equal_work, s.floor, s.floor_forwards(), check,
                 note=f"{len(s.facts)} facts x {s.width} tokens, samples={s.samples}, window={s.window}; "
                      f"restorations: loop {n_all}, interp {n_needed}")]


if __name__ == "__main__":
    main(cases)
