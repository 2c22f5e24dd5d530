"""The GPU suite: every registered method on random-init models at real widths, in bfloat16 and float32, on one
device, against the same call in float32 on the CPU. Prepared for when a GPU is lent (none has been: no GPU
table exists yet); ``--device cpu --tiny`` exercises the same code here (tests/test_benchmarks.py runs it).

Models (random weights, saved once to a temporary directory with the dense organism's tokenizer):
- ``llama``: a Llama-2-7B layer stack cut to ``--layers`` blocks at full width (d_model 4096, 32 heads, MLP
  11008, vocab 32000);
- ``moe``: a Qwen1.5-MoE-A2.7B-shaped MoE cut to ``--layers`` blocks (d_model 2048, 16 heads, 60 routed experts
  of width 1408 with top-4 routing, a shared expert of 5632, vocab 32000 here).
``--tiny``: the same architectures at a few dozen units wide (the CPU check).

For each method of the registry (MoE methods on the MoE model, the rest on the Llama), on the inputs of its
cheap check run (interp.methods.checks.check_call: the organism corpus's held-out prompts and the entry's
example parameters): the time of the call on the device (after one warm-up), that time over one plain forward of
the same prompts (``x forward``: how many forward-equivalents the call cost), the peak device memory, and the
largest difference of the schema's value column from the CPU float32 result. Output: a Markdown table on stdout
and, with ``--out``, written atomically.

Run: python benchmarks/gpu_suite.py [--device cuda] [--dtypes bfloat16,float32] [--layers 2] [--only NAME ...]
     python benchmarks/gpu_suite.py --device cpu --tiny
Budget: at real width, 2 layers, both dtypes, the suite is sized to finish well inside 10 minutes on one H100/H200-
class GPU (the CPU reference runs at the same width on the host: use --layers 2).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build(directory: Path, kind: str, layers: int, tiny: bool) -> Path:
    """A random-init model of ``kind`` ("llama" | "moe") saved with the dense organism's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

    tok = AutoTokenizer.from_pretrained(str(ROOT / "data" / "organisms" / "dense"))
    vocab = max(len(tok), 512 if tiny else 32000)
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64 if tiny else 4096, intermediate_size=128 if tiny else 11008,
                          num_hidden_layers=layers, num_attention_heads=4 if tiny else 32,
                          num_key_value_heads=4 if tiny else 32, max_position_embeddings=1024, **special)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2MoeConfig(vocab_size=vocab, hidden_size=64 if tiny else 2048, num_hidden_layers=layers,
                             num_attention_heads=4 if tiny else 16, num_key_value_heads=4 if tiny else 16,
                             num_experts=8 if tiny else 60, num_experts_per_tok=2 if tiny else 4,
                             moe_intermediate_size=32 if tiny else 1408,
                             shared_expert_intermediate_size=64 if tiny else 5632,
                             intermediate_size=128 if tiny else 5632, max_position_embeddings=1024, **special)
        model = Qwen2MoeForCausalLM(cfg)
    out = directory / kind
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _value_diff(a: Any, b: Any, entry: Any) -> float:
    """Largest |difference| of the schema's value column between two results of one call (rows in call order)."""
    ta = getattr(a, "table", None)
    tb = getattr(b, "table", None)
    if ta is None or tb is None or entry.schema is None or entry.schema.value not in ta.columns:
        return float("nan")
    va = np.asarray(ta[entry.schema.value], dtype=float)
    vb = np.asarray(tb[entry.schema.value], dtype=float)
    if va.shape != vb.shape:
        return float("inf")
    both = ~(np.isnan(va) & np.isnan(vb))
    return float(np.max(np.abs(va[both] - vb[both]))) if both.any() else 0.0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(device: str, dtypes: list[str], layers: int, tiny: bool, only: list[str] | None) -> list[dict]:
    import interp
    from interp.methods.checks import check_call
    from interp.methods.registry import list_methods
    from interp.prompts import encode, make_batch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {k: build(Path(tmp), k, layers, tiny) for k in ("llama", "moe")}
        cpu = {k: interp.load_model(d, device="cpu", dtype=torch.float32) for k, d in dirs.items()}
        entries = [e for e in list_methods() if not only or e.name in only]
        for dtype in dtypes:
            dev = {k: interp.load_model(d, device=device, dtype=getattr(torch, dtype)) for k, d in dirs.items()}
            for entry in entries:
                kind = "moe" if entry.organism == "moe" else "llama"
                rec: dict[str, Any] = {"method": entry.name, "model": kind, "dtype": dtype, "device": device}
                try:
                    args, kwargs = check_call(entry, cpu[kind])
                    ref = entry.function(cpu[kind], *args, **kwargs)
                    entry.function(dev[kind], *args, **kwargs)  # warm-up
                    if device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    _sync(device)
                    t = time.perf_counter()
                    got = entry.function(dev[kind], *args, **kwargs)
                    _sync(device)
                    rec["seconds"] = time.perf_counter() - t
                    prompts = args[0]
                    enc = encode(dev[kind], prompts)
                    batch = make_batch(dev[kind], enc, list(range(len(enc.items)))).to(dev[kind].device)
                    with torch.no_grad():
                        _sync(device)
                        t = time.perf_counter()
                        dev[kind].hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                           position_ids=batch.position_ids)
                        _sync(device)
                        rec["x_forward"] = rec["seconds"] / (time.perf_counter() - t)
                    rec["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
                    rec["max_abs_diff_vs_cpu_fp32"] = _value_diff(got, ref, entry)
                    rec["error"] = ""
                except Exception as exc:  # one method's failure is reported, the rest still run
                    rec["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
                    traceback.print_exc(file=sys.stderr)
                rows.append(rec)
                print(_line(rec), flush=True)
            del dev
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


HEADER = "| method | model | dtype | seconds | x forward | peak GPU GiB | max abs diff vs CPU fp32 | error |"


def _fmt(x: Any, f: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, f)


def _line(r: dict) -> str:
    return (f"| {r['method']} | {r['model']} | {r['dtype']} | {_fmt(r.get('seconds'), '.3f')} | "
            f"{_fmt(r.get('x_forward'), '.1f')} | {_fmt(r.get('peak_gb'), '.2f')} | "
            f"{_fmt(r.get('max_abs_diff_vs_cpu_fp32'), '.1e')} | {r.get('error', '')} |")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a few dozen units wide (the CPU check)")
    ap.add_argument("--only", nargs="*", default=None, help="method names")
    ap.add_argument("--out", default=None, help="write the table here (atomically)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu --tiny for the CPU check")
    t = time.perf_counter()
    print(HEADER + "\n|" + "---|" * 8, flush=True)
    rows = run(args.device, args.dtypes.split(","), args.layers, args.tiny, args.only)
    print(f"suite: {time.perf_counter() - t:.0f} s", flush=True)
    if args.out:
        from interp.results.atomic import write_text

        write_text(args.out, "\n".join([HEADER, "|" + "---|" * 8, *map(_line, rows)]) + "\n")
    return rows


if __name__ == "__main__":
    main()
