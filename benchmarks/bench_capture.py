"""Capture benchmarks (issue: core). Prints ratios measured in one run; not a test.

1. capture of hook_z only vs the plain Hugging Face forward on the same batch (goal: <= 1.15x);
2. streaming capture of hook_resid_post (every layer, every position) to disk for N = 1,000 and 10,000
   prompts: peak RSS of each run (goal: a bound that does not grow with N).

Model: data/organisms/dense if it is there, else a random Llama of the same shape built in a temp dir.
Run: .venv/bin/python benchmarks/bench_capture.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the capital of France is Paris and the river flows through the old city near a bridge".split()


def model_dir() -> Path:
    organism = ROOT / "data" / "organisms" / "dense"
    if (organism / "config.json").exists():
        return organism
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
    return out


def prompts(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 24)) for i in range(n)]


def bench_hook_z(path: Path, repeats: int) -> None:
    from transformers import AutoModelForCausalLM

    import interp
    from interp.prompts import encode, make_batch

    model = interp.load_model(path, device="cpu")
    hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    ps = prompts(16)
    batch = make_batch(model, encode(model, ps), list(range(16)))
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.info.n_layers)]

    def plain():
        with torch.no_grad():
            hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)

    def cap():
        interp.capture(model, ps, names, positions="all", batch_size=16, progress=False)

    for f in (plain, cap):
        f()
    times = {"plain": [], "capture": []}
    for _ in range(repeats):  # interleaved, so load on the machine hits both alike
        for key, f in (("plain", plain), ("capture", cap)):
            t = time.perf_counter()
            f()
            times[key].append(time.perf_counter() - t)
    p, c = statistics.median(times["plain"]), statistics.median(times["capture"])
    print(f"hook_z capture: plain HF forward {p * 1e3:.1f} ms, capture {c * 1e3:.1f} ms (median of {repeats}); "
          f"ratio {c / p:.2f}x (goal <= 1.15x)")


def child(path: str, n: int, out: str) -> None:
    import resource

    import interp

    model = interp.load_model(path, device="cpu")
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.info.n_layers)]
    t = time.perf_counter()
    interp.capture(model, prompts(n), names, positions="all", batch_size=32, to_dir=out, progress=False)
    print(json.dumps({"n": n, "seconds": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_streaming(path: Path, sizes: list[int]) -> None:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as out:
            res = subprocess.run([sys.executable, __file__, "--child", str(path), str(n), out], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            on_disk = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
        print(f"streaming capture N={n:>6}: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB, {on_disk:.0f} MB on disk, "
              f"{rows[-1]['seconds']:.1f} s")
    print(f"peak RSS ratio N={sizes[-1]} / N={sizes[0]}: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f} "
          "(goal: ~1, independent of N)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = model_dir()
    print(f"model: {path}")
    bench_hook_z(path, repeats=5 if args.quick else 15)
    bench_streaming(path, [200, 2000] if args.quick else [1000, 10000])


if __name__ == "__main__":
    main()
