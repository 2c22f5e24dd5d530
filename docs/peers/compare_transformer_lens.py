"""interp against TransformerLens 4.3's own patching utilities and logit lens, on one TransformerBridge.

    .venv/bin/python docs/peers/compare_transformer_lens.py [--pairs 3] [--full-heads]

Runs here (TransformerLens is interp's dependency). On factual pairs of the dense organism of one token length
(interp.organisms.pairs.factual_pairs), it prints the cells compared and the largest absolute difference of:

- activation patching (logit difference, denoising) against ``transformer_lens.patching``'s
  ``get_act_patch_resid_pre`` / ``_attn_out`` / ``_mlp_out`` (every layer x position) and, per head,
  ``generic_activation_patch`` with ``layer_pos_head_vector_patch_setter`` on ``z`` (the last position's heads;
  ``--full-heads``: every layer x position x head, one forward per cell);
- the logit lens (probability of the target and of the top-1 token) against ``ActivationCache.accumulated_resid``
  put through ``apply_ln_to_stack(..., layer=n_layers)``: with ``recompute_ln=True`` for ``norm="recompute"``,
  without (the cached final-norm scale) times the final norm's weight for ``norm="frozen"``; and, for the record,
  ``accumulated_resid(apply_ln=True)`` times that weight, and TransformerLens's documented recipe
  (``enable_compatibility_mode()`` then ``accumulated_resid(apply_ln=True) @ W_U``), against ``norm="frozen"``.

The same comparison at 1e-5 runs in CI: tests/test_peer_transformer_lens.py.
"""

from __future__ import annotations

import argparse
from collections import Counter

import pandas as pd
import torch

import interp
from interp.organisms.pairs import factual_pairs
from interp.prompts import tokenize
from interp.results.provenance import package_version


def pairs_of_one_length(m: interp.Model, n: int) -> tuple[list[dict], list[dict]]:
    clean, corrupt = factual_pairs(m, 4 * n)
    lengths = [len(tokenize(m, r["prompt"]).ids) for r in clean]
    common = Counter(lengths).most_common(1)[0][0]
    keep = [i for i, k in enumerate(lengths) if k == common][:n]
    return [clean[i] for i in keep], [corrupt[i] for i in keep]


def main() -> None:
    import transformer_lens.patching as tp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--full-heads", action="store_true")
    args = ap.parse_args()
    m = interp.load_model(interp.data_path("organisms/dense"), device="cpu")
    clean, corrupt = pairs_of_one_length(m, args.pairs)
    ct = torch.tensor([tokenize(m, r["prompt"]).ids for r in clean])
    kt = torch.tensor([tokenize(m, r["prompt"]).ids for r in corrupt])
    L, H, T, P = m.info.n_layers, m.info.n_heads, ct.shape[1], len(clean)
    target = torch.tensor([tokenize(m, r["prompt"] + r["target"]).ids[T] for r in clean])
    wrong = torch.tensor([tokenize(m, c["prompt"] + k["target"]).ids[T] for c, k in zip(clean, corrupt)])
    rows = torch.arange(P)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1][rows, target] - logits[:, -1][rows, wrong]

    with torch.no_grad():
        logits, cache = m.bridge.run_with_cache(ct)
    ours = interp.activation_patching(m, clean, corrupt, sites=("resid_pre", "attn_out", "mlp_out", "z"),
                                      progress=False).table
    ours["pair"] = ours["prompt_id"].map({r["id"]: i for i, r in enumerate(clean)})
    report = []
    for site, fn in (("resid_pre", tp.get_act_patch_resid_pre), ("attn_out", tp.get_act_patch_attn_out),
                     ("mlp_out", tp.get_act_patch_mlp_out)):
        theirs = fn(m.bridge, kt, cache, metric, reduce="none").values
        part = ours[ours["site"] == site]
        diff = max(abs(r.patched_metric - float(theirs[r.layer, r.position, r.pair])) for r in part.itertuples())
        report.append((f"activation_patching {site}", len(part), diff))
    cells = [(ly, p, h) for ly in range(L) for p in range(T) for h in range(H)] if args.full_heads else \
        [(ly, T - 1, h) for ly in range(L) for h in range(H)]
    index = pd.DataFrame(cells, columns=["layer", "pos", "head_index"])
    theirs = tp.generic_activation_patch(m.bridge, kt, cache, metric, tp.layer_pos_head_vector_patch_setter, "z",
                                         index_df=index, reduce="none").values
    z = ours[ours["site"] == "z"].set_index(["layer", "position", "head", "pair"])["patched_metric"]
    diff = max(abs(float(z[(ly, p, h, i)]) - float(theirs[c, i])) for c, (ly, p, h) in enumerate(cells)
               for i in range(P))
    report.append(("activation_patching z (per head)", len(cells) * P, diff))

    with torch.no_grad():
        acc = cache.accumulated_resid(pos_slice=-1)
        weight = m.bridge.ln_final.original_component.weight
        b_u = getattr(m.bridge, "b_U", None)
        bias = b_u if b_u is not None else 0
        theirs_lens = {
            "recompute": (cache.apply_ln_to_stack(acc, layer=L, pos_slice=-1, recompute_ln=True) @ m.bridge.W_U
                          + bias).double().log_softmax(-1),
            "frozen": ((cache.apply_ln_to_stack(acc, layer=L, pos_slice=-1) * weight) @ m.bridge.W_U + bias)
            .double().log_softmax(-1),
            "frozen, accumulated_resid(apply_ln=True)": ((cache.accumulated_resid(apply_ln=True, pos_slice=-1)
                                                          * weight) @ m.bridge.W_U + bias).double().log_softmax(-1)}
        compat = interp.load_model(interp.data_path("organisms/dense"), device="cpu")
        compat.bridge.enable_compatibility_mode()
        _, cache_c = compat.bridge.run_with_cache(ct)
        theirs_lens["frozen, compatibility mode"] = (cache_c.accumulated_resid(apply_ln=True, pos_slice=-1)
                                                     @ compat.bridge.W_U).double().log_softmax(-1)
    for name, lp in theirs_lens.items():
        norm = name.split(",")[0]
        t = interp.logit_lens(m, clean, sites=("resid_pre", "resid_post"), norm=norm, target="target").table
        t = t[(t["site"] == "resid_pre") | (t["layer"] == L - 1)]
        k = [L if s == "resid_post" else ly for s, ly in zip(t["site"], t["layer"])]
        pair = t["prompt_id"].map({r["id"]: i for i, r in enumerate(clean)}).tolist()
        diff = max(max(abs(tp_ - float(lp[kk, i, int(target[i])].exp())), abs(pp - float(lp[kk, i].max().exp())))
                   for tp_, pp, kk, i in zip(t["target_prob"], t["predicted_prob"], k, pair))
        report.append((f"logit_lens {norm} vs accumulated_resid ({name})", len(t), diff))
    print(f"dense organism, {P} factual pairs of {T} tokens; TransformerLens "
          f"{package_version('transformer-lens')}")
    for what, n, d in report:
        print(f"{what:70s} {n:6d} cells  max abs diff {d:.2e}")


if __name__ == "__main__":
    main()
