"""Would SDPA attention help the bridge? Measures, on the dense organism (float32, CPU), one batch of prompts:

1. the time of a forward through the bridge (interp.forward, no hooks), of the plain HF model with eager attention
   and with SDPA (``attn_implementation="sdpa"``), medians of interleaved rounds;
2. the largest |logit difference| of the bridge against HF eager and against HF SDPA;
3. whether the bridge's attention hooks fire in a forward of the bridge over a model booted from an SDPA HF model
   (i.e. whether the bridge computes attention itself whatever the HF setting).

Run: .venv/bin/python docs/measure_sdpa.py [--batch 16] [--tokens 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

import interp
from interp.organisms import organism_dir
from interp.prompts import encode, make_batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    path = organism_dir("dense")
    m = interp.load_model(path, device="cpu")
    words = "the capital of France is Paris and the river flows through the old city near a bridge".split()
    text = " ".join(words[i % len(words)] for i in range(args.tokens))
    ps = [{"id": str(i), "prompt": " ".join(text.split()[i:])} for i in range(args.batch)]
    enc = encode(m, ps)
    b = make_batch(m, enc, list(range(len(ps))))
    hf = {impl: AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=impl).eval()
          for impl in ("eager", "sdpa")}
    kw = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
    real = b.attention_mask.bool()
    with torch.no_grad():
        bridge_logits, _ = interp.forward(m, b, logits="all")
        outs = {impl: h(**kw).logits for impl, h in hf.items()}
    for impl, lg in outs.items():
        print(f"max |bridge - HF {impl}| logits (real positions): {(bridge_logits[real] - lg[real]).abs().max():.2e}")
    print(f"max |HF eager - HF sdpa| logits: {(outs['eager'][real] - outs['sdpa'][real]).abs().max():.2e}")

    sides = {"bridge": lambda: interp.forward(m, b, logits="all"),
             **{f"hf {k}": (lambda h=h: h(**kw)) for k, h in hf.items()}}
    times: dict[str, list[float]] = {k: [] for k in sides}
    with torch.no_grad():
        for f in sides.values():
            f()
        for r in range(args.repeats):
            order = list(sides)[r % len(sides):] + list(sides)[:r % len(sides)]
            for k in order:
                t = time.perf_counter()
                sides[k]()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"batch {args.batch} x {b.width} tokens, median of {args.repeats}: "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in med.items())
          + f"; bridge / HF sdpa {med['bridge'] / med['hf sdpa']:.2f}x, HF eager / HF sdpa "
          f"{med['hf eager'] / med['hf sdpa']:.2f}x")

    sdpa_model = interp.load_model(path, device="cpu")
    sdpa_model.hf_model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        _, store = interp.forward(sdpa_model, b, read=["blocks.0.attn.hook_pattern"])
    fired = "blocks.0.attn.hook_pattern" in store
    print(f"bridge over an HF config set to sdpa: hook_pattern read: {fired} "
          f"({'the bridge computes the pattern itself' if fired else 'SDPA skipped the pattern'})")


if __name__ == "__main__":
    main()
