"""Measure TransformerBridge facts on the tiny fixture models (source of docs/bridge_facts.md).

Run:  python docs/probe_bridge.py [--archs llama gpt2 ...] [--out facts.json] > probe.txt

Builds every fixture model into a temporary directory, boots it in TransformerBridge and in
plain transformers (eager attention), and prints one section per architecture.  Every number
in the facts sheet comes from this script; rerun it after upgrading transformer-lens or
transformers.  Runtime: ~20 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pathlib
import sys
import tempfile
import traceback
import warnings

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from interp.model.fixtures import ARCHITECTURES, MOE_ARCHITECTURES, build_tiny_model, tokenize  # noqa: E402

P_SHORT = "The capital of France is Paris"
P_LONG = "When Mary and John went to the store, John gave a drink to"
LAYER = 1  # middle layer used for interventions

CFG_FIELDS = [
    "n_layers", "n_heads", "n_key_value_heads", "d_head", "d_model", "d_mlp", "d_vocab", "n_ctx",
    "normalization_type", "final_rms", "gated_mlp", "act_fn", "eps", "default_prepend_bos",
    "tokenizer_prepends_bos", "default_padding_side", "positional_embedding_type", "rotary_dim",
    "num_experts", "experts_per_token", "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in",
    "use_attn_in", "output_logits_soft_cap", "attn_scores_soft_cap", "rmsnorm_uses_offset",
    "uses_rms_norm", "sliding_window", "attn_implementation", "dtype", "original_architecture",
    "architecture",
]  # fmt: skip
HF_MOE_FIELDS = [
    "num_experts", "num_local_experts", "num_experts_per_tok", "norm_topk_prob", "moe_intermediate_size",
    "shared_expert_intermediate_size", "intermediate_size", "decoder_sparse_step", "mlp_only_layers",
    "router_jitter_noise", "hidden_act",
]  # fmt: skip


def mx(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def attempt(fn):
    """Run fn(); return its value or 'RAISES <Exc>: msg'."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reporting
        return f"RAISES {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def shape(t):
    return list(t.shape) if isinstance(t, torch.Tensor) else repr(t)


