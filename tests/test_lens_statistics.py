"""The lens's fused per-row statistics against their plain torch definitions: the block top-k (values exactly
those of torch.topk, with ties, -inf and NaN), the workspace-reused row statistics (a reused buffer never leaks
one layer's numbers into the next), and the final distribution read off a chunk's own logits."""

from __future__ import annotations

import pytest
import torch

from interp.methods.lens.statistics import FinalDistribution, Workspace, largest, row_statistics


@pytest.mark.parametrize(("n", "k"), [(n, k) for n in (5, 37, 1000, 3694) for k in (1, 3, 10) if k <= n])
def test_block_top_k_has_the_values_of_topk(n, k):
    gen = torch.Generator().manual_seed(n * 31 + k)
    cases = {"plain": torch.randn(16, n, generator=gen)}
    cases["ties"] = (cases["plain"] * 2).round()
    cases["-inf"] = cases["plain"].clone()
    cases["-inf"][:, ::3] = float("-inf")
    cases["nan"] = cases["plain"].clone()
    cases["nan"][2, n // 2] = float("nan")
    for name, x in cases.items():
        values, ids = largest(x, k)
        ref = x.topk(k, dim=-1)
        torch.testing.assert_close(values, ref.values, rtol=0, atol=0, equal_nan=True, msg=name)
        torch.testing.assert_close(x.gather(-1, ids), values, rtol=0, atol=0, equal_nan=True, msg=name)
        assert all(len(set(row)) == k for row in ids.tolist()), name  # k distinct tokens per row
        if name == "plain":  # no ties: the same tokens, in the same order
            assert torch.equal(ids, ref.indices)


def _reference(logits, final_logits, next_ids, target_ids, k):
    logp, lpf = logits.log_softmax(-1), final_logits.log_softmax(-1)
    top = logp.topk(k, dim=-1)
    t = logits.gather(-1, target_ids)
    return {"entropy": -(logp.exp() * logp).sum(-1), "kl": (lpf.exp() * (lpf - logp)).sum(-1),
            "top_logp": top.values, "top_ids": top.indices, "cross_entropy": -logp.gather(-1, next_ids[:, None])[:, 0],
            "target_logit": t, "target_logp": logp.gather(-1, target_ids),
            "target_rank": (logits[:, None, :] > t[:, :, None]).sum(-1) + 1}


def test_row_statistics_reusing_a_workspace_match_the_definitions():
    gen = torch.Generator().manual_seed(0)
    rows, vocab, k = 12, 500, 4
    final_logits = 3 * torch.randn(rows, vocab, generator=gen)
    next_ids = torch.randint(0, vocab, (rows,), generator=gen)
    target_ids = torch.randint(0, vocab, (rows, 2), generator=gen)
    ws = Workspace()
    own = row_statistics(final_logits, None, next_ids, target_ids, k, ws)
    final = own.pop("final")
    assert torch.equal(own["kl"], torch.zeros(rows))
    torch.testing.assert_close(final.logp, final_logits.log_softmax(-1), rtol=0, atol=1e-5)
    for layer in range(3):  # the same buffers, each layer's numbers its own
        logits = 3 * torch.randn(rows, vocab, generator=gen)
        got = row_statistics(logits, final, next_ids, target_ids, k, ws)
        want = _reference(logits, final_logits, next_ids, target_ids, k)
        fresh = row_statistics(logits, FinalDistribution.of(final_logits), next_ids, target_ids, k)
        for name, ref in want.items():
            assert torch.equal(got[name], fresh[name]), (layer, name)
            if name in ("top_ids", "target_rank"):
                assert torch.equal(got[name], ref), (layer, name)
            else:
                torch.testing.assert_close(got[name], ref, rtol=0, atol=1e-5, msg=f"{layer} {name}")
