"""The patching tables are built as columns (interp.methods.patching_core.PatchTable); this checks them against
a straightforward row-by-row build: one dict per (slot, row), the attribution contracted slot by slot, and
finish_table's sort. Same columns, dtypes, row order (duplicate places included) and values, on the llama (GQA),
gpt2 and MoE fixtures, in both directions, over several batches, with end-aligned pairs of different lengths."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from interp.activations import sites as S
from interp.methods import attribution_patching as AP
from interp.methods import patching_core as PC
from interp.methods.patching import COLUMNS as EXACT_COLUMNS
from interp.methods.patching import activation_patching

from .helpers import ids_of

CLEAN = [
    {"id": "fr", "prompt": "The capital of France is", "target": " Paris"},
    {"id": "mary", "prompt": "Mary went to the store and", "target": " to"},
    {"id": "long", "prompt": "Q: Mary went to the store\nA:", "target": " to"},
]
CORRUPT = [
    {"id": "es", "prompt": "The capital of Spain is", "target": " Madrid"},
    {"id": "john", "prompt": "John went to the store and", "target": " and"},
    {"id": "short", "prompt": "Mary went to the old store", "target": " and"},
]


def reference_slots(m, sites, layers, positions, src, dst):
    out = []
    for cols, valid in PC.position_slots(positions, src, dst):
        if bool(valid.any()):
            for site in sites:
                for layer in layers:
                    for h in range(m.info.n_heads) if site in S.HEAD_SITES else [None]:
                        out.append(PC.Slot(site, layer, h, cols, valid))
    return out


def key_of(slot, r, dst, pairs, m):
    i, c = dst.indices[r], int(slot.cols[r])
    tid = int(pairs.target[i])
    return {"prompt_id": pairs.clean.ids[i], "corrupt_id": pairs.corrupt.ids[i], "site": slot.site,
            "layer": slot.layer, "head": slot.head, "position": c - int(dst.offsets[r]),
            "pos_from_end": dst.width - 1 - c, "token": m.tokenizer.decode([int(dst.input_ids[r, c])]),
            "target_token": m.tokenizer.decode([tid]), "target_id": tid}


def reference(m, clean, corrupt, kind, *, sites, positions="all", metric="logit_diff", direction="denoising",
              layers=None, align=None, batch_size=8):
    """The table row by row: for every batch, slot and valid row, one dict."""
    m, pairs, site_list, pos, metric_v = PC.check_common(
        m, clean, corrupt, sites=sites, positions=positions, metric=metric, target="target", wrong=None,
        direction=direction, align=align, batch_size=batch_size, need_grad=kind == "attribution")
    layer_list = PC.check_layers(m, layers)
    rows = []
    for cb, kb in PC.pair_batches(m, pairs, batch_size):
        src, dst = (cb, kb) if direction == "denoising" else (kb, cb)
        slots = reference_slots(m, site_list, layer_list, pos, src, dst)
        if kind == "exact":
            clean_m, corr_m, patched = PC.run_exact(m, pairs, (cb, kb), slots, metric_v, direction)
            cm, km = clean_m.double(), corr_m.double()
            dm = km if direction == "denoising" else cm
            for slot, vals in zip(slots, patched):
                for r in torch.nonzero(slot.valid)[:, 0].tolist():
                    v, c, k = float(vals[r]), float(cm[r]), float(km[r])
                    rows.append({**key_of(slot, r, dst, pairs, m), "effect": v - float(dm[r]),
                                 "score": float(PC.score_of(metric_v, v, c, k)), "patched_metric": v,
                                 "clean_metric": c, "corrupt_metric": k})
            continue
        hooks = sorted({s.hook for s in slots})
        tgt, wr = pairs.target[dst.indices], pairs.wrong[dst.indices]
        ids = [pairs.clean.ids[i] for i in dst.indices]
        src_logits, src_store, dm, dst_acts, grads = AP.path_gradients(m, src, dst, hooks, metric_v, tgt, wr, ids, 1)
        sm = PC.raw_metric(metric_v, src_logits, tgt, wr, ids)
        cm, km = (sm, dm) if direction == "denoising" else (dm, sm)
        for slot in slots:
            r_all = torch.arange(dst.size)
            diff = src_store[slot.hook][r_all, slot.cols] - dst_acts[slot.hook][r_all, slot.cols]
            g = grads[slot.hook][r_all, slot.cols]
            if slot.head is not None:
                diff, g = diff[:, slot.head], g[:, slot.head]
            attr = (diff.double() * g.double()).sum(-1)
            for r in torch.nonzero(slot.valid)[:, 0].tolist():
                a, c, k = float(attr[r]), float(cm[r]), float(km[r])
                rows.append({**key_of(slot, r, dst, pairs, m), "attribution": a,
                             "estimate": float(PC.score_of(metric_v, float(dm[r]) + a, c, k)),
                             "exact": float("nan"), "clean_metric": c, "corrupt_metric": k})
    columns = EXACT_COLUMNS if kind == "exact" else AP.COLUMNS
    return PC.finish_table(rows, pairs.clean.ids, [*PC.KEY_COLUMNS, *columns])


def assert_same_table(got: pd.DataFrame, ref: pd.DataFrame, values) -> None:
    assert list(got.columns) == list(ref.columns)
    assert got.dtypes.to_dict() == ref.dtypes.to_dict()
    keys = [c for c in got.columns if c not in values]
    pd.testing.assert_frame_equal(got[keys], ref[keys], check_exact=True)
    pd.testing.assert_frame_equal(got[list(values)], ref[list(values)], check_exact=False, rtol=1e-12, atol=1e-12)


def configs(m):
    n = len(ids_of(m, CLEAN[0]["prompt"]))
    return [
        ("all sites, 2 batches", CLEAN[:2], CORRUPT[:2], {"sites": ("resid_pre", "attn_out", "mlp_out", "z"),
                                                          "batch_size": 1}),
        ("noising, normalised", CLEAN[:2], CORRUPT[:2], {"sites": ("z", "resid_post"), "direction": "noising",
                                                         "metric": "norm_logit_diff", "positions": [1, -1]}),
        # positions n - 1 and -1 are the same token of the n-token prompt: two rows with the same key
        ("end-aligned, duplicate places", CLEAN, CORRUPT, {"sites": ("resid_mid", "z"), "align": "end",
                                                           "positions": [0, n - 1, -1], "layers": [1],
                                                           "batch_size": 2}),
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2_moe"])
@pytest.mark.parametrize("kind", ["exact", "attribution"])
def test_table_equals_the_row_by_row_build(models, arch, kind):
    m = models[arch]
    for name, clean, corrupt, kw in configs(m):
        if kind == "exact":
            got = activation_patching(m, clean, corrupt, progress=False, **kw).table
        else:
            got = AP.attribution_patching(m, clean, corrupt, progress=False, **kw).table
        ref = reference(m, clean, corrupt, kind, **kw)
        assert len(ref) > 0, name
        if name.startswith("end-aligned"):
            assert ref.duplicated(list(PC.KEYS)).any(), "the duplicate-place case must produce duplicate keys"
        values = EXACT_COLUMNS if kind == "exact" else AP.COLUMNS
        assert_same_table(got, ref, values)
        assert got[list(values)].drop(columns=["exact"], errors="ignore").abs().to_numpy().max() > 1e-3, name
