"""Ships over every head for 64 prompts: the batched variants engine against the per-head reference loop.

The reference is the authors' procedure: one prompt at a time, one full forward per head (plus one clean). Both
run here, in the same process, and the ratio is printed with the largest score difference between them.

    python benchmarks/bench_ships.py [--prompts 64] [--naive-prompts N] [--threads 2]

Uses the dense organism (data/organisms/dense) when it is there, else a random Llama of its shape (6 layers,
6 heads, 2 kv heads, d_model 192) built in a temporary directory; it prints which. ``--naive-prompts`` times the
reference loop on the first N prompts only and scales its time to all of them (printed as such).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

import interp
from interp.methods import safety_heads as sh

DENSE = Path(__file__).resolve().parents[1] / "data" / "organisms" / "dense"


def load(tmp: str) -> tuple[interp.Model, list[dict], str]:
    if (DENSE / "config.json").exists():
        from interp.organisms.corpus import build_corpus

        recs = [r for r in build_corpus(0)["safety"] if r["split"] == "train"]
        return interp.load_model(DENSE), [{"id": r["id"], "prompt": r["prompt"]} for r in recs], "dense organism"
    from transformers import LlamaConfig, LlamaForCausalLM

    from interp.model.fixtures import train_tiny_tokenizer

    tok = train_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=192, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=512, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    words = ["bread", "a kite", "the garden", "a letter", "soup", "a poem", "the bike", "a fence"]
    verbs = ["make", "fix", "clean", "paint", "build", "plan", "write", "find"]
    prompts = [{"id": f"p{i}", "prompt": f"User: How do I {verbs[i % 8]} {words[(i // 8) % 8]} today?\nAssistant:"}
               for i in range(64)]
    return interp.load_model(tmp), prompts, "random Llama of the dense organism's shape (organism not shipped)"


def naive(model: interp.Model, prompts: list[dict]) -> dict:
    out = {}
    heads = sh.all_heads(model)
    for rec in prompts:
        enc = interp.encode(model, [rec])
        batch = interp.make_batch(model, enc, [0])
        clean, _ = interp.forward(model, batch)
        p = clean.double().softmax(-1) + 1e-12
        for h in heads:
            abl, _ = interp.forward(model, batch, [interp.ablate_heads(model, [h])])
            q = abl.double().softmax(-1) + 1e-12
            out[(rec["id"], *h)] = float((p * (p / q).log()).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--naive-prompts", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        model, prompts, which = load(tmp)
        prompts = prompts[:args.prompts]
        i = model.info
        print(f"model: {which}: {i.n_layers} layers x {i.n_heads} heads ({i.n_kv_heads} kv), d_model {i.d_model}")
        print(f"prompts: {len(prompts)}; heads: {i.n_layers * i.n_heads}")
        sh.ships(model, prompts[:2])  # warm-up
        t0 = time.perf_counter()
        res = sh.ships(model, prompts, batch_size=args.batch_size)
        t_batched = time.perf_counter() - t0
        n_naive = args.naive_prompts or len(prompts)
        t0 = time.perf_counter()
        ref = naive(model, prompts[:n_naive])
        t_naive = (time.perf_counter() - t0) * len(prompts) / n_naive
        got = {(r.prompt_id, r.layer, r.head): r.score for r in res.table.itertuples()}
        diff = max(abs(got[k] - v) for k, v in ref.items())
        scaled = f" (measured on {n_naive} prompts, scaled)" if n_naive < len(prompts) else ""
        print(f"batched ships: {t_batched:.2f} s")
        print(f"per-head reference loop: {t_naive:.2f} s{scaled}")
        print(f"speed-up: {t_naive / t_batched:.1f}x   max |score difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
