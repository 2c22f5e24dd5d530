"""Exact activation patching: ``interp.activation_patching`` against the loop a researcher writes, the same loop
doing only interp's work, and the causal-prefix floor.

Two cases on the dense organism (data/organisms/dense) with composite pairs (the same demonstrations, another
query of the same token length, so clean and corrupt differ only in the last few tokens):

- ``positions``: resid_pre x every layer x every position (denoising, logit difference).
- ``heads_last``: z x every layer x head at the last position, on prompts about twice as long (two sets of
  demonstrations).

Sides (see benchmarks/harness.py):

- naive: one bridge ``run_with_hooks`` of the pair batch per place (layer x position, or layer x head), as in a
  tutorial: every place, including those where clean and corrupt are equal (patching them changes nothing);
- equal_work: the destination run, then only the places where some pair's clean and corrupt values differ
  (what interp runs), stacked as rows of full forwards (every column, every block) in chunks of interp's row
  budget;
- floor: one plain forward of the pair batch; floor_forwards = 2 (the clean and corrupt runs) + the sum over
  the places interp runs of (T - c) / T, c = the first column the place changes (the causal-prefix floor: a
  patch at column c cannot change columns before it).

Run: .venv/bin/python benchmarks/bench_patching.py [--quick]
"""

from __future__ import annotations

import torch
from harness import ROOT, Case, main

import interp
from interp.activations.sites import hook_name
from interp.activations.variants import default_max_rows
from interp.methods.patching import activation_patching
from interp.methods.patching_core import make_pairs, pair_batches
from interp.organisms.pairs import composite_pairs

MODEL = ROOT / "data" / "organisms" / "dense"


def long_pairs(model, n: int) -> tuple[list[dict], list[dict]]:
    """Composite pairs with a second set of demonstrations in front (the same text in clean and corrupt)."""
    clean, corrupt = composite_pairs(model, 2 * n)
    clean, corrupt, extra = clean[:n], corrupt[:n], clean[n:]
    out_c, out_k = [], []
    for i, (c, k) in enumerate(zip(clean, corrupt)):
        pre = extra[i % len(extra)]["prompt"].rsplit("\n\nQ:", 1)[0] + "\n\n"
        out_c.append({**c, "prompt": pre + c["prompt"]})
        out_k.append({**k, "prompt": pre + k["prompt"]})
    return out_c, out_k


