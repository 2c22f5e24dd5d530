"""Attribution patching benchmark (issue #19, point 2). Measures; not a test.

The job: attribution patching (Nanda 2023) of resid_pre, attn_out, mlp_out (every layer x position) and z (every
layer x head x position), logit difference of the clean answer against the corrupt one, denoising, on pairs of
equal token length, for a random Llama built in a temp dir (8 layers, d_model 512, 8 query heads / 2 kv heads:
grouped-query attention; --quick: 4 layers, d_model 256).

Sides (harness.py):
- interp: ``interp.attribution_patching`` -> the whole table (keys, tokens, estimates).
- naive: plain Hugging Face hooks (eager attention: the arithmetic the bridge does), one pair at a time, as a
  researcher writes it: forward hooks cache the clean run's activations; in the corrupt run they keep the
  activations and ``retain_grad()`` them; ``metric.backward()``; then a Python loop over the hooks contracts
  (clean - corrupt) . grad and moves each result to the host.
- equal_work: the same loop on the whole batch at once, doing only what interp must do: gradients of the
  activations only (``torch.autograd.grad``, no weight gradients), results moved to the host in one transfer.
- floor: one plain batched Hugging Face forward (no hooks, no grad). floor_forwards = 3: the clean forward, the
  corrupt forward, and a backward that computes activation gradients only (no weight gradients), about one
  forward's FLOPs.

Also printed (and put in the case's note): the table build's time per row, PatchTable on synthetic values at a
7B-like row count (32 layers x 32 heads of z plus 3 whole-layer sites x 32 layers, 8 pairs of 128 tokens).

Run: .venv/bin/python benchmarks/bench_attribution_patching.py [--quick]
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import Case, main

SITES = ("resid_pre", "attn_out", "mlp_out", "z")


def build_model(quick: bool) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from interp.model.fixtures import train_tiny_tokenizer

    out = Path(tempfile.mkdtemp()) / "llama_gqa"
    tok = train_tiny_tokenizer()
    d, layers = (256, 4) if quick else (512, 8)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=3 * d, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def single_token_words(model) -> list[str]:
    """Words that are one token each after a space (so a prompt of n words is n tokens, whatever they are)."""
    from interp.model.fixtures import tiny_corpus
    from interp.prompts import tokenize

    base = len(tokenize(model, "").ids)
    words = sorted({w for text in tiny_corpus() for w in text.split() if w.isalpha()})
    return [w for w in words if len(tokenize(model, " " + w).ids) == base + 1]


def word_pairs(model, n: int, n_words: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """n clean / corrupt pairs of n_words single-token words; the corrupt prompt differs in two words; the clean
    target and the corrupt target differ."""
    rng = random.Random(seed)
    words = single_token_words(model)
    clean, corrupt = [], []
    for i in range(n):
        text = [rng.choice(words) for _ in range(n_words)]
        other = list(text)
        for p in rng.sample(range(n_words), 2):
            other[p] = rng.choice([w for w in words if w != text[p]])
        a, b = rng.sample(words, 2)
        clean.append({"id": f"c{i}", "prompt": "".join(" " + w for w in text), "target": " " + a})
        corrupt.append({"id": f"k{i}", "prompt": "".join(" " + w for w in other), "target": " " + b})
    return clean, corrupt


def token_batch(model, clean, corrupt) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean ids [N, T], corrupt ids [N, T], answer [N], wrong [N]): the tokens interp feeds, answers read after
    the clean prompt."""
    from interp.prompts import tokenize

    def ids(text):
        return tokenize(model, text).ids

    c = torch.tensor([ids(r["prompt"]) for r in clean])
    k = torch.tensor([ids(r["prompt"]) for r in corrupt])
    ans = torch.tensor([ids(r["prompt"] + r["target"])[len(ids(r["prompt"]))] for r in clean])
    wr = torch.tensor([ids(c_["prompt"] + r["target"])[len(ids(c_["prompt"]))] for c_, r in zip(clean, corrupt)])
    return c, k, ans, wr


