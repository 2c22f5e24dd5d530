"""MoE attribution benchmark (issue 19, point 1): ``expert_attribution`` at the expert level and at the neuron
level against a researcher's loop on the plain Hugging Face model.

- interp: ``expert_attribution(model, prompts, levels=("expert",) | ("neuron",), batch_size=B)``;
- naive: one prompt per forward (HF, torch hooks on the block's norm and router), then per layer the LPI of every
  expert (all E, each through HF's own expert module: unselected ones with weight 0) or, at the neuron level,
  of every neuron of each routed expert and of the shared expert (one [F, d] decode per expert), each decoded
  through the final norm with its scale frozen, ``log_softmax`` difference in float32;
- equal_work: the same loop doing only what interp must do: the prompts batched in one forward, the top-k + shared
  components only (expert level), every prompt's active neurons in one decode per layer (neuron level);
- floor: one plain batched HF forward plus one decode (final norm, unembedding, log-softmax) per component the
  level needs: per prompt and MoE layer top-k + shared + the base at the expert level, k F + F_shared + 1 at the
  neuron level; floor_forwards = 1 (the decodes are inside the floor side). interp decodes each routed expert's
  neuron directions once for all the prompts routed to it, so at the neuron level it can beat this floor.

The check is the largest difference between interp and the naive loop: expert scores (expert level); the top-10
neuron gains per prompt and layer (neuron level).
Model: a random Qwen2-MoE (4 layers, d_model 256, 16 experts of width 128, top-4, a 512-wide shared expert,
vocabulary 8192) on the fixture tokenizer, built in a temporary directory; prompts from the factual corpus.
Run: .venv/bin/python benchmarks/bench_moe.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Case, main  # noqa: E402

SHAPE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, intermediate_size=512,
             num_experts=16, moe_intermediate_size=128, shared_expert_intermediate_size=512, num_experts_per_tok=4)
VOCAB = 8192
TOP = 10


def _model_dir() -> Path:
    import transformers as tf

    from interp.model.fixtures import train_tiny_tokenizer

    out = Path(tempfile.mkdtemp()) / "qwen2_moe_bench"
    tok = train_tiny_tokenizer()
    cfg = tf.Qwen2MoeConfig(vocab_size=VOCAB, norm_topk_prob=False, tie_word_embeddings=False,
                            max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, **SHAPE)
    torch.manual_seed(0)
    tf.Qwen2MoeForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _prompts(n: int) -> list[dict]:
    from interp.organisms import CORPUS_DIR
    from interp.organisms.corpus import load_jsonl

    recs = [r for r in load_jsonl(CORPUS_DIR / "factual.jsonl") if r.get("target")]
    return [{"id": r["id"], "prompt": r["prompt"], "target": r["target"]} for r in recs[:n]]


def _trace(hf, input_ids, attention_mask=None, position_ids=None) -> dict:
    """One HF forward; at the last position per layer: resid_mid u, the block input x (post-attention norm
    output), the router's top-k weights and indices; and the final residual."""
    rec: dict = {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        ln = layer.post_attention_layernorm
        handles.append(ln.register_forward_pre_hook(lambda _m, a, i=i: rec.__setitem__(("u", i), a[0][:, -1])))
        handles.append(ln.register_forward_hook(lambda _m, a, o, i=i: rec.__setitem__(("x", i), o[:, -1])))
        handles.append(layer.mlp.gate.register_forward_hook(
            lambda _m, a, o, i=i, n=input_ids.shape[0]: rec.__setitem__(
                ("router", i), tuple(t.reshape(n, -1, t.shape[-1])[:, -1] for t in o[1:]))))
    handles.append(hf.model.norm.register_forward_pre_hook(lambda _m, a: rec.__setitem__("final", a[0][:, -1])))
    try:
        hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    finally:
        for h in handles:
            h.remove()
    return rec


def _lp(hf, final: torch.Tensor, target: torch.Tensor):
    """logP(target | v) per prompt row, final norm's scale frozen at ``final`` ([B, d]); v [B, n, d] -> [B, n]."""
    norm = hf.model.norm
    sigma = (final.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()[:, None]

    def lp(v):
        lg = hf.lm_head(norm.weight * v / sigma).float().log_softmax(-1)
        return lg.gather(-1, target[:, None, None].expand(-1, v.shape[1], 1))[..., 0]

    return lp


def _naive(hf, enc, ids: list[str], level: str) -> dict:
    out = {}
    with torch.no_grad():
        for i, (item, pid) in enumerate(zip(enc.items, ids)):
            rec = _trace(hf, torch.tensor([item.ids]))
            tgt = torch.tensor([int(enc.targets["target"][i])])
            lp = _lp(hf, rec["final"], tgt)
            for layer, blk in enumerate(hf.model.layers):
                u, x = rec[("u", layer)], rec[("x", layer)]
                w, idx = rec[("router", layer)]
                base = lp(u[:, None])[0, 0]
                mlp = blk.mlp
                if level == "expert":
                    wmap = {int(e): float(g) for e, g in zip(idx[0], w[0])}
                    for e in range(mlp.experts.num_experts):
                        g = torch.tensor([[wmap.get(e, 0.0)]])
                        y = mlp.experts(x, torch.tensor([[e]]), g)
                        out[(pid, layer, e)] = float(lp((u + y)[:, None])[0, 0] - base)
                    continue
                gains = []
                ex = mlp.experts
                f = ex.intermediate_dim
                for e, g in zip(idx[0].tolist(), w[0]):
                    gate_up = ex.gate_up_proj[e]
                    s = ex.act_fn(x[0] @ gate_up[:f].T) * (x[0] @ gate_up[f:].T)
                    v = g * s[:, None] * ex.down_proj[e].T  # [F, d]
                    gains.append(lp(u[:, None] + v[None])[0] - base)
                se = mlp.shared_expert
                s = se.act_fn(se.gate_proj(x[0])) * se.up_proj(x[0])
                v = torch.sigmoid(mlp.shared_expert_gate(x[0])) * s[:, None] * se.down_proj.weight.T
                gains.append(lp(u[:, None] + v[None])[0] - base)
                out[(pid, layer)] = torch.cat(gains).sort(descending=True).values[:TOP]
    return out


def _batch(m, enc):
    from interp.prompts import make_batch

    return make_batch(m, enc, list(range(len(enc.items))))


def _equal_work(hf, b, level: str) -> None:
    """One batched forward, then only the components interp decodes (no table)."""
    with torch.no_grad():
        rec = _trace(hf, b.input_ids, b.attention_mask, b.position_ids)
        tgt = b.targets["target"]
        lp = _lp(hf, rec["final"], tgt)
        for layer, blk in enumerate(hf.model.layers):
            u, x = rec[("u", layer)], rec[("x", layer)]
            w, idx = rec[("router", layer)]
            mlp = blk.mlp
            base = lp(u[:, None])
            if level == "expert":
                comps = [mlp.experts(x, idx[:, j:j + 1], w[:, j:j + 1]) for j in range(idx.shape[1])]
                comps.append(torch.sigmoid(mlp.shared_expert_gate(x)) * mlp.shared_expert(x))
                lp(u[:, None] + torch.stack(comps, 1)) - base
                continue
            ex, f = mlp.experts, mlp.experts.intermediate_dim
            vs = []
            for j in range(idx.shape[1]):
                gate_up = ex.gate_up_proj[idx[:, j]]  # [B, 2F, d]
                h = torch.einsum("bfd,bd->bf", gate_up, x)
                s = ex.act_fn(h[:, :f]) * h[:, f:]
                vs.append((w[:, j, None] * s)[:, :, None] * ex.down_proj[idx[:, j]].transpose(1, 2))
            se = mlp.shared_expert
            s = se.act_fn(se.gate_proj(x)) * se.up_proj(x)
            vs.append((torch.sigmoid(mlp.shared_expert_gate(x)) * s)[:, :, None] * se.down_proj.weight.T[None])
            gains = lp(u[:, None] + torch.cat(vs, 1)) - base
            gains.topk(TOP, dim=-1)


def _floor(hf, b, per_layer: int) -> None:
    """The batched forward and ``per_layer`` decodes per prompt and layer (vectors of the right size)."""
    with torch.no_grad():
        out = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                 output_hidden_states=True)
        for h in out.hidden_states[1:]:
            v = h[:, -1:].expand(-1, per_layer, -1)
            hf.lm_head(hf.model.norm(v)).float().log_softmax(-1)


def _check_experts(result, ref: dict) -> float:
    t = result.table
    t = t[t["level"] == "expert"]
    got = {(p, int(layer), int(e)): s for p, layer, e, s in zip(t["prompt_id"], t["layer"], t["expert"], t["score"])}
    if set(got) != set(ref):
        raise AssertionError("interp and the naive loop scored different experts")
    return max(abs(got[k] - v) for k, v in ref.items())


def _check_neurons(result, ref: dict) -> float:
    t = result.table
    worst = 0.0
    for (pid, layer), top in ref.items():
        ours = t[(t["prompt_id"] == pid) & (t["layer"] == layer)]["score"].sort_values(ascending=False).values
        worst = max(worst, float((torch.tensor(ours, dtype=torch.float32) - top).abs().max()))
    return worst


def cases(quick: bool = False) -> list[Case]:
    from transformers import AutoModelForCausalLM

    import interp
    from interp.methods.moe import expert_attribution
    from interp.prompts import encode

    path = _model_dir()
    m = interp.load_model(path, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    k, f, fs = SHAPE["num_experts_per_tok"], SHAPE["moe_intermediate_size"], SHAPE["shared_expert_intermediate_size"]
    out = []
    for level, n in (("expert", 8 if quick else 16), ("neuron", 2 if quick else 4)):
        ps = _prompts(n)
        enc = encode(m, ps, targets=["target"])
        b = _batch(m, enc)
        per_layer = k + 2 if level == "expert" else k * f + fs + 1
        out.append(Case(
            name=f"{level} level, {n} prompts",
            interp=lambda lv=level, ps=ps, n=n: expert_attribution(m, ps, levels=(lv,), top_neurons=TOP, batch_size=n),
            naive=lambda lv=level, enc=enc, ps=ps: _naive(hf, enc, [p["id"] for p in ps], lv),
            equal_work=lambda lv=level, b=b: _equal_work(hf, b, lv),
            floor=lambda b=b, p=per_layer: _floor(hf, b, p),
            floor_forwards=1,
            check=_check_experts if level == "expert" else _check_neurons,
            note=f"floor = the forward + {per_layer} decodes per prompt and layer"))
    return out


if __name__ == "__main__":
    main(cases)