class Setup:
    """The pair batch and every place of one case, with the clean and corrupt values of its hooks."""

    def __init__(self, model, clean, corrupt, site: str):
        self.m, self.clean, self.corrupt, self.site = model, clean, corrupt, site
        self.pairs = make_pairs(model, clean, corrupt, target="target", wrong=None, align=None, need_wrong=True)
        (self.cb, self.kb), = pair_batches(model, self.pairs, len(clean))
        i = model.info
        self.names = [hook_name(site, layer) for layer in range(i.n_layers)]
        self.tgt = self.pairs.target[self.kb.indices]
        self.wrong = self.pairs.wrong[self.kb.indices]
        with torch.no_grad():
            _, cache = model.bridge.run_with_cache(self.cb.input_ids, attention_mask=self.cb.attention_mask,
                                                   position_ids=self.cb.position_ids,
                                                   names_filter=lambda n: n in self.names)
            self.src = {n: cache[n].clone() for n in self.names}
            _, cache = model.bridge.run_with_cache(self.kb.input_ids, attention_mask=self.kb.attention_mask,
                                                   position_ids=self.kb.position_ids,
                                                   names_filter=lambda n: n in self.names)
            self.dst = {n: cache[n].clone() for n in self.names}
        width = self.kb.width
        first = torch.maximum(self.cb.offsets, self.kb.offsets)
        if site == "z":
            self.places = [(layer, width - 1, h) for layer in range(i.n_layers) for h in range(i.n_heads)]
            self.valid = {p: first <= width - 1 for p in self.places}
        else:
            self.places = [(layer, c, None) for layer in range(i.n_layers) for c in range(int(first.min()), width)]
            self.valid = {p: first <= p[1] for p in self.places}
        self.needed = [p for p in self.places if bool(self.differs(p).any())]

    def differs(self, place) -> torch.Tensor:
        layer, c, h = place
        a, b = self.src[self.names[layer]][:, c], self.dst[self.names[layer]][:, c]
        if h is not None:
            a, b = a[:, h], b[:, h]
        return (a != b).flatten(1).any(1) & self.valid[place]

    def floor_forwards(self) -> float:
        width = self.kb.width
        return 2.0 + sum((width - c) / width for _, c, _ in self.needed)

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        r = torch.arange(last.shape[0])
        k = last.shape[0] // len(self.tgt)
        return last[r, self.tgt.repeat(k)] - last[r, self.wrong.repeat(k)]

    def key(self, r: int, place) -> tuple:
        layer, c, h = place
        pid = self.pairs.clean.ids[self.kb.indices[r]]
        return (pid, layer, -1 if h is None else h, c - int(self.kb.offsets[r]))

    # --- the sides -------------------------------------------------------------------------------------------
    def interp(self) -> dict:
        positions = "last" if self.site == "z" else "all"
        res = activation_patching(self.m, self.clean, self.corrupt, sites=self.site, positions=positions,
                                  metric="logit_diff", batch_size=len(self.clean), progress=False)
        t = res.table
        heads = t["head"].fillna(-1).astype(int)
        return {(p, int(la), int(h), int(po)): float(v) for p, la, h, po, v in
                zip(t["prompt_id"], t["layer"], heads, t["position"], t["patched_metric"])}

    def naive(self) -> dict:
        """A tutorial loop: one hooked forward of the pair batch per place, every place."""
        out = {}
        kb, bridge = self.kb, self.m.bridge
        for place in self.places:
            layer, c, h = place
            name, valid = self.names[layer], self.valid[place]
            src = self.src[name]

            def hook(value, hook, c=c, h=h, valid=valid, src=src):
                value = value.clone()
                if h is None:
                    value[valid, c] = src[valid, c]
                else:
                    value[valid, c, h] = src[valid, c, h]
                return value

            with torch.no_grad():
                logits = bridge.run_with_hooks(kb.input_ids, fwd_hooks=[(name, hook)],
                                               attention_mask=kb.attention_mask, position_ids=kb.position_ids)
            vals = self.metric(logits)
            for r in torch.nonzero(valid)[:, 0].tolist():
                out[self.key(r, place)] = float(vals[r])
        return out

    def equal_work(self) -> dict:
        """Only the places where some pair differs, stacked as rows of full forwards (interp's row budget)."""
        out = {}
        kb, bridge, bsz = self.kb, self.m.bridge, self.kb.size
        per = max(1, default_max_rows(self.m, kb.width) // bsz)
        with torch.no_grad():  # a place where no pair differs has the destination's own metric
            own = self.metric(bridge(kb.input_ids, attention_mask=kb.attention_mask, position_ids=kb.position_ids))
        needed = set(self.needed)
        for place in self.places:
            if place not in needed:
                for r in torch.nonzero(self.valid[place])[:, 0].tolist():
                    out[self.key(r, place)] = float(own[r])
        for s in range(0, len(self.needed), per):
            chunk = self.needed[s:s + per]
            n = len(chunk)
            by_hook: dict[str, list] = {}
            for j, place in enumerate(chunk):
                by_hook.setdefault(self.names[place[0]], []).append((j, place))

            def make(name, items):
                src = self.src[name]

                def hook(value, hook):
                    value = value.clone()
                    for j, (_layer, c, h) in items:
                        rows = slice(j * bsz, (j + 1) * bsz)
                        if h is None:
                            value[rows, c] = src[:, c]
                        else:
                            value[rows, c, h] = src[:, c, h]
                    return value

                return hook

            ids = kb.input_ids.repeat(n, 1)
            with torch.no_grad():
                logits = bridge.run_with_hooks(ids, fwd_hooks=[(nm, make(nm, it)) for nm, it in by_hook.items()],
                                               attention_mask=kb.attention_mask.repeat(n, 1),
                                               position_ids=kb.position_ids.repeat(n, 1))
            vals = self.metric(logits).view(n, bsz)
            for j, place in enumerate(chunk):
                for r in torch.nonzero(self.valid[place])[:, 0].tolist():
                    out[self.key(r, place)] = float(vals[j, r])
        return out

    def floor(self) -> None:
        with torch.no_grad():
            self.m.bridge(self.kb.input_ids, attention_mask=self.kb.attention_mask, position_ids=self.kb.position_ids)


def check(got: dict, ref: dict) -> float:
    if set(got) != set(ref):
        raise AssertionError(f"interp and the loop patched different places ({len(got)} vs {len(ref)})")
    return max(abs(got[k] - v) for k, v in ref.items())


def cases(quick: bool = False) -> list[Case]:
    m = interp.load_model(MODEL, device="cuda" if torch.cuda.is_available() else "cpu")
    n = 4 if quick else 8
    out = []
    clean, corrupt = composite_pairs(m, n)
    s = Setup(m, clean, corrupt, "resid_pre")
    out.append(Case(
        "positions", s.interp, s.naive, s.equal_work, s.floor, s.floor_forwards(), check,
        note=f"{len(clean)} pairs x {s.kb.width} columns, resid_pre x {m.info.n_layers} layers; places: "
             f"{len(s.places)}, interp runs {len(s.needed)}"))
    clean, corrupt = long_pairs(m, n)
    h = Setup(m, clean, corrupt, "z")
    out.append(Case(
        "heads_last", h.interp, h.naive, h.equal_work, h.floor, h.floor_forwards(), check,
        note=f"{len(clean)} pairs x {h.kb.width} columns, z x {m.info.n_layers} layers x {m.info.n_heads} heads "
             f"at the last position; interp runs {len(h.needed)} of {len(h.places)}"))
    return out


if __name__ == "__main__":
    main(cases)
