"""interp's logit and tuned lens against the tuned-lens library (github.com/AlignmentResearch/tuned-lens), both ways.

    python docs/peers/compare_tuned_lens.py [--arch gpt2 llama] [--steps 20]

Needs tuned-lens installed beside interp (not interp's dependency; docs/peers.md says in which environment it ran).
On each tiny fixture (interp.model.fixtures) it prints the largest absolute differences of:

(a) a lens trained by interp's ``train_tuned_lens`` (a few steps; at ``resid_pre``, which maps one to one, and at
    the default ``resid_post``, whose translator l is tuned-lens's l + 1), saved with
    ``TunedLens.save(..., layout="tuned-lens")`` and loaded by tuned-lens's ``TunedLens.from_model_and_pretrained``:
    tuned-lens's log-probabilities ``lens(hidden_states[i], i)`` against interp's ``decode(lens.translate(h, l))``
    on the same hidden states, every layer and position; and against the columns of interp's
    ``logit_lens(..., lens=...)`` table (target log-probability, KL to the model's output, entropy; every position);
(b) tuned-lens's ``LogitLens`` against interp's ``logit_lens(norm="recompute")`` at resid_pre and resid_post
    (the last resid_post against the model's own output, which is what tuned-lens decodes there);
(c) a lens made by tuned-lens (``TunedLens.from_model``, its translators set to seeded random values), saved by
    its ``save`` and read by interp's ``TunedLens.load`` at ``site="resid_pre"`` and ``"resid_post"``: interp's
    ``logit_lens`` table against tuned-lens's decoding.

Nothing of tuned-lens is copied: its public classes are imported and called.

tuned-lens 0.2.0 installs beside TransformerLens 4.3 but its ``model_surgery.get_final_norm`` /
``get_transformer_layers`` test ``isinstance(model, transformer_lens.HookedTransformer)`` whenever TransformerLens
imports, and TransformerLens 4 raises ImportError on that name; the script sets tuned-lens's module flag
``model_surgery._transformer_lens_available = False`` (it only gives Hugging Face models to tuned-lens) and says so.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import interp
from interp.methods.lens.tuned import TunedLens
from interp.model.decode import decode
from interp.model.fixtures import build_all_tiny_models
from interp.prompts import tokenize

TEXTS = ["The Eiffel Tower is in the city of Paris, which is in France.",
         "Megan Rapinoe plays the sport of soccer for the United States.",
         "The quick brown fox jumps over the lazy dog again and again."]
PROMPTS = [{"id": "p0", "prompt": "The Eiffel Tower is in the city of", "target": " Paris"},
           {"id": "p1", "prompt": "Megan Rapinoe plays the sport of", "target": " soccer"}]


def hidden_states(m: interp.Model, hf: torch.nn.Module, text: str) -> tuple[list[int], tuple[torch.Tensor, ...],
                                                                               torch.Tensor]:
    ids = tokenize(m, text).ids
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_hidden_states=True)
    return ids, tuple(h[0] for h in out.hidden_states), out.logits[0].log_softmax(-1)


def table_diff(table, ref: dict) -> float:
    """Largest |interp table column - tuned-lens value| over rows; ref[(prompt_id, layer, position)] = logprobs."""
    worst = 0.0
    for r in table.itertuples():
        lp, final = ref[(r.prompt_id, r.layer, r.position)]
        p = lp.exp()
        kl = float((final.exp() * (final - lp)).sum())
        ent = float(-(p * lp).sum())
        worst = max(worst, abs(float(torch.tensor(r.target_prob).log()) - float(lp[r.target_id])),
                    abs(r.kl - kl), abs(r.entropy - ent))
    return worst


def tuned_lens_refs(m, hf, lens_fn, site: str) -> dict:
    """(prompt_id, layer, position) -> (tuned-lens log-probs there, the model's own log-probs), for ``site``'s
    layers that tuned-lens decodes (resid_pre l on hidden_states[l]; resid_post l on hidden_states[l + 1], the last
    one being the model's output)."""
    n = m.info.n_layers
    ref = {}
    for rec in PROMPTS:
        ids, hs, final = hidden_states(m, hf, rec["prompt"])
        for layer in range(n):
            i = layer if site == "resid_pre" else layer + 1
            with torch.no_grad():
                lp = final if i == n else lens_fn(hs[i], i).log_softmax(-1)
            for pos in range(len(ids)):
                ref[(rec["id"], layer, pos)] = (lp[pos], final[pos])
    return ref


def run(arch: str, model_dir: Path, work: Path, steps: int) -> None:
    from transformers import AutoModelForCausalLM
    from tuned_lens.nn import LogitLens
    from tuned_lens.nn import TunedLens as TLTunedLens

    m = interp.load_model(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    n = m.info.n_layers
    print(f"[{arch}] {n} layers, d_model {m.info.d_model}; prepend_bos={m.info.prepends_bos}")

    # (a) interp-trained lenses read by tuned-lens
    for site in ("resid_pre", "resid_post"):
        lens = interp.train_tuned_lens(m, TEXTS, steps=steps, tokens_per_step=32, site=site, progress=False)
        d = lens.save(work / f"{arch}_{site}", layout="tuned-lens", model=m)
        theirs = TLTunedLens.from_model_and_pretrained(hf, lens_resource_id=str(d)).eval()
        worst, cells = 0.0, 0
        for text in TEXTS:
            ids, hs, _ = hidden_states(m, hf, text)
            for layer in range(n):
                i = layer if site == "resid_pre" else layer + 1
                if i == n:  # tuned-lens has no translator on the final residual (the layout drops interp's)
                    continue
                with torch.no_grad():
                    tl_lp = theirs(hs[i], i).log_softmax(-1)
                    ours = decode(m, lens.translate(hs[i], layer), output="logprobs")
                worst, cells = max(worst, float((tl_lp - ours).abs().max())), cells + len(ids)
        print(f"(a) interp-trained {site} lens ({steps} steps) loaded by tuned-lens, same hidden states: "
              f"{cells} positions x vocab, max abs diff in log-prob {worst:.2e}")
        layers = range(n) if site == "resid_pre" else range(n - 1)
        t = interp.logit_lens(m, PROMPTS, sites=site, lens=lens, positions="all").table
        t = t[t["layer"].isin(list(layers))]
        ref = tuned_lens_refs(m, hf, theirs, site)
        print(f"(a) ... vs interp's logit_lens(lens=...) table: {len(t)} rows, max abs diff (target log-prob, "
              f"kl, entropy) {table_diff(t, ref):.2e}")

    # (b) logit lens
    ll = LogitLens.from_model(hf).eval()
    for site in ("resid_pre", "resid_post"):
        t = interp.logit_lens(m, PROMPTS, sites=site, norm="recompute", positions="all").table
        print(f"(b) tuned-lens LogitLens vs logit_lens(norm='recompute') {site}: {len(t)} rows, max abs diff "
              f"(target log-prob, kl, entropy) {table_diff(t, tuned_lens_refs(m, hf, ll, site)):.2e}")

    # (c) a tuned-lens lens read by interp
    made = TLTunedLens.from_model(hf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in made.layer_translators.parameters():  # not made.parameters(): that holds its unembed copy too
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    made = made.eval()
    made.save(work / f"{arch}_made_by_tuned_lens")
    for site in ("resid_pre", "resid_post"):
        ours = TunedLens.load(work / f"{arch}_made_by_tuned_lens", site=site, model=m)
        t = interp.logit_lens(m, PROMPTS, sites=site, lens=ours, positions="all").table
        print(f"(c) lens made and saved by tuned-lens, TunedLens.load(site={site!r}) -> logit_lens: {len(t)} rows, "
              f"max abs diff (target log-prob, kl, entropy) {table_diff(t, tuned_lens_refs(m, hf, made, site)):.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    import importlib.metadata as md

    import tuned_lens.model_surgery as surgery

    if getattr(surgery, "_transformer_lens_available", False):
        surgery._transformer_lens_available = False
        print("tuned_lens.model_surgery._transformer_lens_available set to False (it looks up "
              "transformer_lens.HookedTransformer, removed in TransformerLens 4)")

    print("tuned-lens", md.version("tuned-lens"), "transformer-lens", md.version("transformer-lens"),
          "transformers", md.version("transformers"), "torch", torch.__version__)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_all_tiny_models(Path(tmp) / "tiny", archs=args.arch)
        for arch in args.arch:
            run(arch, Path(dirs[arch]), Path(tmp), args.steps)


if __name__ == "__main__":
    main()