class Probe:
    def __init__(self, arch: str, path: pathlib.Path):
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM

        self.arch = arch
        self.facts: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.bridge = TransformerBridge.boot_transformers(str(path), device="cpu")
        self.facts["boot_warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})
        self.hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
        self.tok = self.bridge.tokenizer
        from interp.model.fixtures import train_tiny_tokenizer

        self.raw_tok = train_tiny_tokenizer()
        self.bos = bool(self.bridge.cfg.default_prepend_bos)

    # ------------------------------------------------------------------ helpers
    def ids(self, text):
        return torch.tensor([tokenize(self.raw_tok, text, prepend_bos=self.bos)])

    def left_padded(self):
        a, b = self.ids(P_SHORT)[0], self.ids(P_LONG)[0]
        n = max(len(a), len(b))
        pad = self.raw_tok.pad_token_id
        rows, mask = [], []
        for r in (a, b):
            rows.append(torch.cat([torch.full((n - len(r),), pad), r]))
            mask.append(torch.cat([torch.zeros(n - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)]))
        return torch.stack(rows), torch.stack(mask), (a, b)

    def record(self, key, value):
        self.facts[key] = value

    # ------------------------------------------------------------------ sections
    def cfg(self):
        cfg = self.bridge.cfg
        self.record("cfg", {f: repr(getattr(cfg, f, "<absent>")) for f in CFG_FIELDS})
        hf_cfg = self.hf.config
        self.record("hf_config", {f: repr(getattr(hf_cfg, f)) for f in HF_MOE_FIELDS if hasattr(hf_cfg, f)})
        self.record("hf_config_class", type(hf_cfg).__name__)
        self.record("to_tokens", self.bridge.to_tokens(P_SHORT)[0].tolist()[:3])
        self.record("bridge_tokenizer_adds_bos", self.tok(P_SHORT)["input_ids"][:2])
        self.record("bos_token_id", self.tok.bos_token_id)
        self.record("tokenizer_padding_side", self.tok.padding_side)

    def hooks_and_shapes(self):
        b = self.bridge
        names = sorted(n for n in b.hook_dict if n.startswith("blocks.0."))
        self.record("hook_names_block0", names)
        self.record("hook_names_global", sorted(n for n in b.hook_dict if not n.startswith("blocks.")))
        self.record(
            "aliases (name -> canonical HookPoint.name seen by hook fns)",
            {n: hp.name for n, hp in sorted(b.hook_dict.items())
             if (n.startswith("blocks.0.") or not n.startswith("blocks.")) and n != hp.name},
        )  # fmt: skip
        ids = torch.cat([self.ids(P_SHORT)[:, :6], self.ids(P_LONG)[:, :6]])
        with torch.no_grad():
            logits, cache = b.run_with_cache(ids)
        fired0 = sorted(n for n in cache.keys() if n.startswith("blocks.0."))
        self.record("cache_keys_block0", fired0)
        self.record("hook_dict_not_in_cache_block0", sorted(set(names) - set(fired0)))
        want = [
            "hook_embed", "hook_pos_embed", "embed.hook_out", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k",
            "blocks.0.attn.hook_v", "blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k", "blocks.0.attn.hook_z",
            "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_result",
            "blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid", "blocks.0.hook_resid_post",
            "blocks.0.hook_attn_out", "blocks.0.attn.hook_out", "blocks.0.hook_mlp_out", "blocks.0.mlp.hook_in",
            "blocks.0.mlp.hook_out", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.0.ln1.hook_scale",
            "blocks.0.mlp.gate.hook_out", "blocks.0.mlp.hook_expert_weights", "blocks.0.mlp.hook_expert_indices",
            "blocks.0.mlp.hook_router_scores", "blocks.0.mlp.experts.hook_in", "blocks.0.mlp.experts.hook_out",
            "blocks.0.mlp.shared_expert.hook_out", "blocks.0.mlp.shared_expert_gate.hook_out",
            "ln_final.hook_scale", "ln_final.hook_normalized", "ln_final.hook_out", "unembed.hook_out",
        ]  # fmt: skip
        shapes = {}
        for n in want:
            if n in cache.keys():
                shapes[n] = shape(cache[n])
            elif n in b.hook_dict:
                shapes[n] = "in hook_dict, not cached (did not fire / gated)"
        self.record("shapes_batch2_pos6", shapes)
        self.record("cache_dtypes", sorted({str(cache[k].dtype) for k in cache.keys()}))
        scores = cache["blocks.0.attn.hook_attn_scores"]
        self.record("attn_scores_masked_entry_value_[0,0,0,1]", float(scores[0, 0, 0, 1]))
        self.record("pattern_rows_sum_to_1", mx(cache["blocks.0.attn.hook_pattern"].sum(-1), torch.ones(1)))
        # hook_result: gated behind set_use_attn_result
        res = attempt(lambda: b.run_with_cache(ids, names_filter="blocks.0.attn.hook_result")[1].keys())
        self.record("hook_result_without_flag", repr(list(res)) if not isinstance(res, str) else res)
        b.set_use_attn_result(True)
        try:
            with torch.no_grad():
                logits2, cache2 = b.run_with_cache(ids)
            r = cache2["blocks.0.attn.hook_result"]
            attn = b.blocks[0].attn
            bo = attn.b_O if attn.b_O is not None else 0.0
            self.record("hook_result_shape_with_flag", shape(r))
            self.record(
                "sum_heads(hook_result)+b_O vs attn.hook_out", mx(r.sum(-2) + bo, cache2["blocks.0.attn.hook_out"])
            )
            self.record("logits_diff_with_use_attn_result", mx(logits2, logits))
        finally:
            b.set_use_attn_result(False)

    def left_padding(self):
        b, hf = self.bridge, self.hf
        ids, mask, (a, bb) = self.left_padded()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            ref = [b(a[None])[0], b(bb[None])[0]]
            ref_hf = [hf(a[None]).logits[0], hf(bb[None]).logits[0]]
        self.record("unpadded bridge vs hf", max(mx(ref[0], ref_hf[0]), mx(ref[1], ref_hf[1])))
        na = len(a)

        def report(logits):
            if isinstance(logits, str):
                return logits
            last = max(mx(logits[0, -1], ref[0][-1]), mx(logits[1, -1], ref[1][-1]))
            allpos = mx(logits[0, -na:], ref[0])
            nan = bool(torch.isnan(logits).any())
            return {"last_pos_maxdiff": last, "short_row_all_real_pos_maxdiff": allpos, "any_nan": nan}

        res = {}
        with torch.no_grad():
            res["bridge(ids) no mask"] = report(b(ids))
            res["bridge(ids, attention_mask)"] = report(attempt(lambda: b(ids, attention_mask=mask)))
            res["bridge(ids, attention_mask, position_ids)"] = report(
                attempt(lambda: b(ids, attention_mask=mask, position_ids=pos))
            )
            res["run_with_hooks(ids, attention_mask)"] = report(
                attempt(lambda: b.run_with_hooks(ids, fwd_hooks=[], attention_mask=mask))
            )
            res["run_with_hooks(ids, attention_mask, position_ids)"] = report(
                attempt(lambda: b.run_with_hooks(ids, fwd_hooks=[], attention_mask=mask, position_ids=pos))
            )
            res["run_with_cache(ids, attention_mask)"] = report(
                attempt(lambda: b.run_with_cache(ids, attention_mask=mask)[0])
            )
            res["run_with_cache(ids, attention_mask, position_ids)"] = report(
                attempt(lambda: b.run_with_cache(ids, attention_mask=mask, position_ids=pos)[0])
            )
            res["HF(ids, attention_mask) no position_ids"] = report(hf(ids, attention_mask=mask).logits)
            res["HF(ids, attention_mask, position_ids)"] = report(hf(ids, attention_mask=mask, position_ids=pos).logits)
            res["bridge(list of str, padding_side=left)"] = report(
                attempt(lambda: b([P_SHORT, P_LONG], padding_side="left"))
            )
            # what position ids does the bridge derive? capture via the rotary/pos-embed hooks
            _, cache = b.run_with_cache(ids, attention_mask=mask)
            pat = cache[f"blocks.{LAYER}.attn.hook_pattern"]
            res["pattern on pad key columns (row0, real queries) max"] = float(
                pat[0, :, ids.shape[1] - na :, : ids.shape[1] - na].abs().max()
            )
            sc = cache[f"blocks.{LAYER}.attn.hook_attn_scores"]
            res["attn_scores on pad key columns (row0, real queries) (min,max)"] = [
                float(sc[0, :, ids.shape[1] - na :, : ids.shape[1] - na].min()),
                float(sc[0, :, ids.shape[1] - na :, : ids.shape[1] - na].max()),
            ]
            res["pattern/resid NaN anywhere in cache"] = bool(
                any(torch.isnan(cache[k]).any() for k in cache.keys() if cache[k].is_floating_point())
            )
            if "hook_pos_embed" in cache.keys() and self.arch == "gpt2":
                pe = cache["hook_pos_embed"]
                wpe = self.hf.transformer.wpe.weight
                res["gpt2 hook_pos_embed row0 == wpe[mask-derived pos]"] = mx(pe[0], wpe[pos[0]])
                res["gpt2 hook_pos_embed shape"] = shape(pe)
        self.record("left_padding", res)

    def interventions(self):
        b = self.bridge
        cfg = b.cfg
        ids = self.ids(P_LONG)
        L = LAYER
        n_heads = cfg.n_heads
        n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
        with torch.no_grad():
            clean_logits, clean = b.run_with_cache(ids)
        npos = ids.shape[1]
        uniform = torch.tril(torch.ones(npos, npos)) / torch.arange(1, npos + 1)[:, None]
        out = {}
        for hook in ("hook_q", "hook_rot_q", "hook_k"):
            name = f"blocks.{L}.attn.{hook}"
            if name not in b.hook_dict:
                continue
            nh = n_kv if hook == "hook_k" else n_heads
            errs, others = [], []
            for h in range(nh):
                store = {}

                def scale(t, hook, h=h, nh=nh):
                    t = t.clone()
                    if t.ndim == 4 and t.shape[2] == nh:  # [b, pos, head, d]
                        t[:, :, h] *= 1e-5
                    elif t.ndim == 4 and t.shape[1] == nh:  # [b, head, pos, d]
                        t[:, h] *= 1e-5
                    else:
                        raise ValueError(f"unexpected {hook.name} shape {tuple(t.shape)}")
                    return t

                def grab(t, hook, store=store):
                    store["p"] = t.detach().clone()

                with torch.no_grad():
                    b.run_with_hooks(ids, fwd_hooks=[(name, scale), (f"blocks.{L}.attn.hook_pattern", grab)])
                p = store["p"][0]
                heads = [h] if hook != "hook_k" else list(range(h * n_heads // nh, (h + 1) * n_heads // nh))
                errs.append(max(mx(p[q], uniform) for q in heads))
                rest = [q for q in range(n_heads) if q not in heads]
                if rest:
                    others.append(mx(p[rest], clean[f"blocks.{L}.attn.hook_pattern"][0, rest]))
            out[f"scale {hook}[..h..] by 1e-5: max |pattern - causal uniform| over heads"] = max(errs)
            out[f"scale {hook}: max change of untouched heads"] = max(others) if others else None
        out["hook_q shape"] = shape(clean[f"blocks.{L}.attn.hook_q"])
        out["hook_k shape"] = shape(clean[f"blocks.{L}.attn.hook_k"])

        out.update(self._qk_provenance(clean, L))
        # (b) zero hook_z head h
        attn = b.blocks[L].attn
        W_O = attn.W_O
        b_O = attn.b_O
        out["W_O location/shape"] = f"bridge.blocks[l].attn.W_O {shape(W_O)}"
        out["b_O"] = None if b_O is None else shape(b_O)
        o_mod = attn.o.original_component
        out["attn.o HF module"] = f"{type(o_mod).__name__} bias={getattr(o_mod, 'bias', None) is not None}"
        z = clean[f"blocks.{L}.attn.hook_z"]
        out["hook_z shape"] = shape(z)
        if type(o_mod).__name__ == "Conv1D":
            w = o_mod.weight  # [in, out]
            W_O_ref = w.reshape(n_heads, cfg.d_head, cfg.d_model)
        else:
            W_O_ref = o_mod.weight.T.reshape(n_heads, cfg.d_head, cfg.d_model)
        out["W_O == HF o_proj weight reshaped [h, d_head, d_model]"] = mx(W_O, W_O_ref)
        errs_attn, errs_block = [], []
        for h in range(n_heads):
            store = {}

            def zero(t, hook, h=h):
                t = t.clone()
                t[:, :, h] = 0.0
                return t

            def grab(name, store=store):
                def f(t, hook):
                    store[name] = t.detach().clone()

                return f

            with torch.no_grad():
                b.run_with_hooks(
                    ids,
                    fwd_hooks=[
                        (f"blocks.{L}.attn.hook_z", zero),
                        (f"blocks.{L}.attn.hook_out", grab("attn_out")),
                        (f"blocks.{L}.hook_attn_out", grab("hook_attn_out")),
                    ],
                )
            expected = -(z[0, :, h] @ W_O[h])
            errs_attn.append(mx(store["attn_out"][0] - clean[f"blocks.{L}.attn.hook_out"][0], expected))
            errs_block.append(mx(store["hook_attn_out"][0] - clean[f"blocks.{L}.hook_attn_out"][0], expected))
        out["zero hook_z[:,:,h]: attn.hook_out delta vs -z_h@W_O[h] (max over h)"] = max(errs_attn)
        out["zero hook_z[:,:,h]: hook_attn_out delta vs -z_h@W_O[h] (max over h)"] = max(errs_block)
        out["hook_attn_out == attn.hook_out (clean)"] = mx(
            clean[f"blocks.{L}.hook_attn_out"], clean[f"blocks.{L}.attn.hook_out"]
        )
        out["resid_mid == resid_pre + hook_attn_out"] = mx(
            clean[f"blocks.{L}.hook_resid_mid"],
            clean[f"blocks.{L}.hook_resid_pre"] + clean[f"blocks.{L}.hook_attn_out"],
        )
        out["resid_post == resid_mid + hook_mlp_out"] = mx(
            clean[f"blocks.{L}.hook_resid_post"],
            clean[f"blocks.{L}.hook_resid_mid"] + clean[f"blocks.{L}.hook_mlp_out"],
        )
        out["z == pattern @ v (GQA-expanded)"] = self._z_check(clean, L)

        # (c) start_at_layer
        resid = clean[f"blocks.{L}.hook_resid_pre"]
        fired = []

        def spy(t, hook):
            fired.append(hook.name)

        with torch.no_grad():
            r = attempt(
                lambda: b.run_with_hooks(
                    resid,
                    start_at_layer=L,
                    fwd_hooks=[("blocks.0.hook_resid_post", spy), (f"blocks.{L}.hook_resid_pre", spy)],
                )
            )
        out["run_with_hooks(resid, start_at_layer=1) logits diff"] = r if isinstance(r, str) else mx(r, clean_logits)
        out["start_at_layer: hooks that fired (blocks.0 + blocks.1 requested)"] = fired
        calls = []
        handle = b.blocks[0].register_forward_hook(lambda mod, inp, outp: calls.append(1))
        try:
            with torch.no_grad():
                b.run_with_hooks(resid, start_at_layer=L)
        finally:
            handle.remove()
        out["start_at_layer=1: block 0 module still executed (torch forward-hook calls)"] = len(calls)
        with torch.no_grad():
            r = attempt(lambda: b(resid, start_at_layer=L))
        out["bridge(resid, start_at_layer=1) logits diff"] = r if isinstance(r, str) else mx(r, clean_logits)
        noise = torch.randn(resid.shape, generator=torch.Generator().manual_seed(0))

        def add_noise(t, hook):
            return t + noise

        with torch.no_grad():
            full = b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.hook_resid_pre", add_noise)])
            inj = b.run_with_hooks(resid + noise, start_at_layer=L)
        out["injected modified residual == hooking resid_pre in full run"] = mx(full, inj)
        # with left padding
        pids, mask, (a, bb) = self.left_padded()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            plogits, pcache = b.run_with_cache(pids, attention_mask=mask)
            presid = pcache[f"blocks.{L}.hook_resid_pre"]
            for label, kw in (
                ("no mask", {}),
                ("attention_mask", {"attention_mask": mask}),
                ("attention_mask+position_ids", {"attention_mask": mask, "position_ids": pos}),
            ):
                r = attempt(lambda kw=kw: b.run_with_hooks(presid, start_at_layer=L, **kw))
                out[f"start_at_layer on left-padded batch, {label}: last-pos diff vs full masked run"] = (
                    r if isinstance(r, str) else mx(r[:, -1], plogits[:, -1])
                )
        self.record("interventions", out)

    def _qk_provenance(self, cache, L):
        """Where do hook_q / hook_rot_q / hook_attn_scores sit (pre/post q_norm, RoPE, softcap, mask)?"""
        b = self.bridge
        attn = b.blocks[L].attn
        x = cache[f"blocks.{L}.ln1.hook_out"][0]
        res = {}
        q_lin = torch.einsum("pm,hmd->phd", x, attn.W_Q) + (attn.b_Q if attn.b_Q is not None else 0)
        k_lin = torch.einsum("pm,hmd->phd", x, attn.W_K) + (attn.b_K if attn.b_K is not None else 0)
        res["hook_q == ln1.hook_out @ W_Q + b_Q (pre q_norm / RoPE)"] = mx(cache[f"blocks.{L}.attn.hook_q"][0], q_lin)
        res["hook_k == ln1.hook_out @ W_K + b_K"] = mx(cache[f"blocks.{L}.attn.hook_k"][0], k_lin)
        res["attn.hook_in == ln1.hook_out"] = mx(cache[f"blocks.{L}.attn.hook_in"], cache[f"blocks.{L}.ln1.hook_out"])
        qn = f"blocks.{L}.attn.hook_rot_q"
        if qn in cache.keys():
            q = cache[qn][0]
            k = cache[f"blocks.{L}.attn.hook_rot_k"][0]
        else:
            q, k = cache[f"blocks.{L}.attn.hook_q"][0], cache[f"blocks.{L}.attn.hook_k"][0]
        rep = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        hf_attn = attn.original_component
        scaling = float(getattr(hf_attn, "scaling", q.shape[-1] ** -0.5))
        scores = torch.einsum("qhd,khd->hqk", q, k) * scaling
        cap = getattr(hf_attn, "attn_logit_softcapping", None)
        if cap:
            scores = torch.tanh(scores / cap) * cap
        got = cache[f"blocks.{L}.attn.hook_attn_scores"][0]
        causal = torch.tril(torch.ones(got.shape[-2:], dtype=torch.bool))
        label = "(rot_q . rot_k)" if qn in cache.keys() else "(q . k)"
        res[f"hook_attn_scores == {label}*scaling{' softcapped' if cap else ''} on causal entries"] = mx(
            got[:, causal], scores[:, causal]
        )
        res["hook_attn_scores above diagonal (min,max)"] = [float(got[:, ~causal].min()), float(got[:, ~causal].max())]
        res["attention scaling used by HF module"] = scaling
        return res

    def _z_check(self, cache, L):
        p = cache[f"blocks.{L}.attn.hook_pattern"][0]  # [h, q, k]
        v = cache[f"blocks.{L}.attn.hook_v"][0]  # [pos, kv, d]
        z = cache[f"blocks.{L}.attn.hook_z"][0]  # [pos, h, d]
        n_heads = p.shape[0]
        rep = n_heads // v.shape[1]
        v = v.repeat_interleave(rep, dim=1)
        return mx(torch.einsum("hqk,khd->qhd", p, v), z)

    def final_norm_unembed(self):
        b, hf = self.bridge, self.hf
        cfg = b.cfg
        ids = self.ids(P_LONG)
        out = {}
        with torch.no_grad():
            logits, cache = b.run_with_cache(ids)
            hfo = hf(ids, output_hidden_states=True)
        hs = hfo.hidden_states
        out["HF hidden_states count"] = len(hs)
        out["ln_final.hook_out vs HF hidden_states[-1]"] = mx(cache["ln_final.hook_out"], hs[-1])
        out["ln_final.hook_in vs HF hidden_states[-1]"] = mx(cache["ln_final.hook_in"], hs[-1])
        out["blocks[-1].hook_resid_post vs HF hidden_states[-1]"] = mx(
            cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"], hs[-1]
        )
        out["blocks[l].hook_resid_pre vs HF hidden_states[l] (max over l<n)"] = max(
            mx(cache[f"blocks.{i}.hook_resid_pre"], hs[i]) for i in range(cfg.n_layers)
        )
        x = cache["ln_final.hook_in"]
        if cfg.normalization_type == "LN" or not getattr(cfg, "uses_rms_norm", True):
            xc = x - x.mean(-1, keepdim=True)
        else:
            xc = x
        rms = (xc.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
        out["ln_final.hook_scale vs sqrt(mean(x^2)+eps) (rms, centered for LN)"] = mx(cache["ln_final.hook_scale"], rms)
        out["ln_final.hook_normalized vs x/rms"] = mx(cache["ln_final.hook_normalized"], xc / rms)
        ln = b.ln_final
        w = ln.w
        hf_norm = ln.original_component
        out["ln_final.w is HF norm weight"] = mx(w, hf_norm.weight)
        norm_b = getattr(hf_norm, "bias", None)
        gamma_plain = cache["ln_final.hook_normalized"] * w + (norm_b if norm_b is not None else 0)
        gamma_offset = cache["ln_final.hook_normalized"] * (1 + w)
        out["ln_final.hook_out vs normalized*w(+b)"] = mx(cache["ln_final.hook_out"], gamma_plain)
        out["ln_final.hook_out vs normalized*(1+w)"] = mx(cache["ln_final.hook_out"], gamma_offset)
        out["HF norm class"] = type(hf_norm).__name__
        W_U = attempt(lambda: b.W_U)
        b_U = attempt(lambda: b.b_U)
        out["bridge.W_U shape"] = shape(W_U)
        out["bridge.b_U"] = shape(b_U) if isinstance(b_U, torch.Tensor) else repr(b_U)
        lm_head = hf.get_output_embeddings()
        out["W_U == lm_head.weight.T"] = mx(W_U, lm_head.weight.T)
        out["lm_head has bias"] = getattr(lm_head, "bias", None) is not None
        bu = b_U if isinstance(b_U, torch.Tensor) else 0.0
        raw = cache["ln_final.hook_out"] @ W_U + bu
        out["logits vs ln_final.hook_out@W_U+b_U"] = mx(logits, raw)
        sc = getattr(hf.config, "final_logit_softcapping", None)
        if sc:
            out["logits vs softcap(ln_final.hook_out@W_U)"] = mx(logits, torch.tanh(raw / sc) * sc)
            out["HF final_logit_softcapping"] = sc
        out["unembed.hook_out vs logits"] = mx(cache["unembed.hook_out"], logits)
        out["unembed.hook_in vs ln_final.hook_out"] = mx(cache["unembed.hook_in"], cache["ln_final.hook_out"])
        emb = hf.get_input_embeddings()(ids)
        out["hook_embed vs raw embed_tokens(ids)"] = mx(cache["hook_embed"], emb)
        out["blocks.0.hook_resid_pre vs raw embed"] = mx(cache["blocks.0.hook_resid_pre"], emb)
        if self.arch == "gemma2":
            s = math.sqrt(cfg.d_model)
            out["blocks.0.hook_resid_pre vs raw embed*sqrt(d_model)"] = mx(cache["blocks.0.hook_resid_pre"], emb * s)
            out["hook_embed vs raw embed*sqrt(d_model)"] = mx(cache["hook_embed"], emb * s)
            out["bridge.W_E == HF embed weight"] = mx(b.W_E, hf.get_input_embeddings().weight)
            out["hook_embed vs W_E[ids]"] = mx(cache["hook_embed"][0], b.W_E[ids[0]])
            out["hook_embed vs W_E[ids]*sqrt(d_model)"] = mx(cache["hook_embed"][0], b.W_E[ids[0]] * s)
            out["HF embed module / embed_scale"] = (
                f"{type(hf.get_input_embeddings()).__name__} "
                f"{getattr(hf.get_input_embeddings(), 'embed_scale', None)!r}"
            )
            out["unembed.hook_out vs pre-softcap ln_final.hook_out@W_U"] = mx(cache["unembed.hook_out"], raw)
            for i in range(cfg.n_layers):
                out[f"L{i} hook_attn_out == ln1_post.hook_out"] = mx(
                    cache[f"blocks.{i}.hook_attn_out"], cache[f"blocks.{i}.ln1_post.hook_out"]
                )
                out[f"L{i} ln1_post.hook_in == attn.hook_out"] = mx(
                    cache[f"blocks.{i}.ln1_post.hook_in"], cache[f"blocks.{i}.attn.hook_out"]
                )
                out[f"L{i} hook_mlp_out == ln2_post.hook_out"] = mx(
                    cache[f"blocks.{i}.hook_mlp_out"], cache[f"blocks.{i}.ln2_post.hook_out"]
                )
                out[f"L{i} ln2_post.hook_in == mlp.hook_out"] = mx(
                    cache[f"blocks.{i}.ln2_post.hook_in"], cache[f"blocks.{i}.mlp.hook_out"]
                )
            out["HF attn_logit_softcapping"] = hf.config.attn_logit_softcapping
            out["HF query_pre_attn_scalar"] = hf.config.query_pre_attn_scalar
            out["HF attn.scaling"] = float(hf.model.layers[0].self_attn.scaling)
        out["bridge.W_E shape"] = shape(attempt(lambda: b.W_E))
        if self.arch == "gpt2":
            out["hook_pos_embed shape"] = shape(cache["hook_pos_embed"])
            out["resid_pre0 == hook_embed + hook_pos_embed"] = mx(
                cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"]
            )
        self.record("final_norm_unembed", out)

    def gradients(self):
        """Do gradients flow through hook tensors (needed for attribution patching)?"""
        b = self.bridge
        ids = self.ids(P_LONG)
        grads = {}
        names = [f"blocks.{LAYER}.hook_resid_pre", f"blocks.{LAYER}.attn.hook_z", f"blocks.{LAYER}.hook_mlp_out",
                 "ln_final.hook_scale", f"blocks.{LAYER}.attn.hook_pattern"]  # fmt: skip
        if self.arch in MOE_ARCHITECTURES:
            names += [f"blocks.{LAYER}.mlp.hook_expert_weights", f"blocks.{LAYER}.mlp.gate.hook_out"]
        store = {}

        def keeper(name):
            def keep(t, hook):
                if t.requires_grad:
                    t.retain_grad()
                store[name] = t
                return t

            return keep

        with torch.enable_grad():
            logits = b.run_with_hooks(ids, fwd_hooks=[(n, keeper(n)) for n in names])
            logits[0, -1, 5].backward()
        for n in names:
            t = store.get(n)
            grads[n] = "not fired" if t is None else (
                "requires_grad=False" if not t.requires_grad else (
                    "grad None (not on the autograd path)" if t.grad is None
                    else f"grad ok, norm {float(t.grad.norm()):.3g}"
                )
            )  # fmt: skip
        self.bridge.zero_grad(set_to_none=True)
        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clean = b(ids)
            edited = b.run_with_hooks(ids, fwd_hooks=[("ln_final.hook_scale", lambda t, hook: t * 2.0)])
        grads["edit ln_final.hook_scale *2: logits change"] = round(mx(edited, clean), 4)
        if self.arch not in ("gpt2", "gemma2"):  # RMS, bias-free unembed, no softcap: logits halve
            grads["edit ln_final.hook_scale *2: edited logits vs clean/2"] = round(mx(edited, clean / 2), 6)
        grads["edit warnings"] = sorted({str(w.message)[:120] for w in caught})
        self.record("gradients_through_hooks", grads)

    def moe(self):
        if self.arch not in MOE_ARCHITECTURES:
            return
        b, hf = self.bridge, self.hf
        L = LAYER
        hf_mlp = hf.model.layers[L].mlp
        out = {}
        out["HF mlp class"] = type(hf_mlp).__name__
        out["HF mlp children"] = {k: type(v).__name__ for k, v in hf_mlp.named_children()}
        out["HF params"] = {k: shape(v) for k, v in hf_mlp.named_parameters()}
        out["bridge mlp class"] = type(b.blocks[L].mlp).__name__
        out["bridge mlp submodules"] = {
            k: type(v).__name__ for k, v in b.blocks[L].mlp.named_children() if k != "original_component"
        }
        # From here on use the bridge's own HF block, via raw weights only: inside the bridge its
        # submodules are bridge wrappers (calling them would fire hooks).
        hf_mlp = b.blocks[L].mlp.original_component
        out["inside bridge: type of original_component.{gate, experts, shared_expert}"] = {
            k: type(getattr(hf_mlp, k)).__name__
            for k in ("gate", "experts", "shared_expert", "shared_expert_gate")
            if hasattr(hf_mlp, k)
        }
        out["bridge.blocks[l].mlp.gate.original_component"] = type(b.blocks[L].mlp.gate.original_component).__name__
        router = hf_mlp.gate
        out["router attrs"] = {
            k: repr(getattr(router, k)) for k in ("top_k", "num_experts", "norm_topk_prob") if hasattr(router, k)
        }
        out["experts act_fn"] = repr(getattr(hf_mlp.experts, "act_fn", None))
        ids = self.ids(P_LONG)
        with torch.no_grad():
            logits, cache = b.run_with_cache(ids)
        x = cache[f"blocks.{L}.mlp.hook_in"][0]
        out["mlp.hook_in == ln2.hook_out"] = mx(x, cache[f"blocks.{L}.ln2.hook_out"][0])
        gate_out = cache[f"blocks.{L}.mlp.gate.hook_out"]
        out["gate.hook_out shape"] = shape(gate_out)
        out["gate.hook_out == x @ router.weight.T (router logits, tokens flattened)"] = mx(
            gate_out, (x @ router.weight.T).reshape(gate_out.shape)
        )
        out["mlp.hook_pre / hook_post shapes (MoE aliases)"] = [
            shape(cache[f"blocks.{L}.mlp.hook_pre"]),
            shape(cache[f"blocks.{L}.mlp.hook_post"]),
        ]
        out["mlp.hook_pre == mlp.hook_in, hook_post == mlp.hook_out"] = [
            mx(cache[f"blocks.{L}.mlp.hook_pre"], cache[f"blocks.{L}.mlp.hook_in"]),
            mx(cache[f"blocks.{L}.mlp.hook_post"], cache[f"blocks.{L}.mlp.hook_out"]),
        ]
        ew = cache[f"blocks.{L}.mlp.hook_expert_weights"]
        ei = cache[f"blocks.{L}.mlp.hook_expert_indices"]
        out["hook_expert_weights shape"] = shape(ew)
        out["hook_expert_indices shape"] = shape(ei)
        out["hook_expert_weights row sums (min,max)"] = [float(ew.sum(-1).min()), float(ew.sum(-1).max())]
        # recompute
        cfg = hf.config
        top_k = cfg.num_experts_per_tok
        renorm = bool(getattr(cfg, "norm_topk_prob", True)) if self.arch != "mixtral" else True
        probs = torch.softmax(x @ router.weight.T, dim=-1, dtype=torch.float32)
        topv, topi = torch.topk(probs, top_k, dim=-1)
        if renorm:
            topv = topv / topv.sum(-1, keepdim=True)
        out["recomputed top-k indices == hook_expert_indices"] = bool(torch.equal(topi, ei.reshape(topi.shape)))
        dense_w = torch.zeros_like(probs).scatter(-1, topi, topv)
        out["recomputed weights == hook_expert_weights"] = mx(dense_w, ew.reshape(dense_w.shape))
        experts = hf_mlp.experts
        act = experts.act_fn
        y = torch.zeros_like(x)
        for e in range(probs.shape[-1]):
            g, u = (x @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
            y = y + dense_w[:, e : e + 1] * ((act(g) * u) @ experts.down_proj[e].T)
        if hasattr(hf_mlp, "shared_expert"):
            se = hf_mlp.shared_expert
            h = se.act_fn(x @ se.gate_proj.weight.T) * (x @ se.up_proj.weight.T)
            shared = h @ se.down_proj.weight.T
            y = y + torch.sigmoid(x @ hf_mlp.shared_expert_gate.weight.T) * shared
        out["recomputed MoE output vs hook_mlp_out"] = mx(y, cache[f"blocks.{L}.hook_mlp_out"][0])
        out["recomputed MoE output vs mlp.hook_out"] = mx(y, cache[f"blocks.{L}.mlp.hook_out"][0])
        out["renormalised top-k"] = renorm

        # does patching gate.hook_out change the output?
        def big(t, hook):
            t = t.clone()
            t[..., 0] += 100.0
            return t

        with torch.no_grad():
            patched = b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.mlp.gate.hook_out", big)])
        out["patch gate.hook_out (+100 on expert 0 logit): logits change"] = mx(patched, logits)

        def kill(t, hook):
            return torch.zeros_like(t)

        with torch.no_grad():
            patched = b.run_with_hooks(ids, fwd_hooks=[(f"blocks.{L}.mlp.hook_expert_weights", kill)])
        out["zero hook_expert_weights: logits change"] = mx(patched, logits)
        store = {}

        def grab(t, hook):
            store["mlp"] = t.detach().clone()

        def keep_weights(t, hook):
            return t.clone()

        with torch.no_grad():
            b.run_with_hooks(
                ids,
                fwd_hooks=[
                    (f"blocks.{L}.mlp.hook_expert_weights", kill),
                    (f"blocks.{L}.hook_mlp_out", grab),
                ],
            )
        shared_only = torch.zeros_like(x)
        if hasattr(hf_mlp, "shared_expert"):
            shared_only = torch.sigmoid(x @ hf_mlp.shared_expert_gate.weight.T) * shared
        out["zeroed expert weights -> mlp_out == shared-expert part only"] = mx(store["mlp"][0], shared_only)

        # edit weights of one expert: boost a non-selected expert (re-routing semantics)
        def boost(t, hook):
            t = t.clone()
            t[..., 3] = 5.0
            return t

        with torch.no_grad():
            b.run_with_hooks(
                ids,
                fwd_hooks=[(f"blocks.{L}.mlp.hook_expert_weights", boost), (f"blocks.{L}.hook_mlp_out", grab)],
            )
        w2 = dense_w.clone()
        w2[:, 3] = 5.0
        v2, i2 = torch.topk(w2, top_k, dim=-1)
        w2 = torch.zeros_like(w2).scatter(-1, i2, v2)
        y2 = torch.zeros_like(x)
        for e in range(probs.shape[-1]):
            g, u = (x @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
            y2 = y2 + w2[:, e : e + 1] * ((act(g) * u) @ experts.down_proj[e].T)
        y2 = y2 + shared_only
        out["set expert_weights[...,3]=5 -> re-topk of edited weights, no renorm (recompute diff)"] = mx(
            store["mlp"][0], y2
        )
        if "blocks.0.mlp.hook_router_scores" in b.hook_dict:
            out["hook_router_scores fired"] = f"blocks.{L}.mlp.hook_router_scores" in cache.keys()
        for n in ("experts.hook_in", "experts.hook_out", "shared_expert.hook_out", "shared_expert_gate.hook_out"):
            key = f"blocks.{L}.mlp.{n}"
            if key in b.hook_dict:
                out[f"{n} shape"] = shape(cache[key]) if key in cache.keys() else "did not fire"
        if f"blocks.{L}.mlp.experts.hook_out" in cache.keys():
            routed = y - shared_only
            routed_hook = cache[f"blocks.{L}.mlp.experts.hook_out"]
            out["experts.hook_out vs routed part (no shared)"] = mx(routed_hook.reshape(routed.shape), routed)
        if f"blocks.{L}.mlp.shared_expert.hook_out" in cache.keys():
            se_out = cache[f"blocks.{L}.mlp.shared_expert.hook_out"]
            seg_out = cache[f"blocks.{L}.mlp.shared_expert_gate.hook_out"]
            out["shared_expert.hook_out vs ungated shared MLP"] = mx(se_out.reshape(shared.shape), shared)
            gate_logit = x @ hf_mlp.shared_expert_gate.weight.T
            out["shared_expert_gate.hook_out vs pre-sigmoid gate logit"] = mx(
                seg_out.reshape(gate_logit.shape), gate_logit
            )
        self.record("moe", out)

    def run(self):
        for section in (self.cfg, self.hooks_and_shapes, self.left_padding, self.interventions,
                        self.final_norm_unembed, self.moe, self.gradients):  # fmt: skip
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    section()
                except Exception:  # noqa: BLE001 - reporting
                    self.facts[f"{section.__name__}_ERROR"] = traceback.format_exc()
            msgs = sorted({f"{w.category.__name__}: {str(w.message)[:240]}" for w in caught})
            if msgs:
                self.facts.setdefault("warnings", {})[section.__name__] = msgs
        return self.facts


def fmt(value, indent=2):
    pad = " " * indent
    if isinstance(value, dict):
        return "\n".join(
            f"{pad}{k}:" + ("\n" + fmt(v, indent + 2) if isinstance(v, dict) else f" {fmt1(v)}")
            for k, v in value.items()
        )
    return pad + fmt1(value)


def fmt1(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=list(ARCHITECTURES))
    parser.add_argument("--out", help="also write all facts as JSON here")
    args = parser.parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    import transformer_lens
    import transformers

    print(f"torch {torch.__version__}  transformers {transformers.__version__}  "
          f"transformer_lens {getattr(transformer_lens, '__version__', '?')}")  # fmt: skip
    all_facts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            path = build_tiny_model(arch, pathlib.Path(tmp) / arch)
            facts = Probe(arch, path).run()
            all_facts[arch] = facts
            print(f"\n===================== {arch} =====================")
            print(fmt(facts))
            sys.stdout.flush()
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(all_facts, indent=1, default=str))


if __name__ == "__main__":
    main()
