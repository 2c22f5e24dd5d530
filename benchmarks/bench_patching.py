"""Patching benchmark (issue #6). Prints ratios measured in one run; not a test.

Exact activation patching of every resid_pre site x position: ``interp.activation_patching`` (the variants
engine: many patched copies per forward, each chunk started at its patched block) against the naive loop (one
forward of the whole pair batch per layer x position, same patches, same metric). Goal: >= 3x. The two results
are also compared (they must agree to 1e-5). Attribution patching's time is printed next to them.

Model: data/organisms/dense if it is there (composite task pairs: the same demonstrations, another query of the
same token length), else a random Llama of a similar shape built in a temp dir (printed).
Run: .venv/bin/python benchmarks/bench_patching.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def model_dir() -> tuple[Path, str]:
    organism = ROOT / "data" / "organisms" / "dense"
    if (organism / "config.json").exists():
        return organism, "dense organism (data/organisms/dense)"
    from transformers import LlamaConfig, LlamaForCausalLM

    from interp.model.fixtures import train_tiny_tokenizer

    out = Path(tempfile.mkdtemp()) / "dense_like"
    tok = train_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out, "FALLBACK random Llama (6 layers, d_model 256, 8 heads / 2 kv) - the dense organism is not shipped"


def organism_pairs(model, n: int) -> tuple[list[dict], list[dict]] | None:
    from interp.organisms import CORPUS_DIR
    from interp.organisms.pairs import composite_pairs

    if not (CORPUS_DIR / "composite.jsonl").exists():
        return None
    clean, corrupt = composite_pairs(model, n)
    return (clean, corrupt) if clean else None


def fallback_pairs(n: int) -> tuple[list[dict], list[dict]]:
    names = ["Mary", "John"]
    places = ["store", "house", "river", "city"]
    clean = [{"id": f"c{i}", "prompt": f"Q: {names[i % 2]} went to the {places[i % 4]} and then to the old city\nA:",
              "target": " to"} for i in range(n)]
    corrupt = [{"id": f"k{i}", "prompt": f"Q: {names[(i + 1) % 2]} went to the {places[i % 4]} and then to the "
                "old city\nA:", "target": " and"} for i in range(n)]
    return clean, corrupt


def naive_loop(model, clean, corrupt):
    """One forward of the pair batch per (layer, position): the reference loop."""
    from interp.activations.hooks import Edit, Intervention
    from interp.activations.sites import hook_name
    from interp.activations.variants import forward
    from interp.methods.patching_core import make_pairs, pair_batches, raw_metric

    pairs = make_pairs(model, clean, corrupt, target="target", wrong=None, align=None, need_wrong=True)
    out = {}
    for cb, kb in pair_batches(model, pairs, len(clean)):
        names = [hook_name("resid_pre", layer) for layer in range(model.info.n_layers)]
        _, store = forward(model, cb, read=names)
        ans, wr = pairs.target[kb.indices], pairs.wrong[kb.indices]
        first = int(torch.maximum(cb.offsets, kb.offsets).min())
        for layer, name in enumerate(names):
            for c in range(first, kb.width):
                valid = (torch.maximum(cb.offsets, kb.offsets) <= c)

                def apply(t, rows, c=c, name=name, valid=valid, store=store):
                    t[rows][valid, c] = store[name][valid, c]

                logits, _ = forward(model, kb, [Intervention((Edit(name, apply),))])
                vals = raw_metric("logit_diff", logits, ans, wr)
                for r in range(kb.size):
                    if valid[r]:
                        out[(pairs.clean.ids[kb.indices[r]], layer, c - int(kb.offsets[r]))] = float(vals[r])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 pairs instead of 16")
    args = ap.parse_args()
    import interp
    from interp.methods.attribution_patching import attribution_patching
    from interp.methods.patching import activation_patching

    torch.set_num_threads(max(1, torch.get_num_threads()))
    path, what = model_dir()
    model = interp.load_model(path, device="cpu")
    n = 4 if args.quick else 16
    pairs = organism_pairs(model, n) if "organism" in what else None
    clean, corrupt = pairs if pairs else fallback_pairs(n)
    print(f"model: {what}; {model.info.n_layers} layers; {len(clean)} pairs of "
          f"{len(interp.prompts.tokenize(model, clean[0]['prompt']).ids)} tokens; sites: resid_pre x every position")
    activation_patching(model, clean[:1], corrupt[:1], sites="resid_pre", positions="last", progress=False)  # warm-up
    t0 = time.perf_counter()
    res = activation_patching(model, clean, corrupt, sites="resid_pre", batch_size=len(clean), progress=False)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = naive_loop(model, clean, corrupt)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    attribution_patching(model, clean, corrupt, sites="resid_pre", batch_size=len(clean), progress=False)
    t_attr = time.perf_counter() - t0
    got = {(p, int(la), int(po)): float(v) for p, la, po, v in
           zip(res.table["prompt_id"], res.table["layer"], res.table["position"], res.table["patched_metric"])}
    worst = max(abs(got[k] - v) for k, v in ref.items())
    assert set(got) == set(ref), "the two runs patched different places"
    print(f"places patched: {len(ref)} (pair x layer x position)")
    print(f"naive loop (1 forward per layer x position): {t_loop:.2f} s")
    print(f"activation_patching (variants engine):       {t_batched:.2f} s  -> ratio {t_loop / t_batched:.2f}x "
          f"(goal >= 3x); max |difference| {worst:.2e}")
    print(f"attribution_patching (2 forwards + 1 backward): {t_attr:.2f} s -> {t_loop / t_attr:.1f}x faster than "
          "the loop")


if __name__ == "__main__":
    main()