def hf_hooks(hf, store: dict, retain: bool) -> list:
    """Forward hooks on a HF Llama: resid_pre (a layer's input), attn_out (self_attn's output), mlp_out, z (o_proj's
    input, per head) of every layer go into ``store[(site, layer)]``; ``retain``: retain_grad() each."""
    handles = []

    def keep(key, t):
        if retain:
            t.retain_grad()
        store[key] = t

    for layer, block in enumerate(hf.model.layers):
        handles += [
            block.register_forward_pre_hook(
                lambda mod, args, kwargs, k=("resid_pre", layer): keep(k, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True),
            block.self_attn.register_forward_hook(lambda mod, args, out, k=("attn_out", layer): keep(k, out[0])),
            block.mlp.register_forward_hook(lambda mod, args, out, k=("mlp_out", layer): keep(k, out)),
            block.self_attn.o_proj.register_forward_pre_hook(lambda mod, args, k=("z", layer): keep(k, args[0])),
        ]
    return handles


def contract(site: str, clean: torch.Tensor, corrupt: torch.Tensor, grad: torch.Tensor, n_heads: int) -> torch.Tensor:
    prod = (clean - corrupt) * grad
    if site == "z":
        prod = prod.view(*prod.shape[:-1], n_heads, -1)
    return prod.sum(-1)


def naive_loop(hf, c_ids, k_ids, ans, wr) -> dict:
    """One pair at a time: clean forward caching, corrupt forward with retain_grad, metric.backward(), per-hook loop."""
    n_heads = hf.config.num_attention_heads
    out: dict = {}
    for i in range(len(c_ids)):
        clean: dict = {}
        handles = hf_hooks(hf, clean, retain=False)
        with torch.no_grad():
            hf(c_ids[i:i + 1])
        for h in handles:
            h.remove()
        corrupt: dict = {}
        handles = hf_hooks(hf, corrupt, retain=True)
        try:
            logits = hf(k_ids[i:i + 1]).logits[0, -1]
        finally:
            for h in handles:
                h.remove()
        (logits[ans[i]] - logits[wr[i]]).backward()
        for key, act in corrupt.items():
            attr = contract(key[0], clean[key], act.detach(), act.grad, n_heads)
            out.setdefault(key, []).append(attr[0].cpu())
        hf.zero_grad(set_to_none=True)
    return {key: torch.stack(v) for key, v in out.items()}


def batched_loop(hf, c_ids, k_ids, ans, wr) -> dict:
    """The whole batch at once; gradients of the hooked activations only; one transfer to the host."""
    n_heads = hf.config.num_attention_heads
    clean: dict = {}
    handles = hf_hooks(hf, clean, retain=False)
    with torch.no_grad():
        hf(c_ids)
    for h in handles:
        h.remove()
    corrupt: dict = {}
    handles = hf_hooks(hf, corrupt, retain=False)
    try:
        logits = hf(k_ids).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(len(ans))
    metric = (logits[rows, ans] - logits[rows, wr]).sum()
    keys = list(corrupt)
    grads = torch.autograd.grad(metric, [corrupt[k] for k in keys])
    attrs = [contract(k[0], clean[k], corrupt[k].detach(), g, n_heads) for k, g in zip(keys, grads)]
    host = torch.cat([a.reshape(-1) for a in attrs]).cpu()
    return dict(zip(keys, (v.view(a.shape) for v, a in zip(host.split([a.numel() for a in attrs]), attrs))))


def max_diff(result, ref: dict) -> float:
    """Largest |interp attribution - hand-written attribution| over every row of the table."""
    t = result.table
    pid = {f"c{i}": i for i in range(len(next(iter(ref.values()))))}
    worst = 0.0
    for (site, layer), v in ref.items():
        rows = t[(t["site"] == site) & (t["layer"] == layer)]
        idx = rows["prompt_id"].map(pid).to_numpy()
        pos = rows["position"].to_numpy()
        v = v.numpy()
        want = v[idx, pos, rows["head"].to_numpy(dtype=np.int64)] if site == "z" else v[idx, pos]
        worst = max(worst, float(np.abs(rows["attribution"].to_numpy() - want).max()))
    return worst


def table_build_per_row(model) -> tuple[float, float, int]:
    """(wall, CPU) seconds per row of PatchTable (keys, tokens, 5 value columns), 7B-like row count, synthetic."""
    from interp.methods.attribution_patching import COLUMNS
    from interp.methods.patching_core import KEY_COLUMNS, PatchTable, TokenNames, batch_cells, make_pairs, pair_batches

    clean, corrupt = word_pairs(model, 8, 127, seed=1)
    pairs = make_pairs(model, clean, corrupt, target="target", wrong=None, align=None, need_wrong=True)
    (cb, kb), = pair_batches(model, pairs, 8)
    places = [(s, layer, None) for s in ("resid_pre", "attn_out", "mlp_out") for layer in range(32)]
    places += [("z", layer, h) for layer in range(32) for h in range(32)]
    cells = batch_cells("all", cb, kb)
    rng = np.random.default_rng(0)
    attr = rng.standard_normal((len(places), len(cells)))
    per_cell = rng.standard_normal(len(cells))
    wall, cpu = float("inf"), float("inf")
    for _ in range(5):  # the minimum: a shared machine only ever adds time
        t0, c0 = time.perf_counter(), time.process_time()
        rows = PatchTable(pairs, TokenNames(model.tokenizer), places, [*KEY_COLUMNS, *COLUMNS])
        rows.add(kb, cells, {"attribution": attr, "estimate": attr + per_cell, "exact": float("nan"),
                             "clean_metric": per_cell, "corrupt_metric": per_cell})
        table = rows.table()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall / len(table), cpu / len(table), len(table)


def cases(quick: bool = False) -> list[Case]:
    from transformers import AutoModelForCausalLM

    import interp
    from interp.methods.attribution_patching import attribution_patching

    path = build_model(quick)
    model = interp.load_model(path, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    n, n_words = (4, 15) if quick else (8, 31)
    clean, corrupt = word_pairs(model, n, n_words)
    c_ids, k_ids, ans, wr = token_batch(model, clean, corrupt)
    assert c_ids.shape == k_ids.shape, "the pairs must share one token length"
    per_row, cpu_row, n_rows = table_build_per_row(model)
    bridge_ratio = bridge_over_hf(model, hf, k_ids)
    info = model.info
    shape = (f"Llama {info.n_layers} layers, d_model {info.d_model}, {info.n_heads} heads / 2 kv (GQA); "
             f"{n} pairs x {c_ids.shape[1]} tokens")
    note = (f"{shape}; table build {per_row * 1e6:.3f} us/row wall, {cpu_row * 1e6:.3f} us/row CPU at {n_rows} rows "
            f"(7B-like, synthetic); one plain bridge forward = {bridge_ratio:.2f}x one plain HF forward of the batch "
            "(interp runs the bridge, the hand-written sides HF)")
    print(f"[bench_attribution_patching] plain forward of the batch, bridge / HF: {bridge_ratio:.2f}x (median of 15, "
          "interleaved)")
    print(f"[bench_attribution_patching] {shape}")
    print(f"[bench_attribution_patching] table build (PatchTable, synthetic values, best of 5): {per_row * 1e6:.3f} us "
          f"per row wall, {cpu_row * 1e6:.3f} us per row CPU, at {n_rows} rows (32 layers x 32 heads of z + 3 sites x "
          "32 layers, 8 pairs x 128 tokens)")

    def run_interp():
        return attribution_patching(model, clean, corrupt, sites=SITES, batch_size=n, progress=False)

    def floor():
        with torch.no_grad():
            hf(k_ids)

    return [Case(name=f"attribution {'+'.join(SITES)} x every position", interp=run_interp,
                 naive=lambda: naive_loop(hf, c_ids, k_ids, ans, wr),
                 equal_work=lambda: batched_loop(hf, c_ids, k_ids, ans, wr),
                 floor=floor, floor_forwards=3, check=max_diff, note=note,
                 extra={"table_build_us_per_row": per_row * 1e6, "table_build_cpu_us_per_row": cpu_row * 1e6,
                        "bridge_forward_over_hf": bridge_ratio})]


def bridge_over_hf(model, hf, ids: torch.Tensor, repeats: int = 15) -> float:
    """Median time of one plain no-grad forward of ``ids`` through the bridge over the same through the HF model,
    the two interleaved: the share of interp's time its forward engine adds before any of interp's own work."""
    times: dict[str, list[float]] = {"bridge": [], "hf": []}
    runs = {"bridge": lambda: model.bridge(ids), "hf": lambda: hf(ids)}
    with torch.no_grad():
        for f in runs.values():
            f()
        for _ in range(repeats):
            for name, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    return float(np.median(times["bridge"]) / np.median(times["hf"]))


if __name__ == "__main__":
    main(cases)
