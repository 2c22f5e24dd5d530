"""Peer check: interp's activation patching and logit lens against TransformerLens 4.3's own utilities, run on the
same TransformerBridge, on factual pairs of the dense organism (interp.organisms.pairs.factual_pairs).

What TransformerLens 4.3 provides and how it is used here (docs/peers.md has the commands and numbers):

- ``transformer_lens.patching``: ``get_act_patch_resid_pre``, ``get_act_patch_attn_out``,
  ``get_act_patch_mlp_out`` (whole sweeps: every layer x position) and ``generic_activation_patch`` with their
  ``layer_pos_head_vector_patch_setter`` on ``z`` (a subset of layer x position x head cells: the full per-head
  sweep is one forward per cell, too slow for a CI test). All work on a TransformerBridge; ``reduce="none"``
  keeps one value per pair, so pairs are compared one by one.
- ``ActivationCache.accumulated_resid`` (resid_pre of every layer, then the final resid_post) and
  ``ActivationCache.apply_ln_to_stack(..., layer=n_layers)``: with ``recompute_ln=True`` it applies the bridge's
  final norm to each layer afresh (interp's ``norm="recompute"``); without, it divides by the cached final-norm
  scale (interp's ``norm="frozen"``) and leaves the norm weight out, since the bridge keeps HF's unfolded weights,
  so the weight is multiplied in here (``bridge.ln_final``'s weight, one multiplication).
  ``accumulated_resid(apply_ln=True)`` itself is not that division on this bridge (it lands elsewhere, with or
  without ``pos_slice``; docs/peers/compare_transformer_lens.py prints how far), nor is TransformerLens's
  documented recipe (``enable_compatibility_mode()``, then ``accumulated_resid(apply_ln=True) @ W_U``), so
  neither is compared here.

The bridge is fed the same token ids interp builds (interp.prompts.tokenize: BOS as the bridge prepends it), all
pairs of one token length, so no padding enters TransformerLens's runs.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import torch

import interp
from interp.organisms.pairs import factual_pairs
from interp.prompts import tokenize

TOL = 1e-5  # float32 agreement: absolute for probabilities, relative to max(1, |value|) for logit differences


def _off(ours: float, theirs: float) -> float:
    """How far two values lie apart, in units of max(1, |theirs|) (logit differences run to tens of logits)."""
    return abs(ours - theirs) / max(1.0, abs(theirs))


@pytest.fixture(scope="module")
def organism():
    m = interp.load_model(interp.data_path("organisms/dense"))
    clean, corrupt = factual_pairs(m, 6)
    lengths = [len(tokenize(m, r["prompt"]).ids) for r in clean]
    keep = [i for i, n in enumerate(lengths) if n == Counter(lengths).most_common(1)[0][0]][:2]
    assert len(keep) >= 2
    clean, corrupt = [clean[i] for i in keep], [corrupt[i] for i in keep]
    ids = lambda recs: torch.tensor([tokenize(m, r["prompt"]).ids for r in recs])  # noqa: E731
    T = ids(clean).shape[1]
    first = lambda r: tokenize(m, r["prompt"] + r["target"]).ids[T]  # noqa: E731
    target = torch.tensor([first(r) for r in clean])
    wrong = torch.tensor([tokenize(m, c["prompt"] + k["target"]).ids[T] for c, k in zip(clean, corrupt)])
    return m, clean, corrupt, ids(clean), ids(corrupt), target, wrong


def _logit_diff(target, wrong):
    rows = torch.arange(len(target))

    def metric(logits):
        last = logits[:, -1]
        return last[rows, target] - last[rows, wrong]
    return metric


def test_activation_patching_equals_transformer_lens_patching(organism):
    import transformer_lens.patching as tp

    m, clean, corrupt, ct, kt, target, wrong = organism
    L, H, T = m.info.n_layers, m.info.n_heads, ct.shape[1]
    with torch.no_grad():
        _, cache = m.bridge.run_with_cache(ct)
    metric = _logit_diff(target, wrong)
    ours = interp.activation_patching(m, clean, corrupt, sites=("resid_pre", "attn_out", "mlp_out", "z"),
                                      metric="logit_diff", progress=False).table
    ours["pair"] = ours["prompt_id"].map({r["id"]: i for i, r in enumerate(clean)})
    worst, n = 0.0, 0
    sweeps = {"resid_pre": tp.get_act_patch_resid_pre, "attn_out": tp.get_act_patch_attn_out,
              "mlp_out": tp.get_act_patch_mlp_out}
    for site, fn in sweeps.items():
        theirs = fn(m.bridge, kt, cache, metric, reduce="none").values  # [layer, pos, pair]
        assert tuple(theirs.shape) == (L, T, len(clean))
        part = ours[ours["site"] == site]
        assert len(part) == L * T * len(clean)
        for r in part.itertuples():
            worst = max(worst, _off(r.patched_metric, float(theirs[r.layer, r.position, r.pair])))
            n += 1
    cells = pd.DataFrame([(L - 1, p, h) for p in range(T - 3, T) for h in range(H)] + [(0, T - 1, h) for h in
                                                                                       range(H)],
                         columns=["layer", "pos", "head_index"])
    theirs = tp.generic_activation_patch(m.bridge, kt, cache, metric, tp.layer_pos_head_vector_patch_setter, "z",
                                         index_df=cells, reduce="none").values  # [cell, pair]
    z = ours[ours["site"] == "z"].set_index(["layer", "position", "head", "pair"])["patched_metric"]
    for c, (layer, pos, head) in enumerate(cells.itertuples(index=False)):
        for pair in range(len(clean)):
            worst = max(worst, _off(float(z[(layer, pos, head, pair)]), float(theirs[c, pair])))
            n += 1
    print(f"\nactivation patching vs transformer_lens.patching: {n} cells, max diff / max(1, |value|) "
          f"{worst:.2e}")
    assert worst < TOL, worst
    spread = ours[ours["site"] == "resid_pre"]["patched_metric"]
    assert spread.max() - spread.min() > 0.1  # the patches move the metric: the comparison can fail


def test_logit_lens_equals_accumulated_resid(organism):
    m, clean, _corrupt, ct, _kt, target, _wrong = organism
    L = m.info.n_layers
    with torch.no_grad():
        logits, cache = m.bridge.run_with_cache(ct)
        acc = cache.accumulated_resid(pos_slice=-1)  # [L + 1, pair, d_model]: resid_pre 0..L-1, final resid_post
        recomputed = cache.apply_ln_to_stack(acc, layer=L, pos_slice=-1, recompute_ln=True)
        scaled = cache.apply_ln_to_stack(acc, layer=L, pos_slice=-1)  # / the cached final-norm scale
        weight = m.bridge.ln_final.original_component.weight
        b_u = getattr(m.bridge, "b_U", None)
        theirs = {}
        for norm, x in (("recompute", recomputed), ("frozen", scaled * weight)):
            lg = x @ m.bridge.W_U + (b_u if b_u is not None else 0)
            theirs[norm] = lg.double().log_softmax(-1)
    assert (theirs["recompute"][L] - logits[:, -1].double().log_softmax(-1)).abs().max() < TOL
    worst, n = 0.0, 0
    for norm in ("recompute", "frozen"):
        t = interp.logit_lens(m, clean, sites=("resid_pre", "resid_post"), norm=norm, target="target").table
        t["pair"] = t["prompt_id"].map({r["id"]: i for i, r in enumerate(clean)})
        for r in t.itertuples():
            if r.site == "resid_post" and r.layer != L - 1:
                continue
            k = L if r.site == "resid_post" else r.layer
            lp = theirs[norm][k, r.pair]
            worst = max(worst, abs(r.target_prob - float(lp[int(target[r.pair])].exp())),
                        abs(r.predicted_prob - float(lp.max().exp())))
            assert r.predicted_id == int(lp.argmax())
            n += 1
    print(f"\nlogit lens vs accumulated_resid: {n} rows, max abs diff in probability {worst:.2e}")
    assert worst < TOL, worst
