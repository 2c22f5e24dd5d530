"""Where the bridge's plain forward spends more than Hugging Face's (issue #19: attribution patching against a
hand-written HF loop). Source of the "bridge overhead" section of docs/bridge_facts.md.

Builds bench_attribution_patching's random Llama (GQA; ``--quick``: 4 layers, d_model 256, 4 x 16 tokens; else 8
layers, d_model 512, 8 x 32 tokens), runs the same token batch through ``model.bridge`` and through the plain
Hugging Face model (eager attention), interleaved, and prints: the median time of each and their ratio; the aten
operators per forward of each (torch.profiler), and the operators the bridge calls more often than HF.

Run: .venv/bin/python docs/measure_bridge_overhead.py [--quick] [--repeats 21]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_attribution_patching as bench  # noqa: E402


def op_counts(fn, n: int = 3) -> Counter:
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(n):
            fn()
    return Counter({e.key: e.count / n for e in prof.key_averages()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the quick shape of make bench")
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM

    import interp

    path = bench.build_model(args.quick)
    model = interp.load_model(path, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager").eval()
    n, n_words = (4, 15) if args.quick else (8, 31)
    clean, corrupt = bench.word_pairs(model, n, n_words)
    _, ids, _, _ = bench.token_batch(model, clean, corrupt)
    sides = {"bridge": lambda: model.bridge(ids), "hf": lambda: hf(ids)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    with torch.no_grad():
        assert torch.allclose(sides["bridge"]().float(), sides["hf"]().logits.float(), atol=1e-4)
        for _ in range(3):
            for f in sides.values():
                f()
        for _ in range(args.repeats):
            for k, f in sides.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        counts = {k: op_counts(f) for k, f in sides.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    info = model.info
    print(f"Llama {info.n_layers} layers, d_model {info.d_model}, batch {tuple(ids.shape)}; torch threads "
          f"{torch.get_num_threads()}; median of {args.repeats}, interleaved")  # fmt: skip
    print(f"plain forward: bridge {med['bridge'] * 1e3:.2f} ms, HF {med['hf'] * 1e3:.2f} ms, "
          f"bridge / HF {med['bridge'] / med['hf']:.2f}x")  # fmt: skip
    total = {k: sum(c.values()) for k, c in counts.items()}
    print(f"aten operators per forward: bridge {total['bridge']:.0f}, HF {total['hf']:.0f}")
    more = sorted(((counts["bridge"][op] - counts["hf"][op], op) for op in counts["bridge"]), reverse=True)
    print("operators the bridge calls more often (per forward: bridge - HF):")
    for diff, op in more:
        if diff >= 1:
            print(f"  {op}: +{diff:.0f} ({counts['bridge'][op]:.0f} vs {counts['hf'][op]:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
