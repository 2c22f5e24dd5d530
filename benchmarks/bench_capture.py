"""Capture benchmarks: ``interp.capture`` against hooks on the plain Hugging Face model.

1. every layer's hook_z at every position, in memory: naive = one prompt per forward with a forward pre-hook on
   each attention output projection (its input is z), equal_work = the same hooks on the batch, floor = the plain
   batched forward (floor_forwards = 1: capture needs one forward);
2. every layer's hook_resid_post at every position streamed to disk (one safetensors file per batch): equal_work
   = ``output_hidden_states`` + ``save_file`` per batch, floor = the plain batched forwards.

Model: data/organisms/dense if it is there, else a random Llama of a similar shape built in a temp dir.
Run: .venv/bin/python benchmarks/bench_capture.py [--quick]
     .venv/bin/python benchmarks/bench_capture.py --rss      # peak RSS of streaming N = 1,000 vs 10,000 prompts
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Case, main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the capital of France is Paris and the river flows through the old city near a bridge".split()
_TMP = tempfile.TemporaryDirectory()


def model_dir() -> Path:
    organism = ROOT / "data" / "organisms" / "dense"
    if (organism / "config.json").exists():
        return organism
    from transformers import LlamaConfig, LlamaForCausalLM

    from interp.model.fixtures import train_tiny_tokenizer

    out = Path(_TMP.name) / "dense_like"
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


def _batches(model, ps: list[str], bsz: int):
    from interp.prompts import encode, make_batch

    enc = encode(model, ps)
    return [make_batch(model, enc, list(range(s, min(s + bsz, len(ps))))) for s in range(0, len(ps), bsz)]


def _z_hooks(model, batches) -> list[dict[int, torch.Tensor]]:
    """hook_z read on the plain HF model (the o_proj input), each batch's rows left-aligned, per prompt."""
    hf, info = model.hf_model, model.info
    out = []
    with torch.no_grad():
        for b in batches:
            got = {}
            handles = [layer.self_attn.o_proj.register_forward_pre_hook(
                lambda _m, a, k=k, got=got: got.__setitem__(k, a[0].detach().clone()))
                for k, layer in enumerate(hf.model.layers)]
            try:
                hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
            finally:
                for h in handles:
                    h.remove()
            for r in range(b.size):
                off = int(b.offsets[r])
                out.append({k: v[r, off:].reshape(-1, info.n_heads, info.d_head) for k, v in got.items()})
    return out


def _plain(model, batches) -> None:
    with torch.no_grad():
        for b in batches:
            model.hf_model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)


def _stream_hf(model, batches, out: str) -> None:
    from safetensors.torch import save_file

    with torch.no_grad():
        for k, b in enumerate(batches):
            hs = model.hf_model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                                output_hidden_states=True).hidden_states
            save_file({f"h{i}": h.contiguous() for i, h in enumerate(hs[1:])}, f"{out}/b{k:05d}.safetensors")


def _z_check(cap, ref: list[dict[int, torch.Tensor]]) -> float:
    worst = 0.0
    for i, per in enumerate(ref):
        for layer, z in per.items():
            worst = max(worst, float((cap.get(f"blocks.{layer}.attn.hook_z", i) - z).abs().max()))
    return worst


def cases(quick: bool = False) -> list[Case]:
    import interp

    model = interp.load_model(model_dir(), device="cpu")
    n_layers = model.info.n_layers
    ps = prompts(16)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    batched, single = _batches(model, ps, 16), _batches(model, ps, 1)
    n_stream = 64 if quick else 512
    sp = prompts(n_stream)
    stream_batches = _batches(model, sp, 32)
    r_names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    out_dir = Path(_TMP.name) / "stream"
    hf_dir = Path(_TMP.name) / "stream_hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    return [
        Case(name="capture hook_z, every layer and position, 16 prompts",
             interp=lambda: interp.capture(model, ps, z_names, positions="all", batch_size=16, progress=False),
             naive=lambda: _z_hooks(model, single), equal_work=lambda: _z_hooks(model, batched),
             floor=lambda: _plain(model, batched), floor_forwards=1, check=_z_check),
        Case(name=f"capture resid_post to disk, every layer and position, {n_stream} prompts",
             interp=lambda: interp.capture(model, sp, r_names, positions="all", batch_size=32, to_dir=out_dir,
                                           progress=False),
             naive=None, equal_work=lambda: _stream_hf(model, stream_batches, str(hf_dir)),
             floor=lambda: _plain(model, stream_batches), floor_forwards=1,
             note="capture to disk: equal work = HF output_hidden_states + one save_file per batch of 32"),
    ]


# --- peak RSS of streaming (not a timing: one process per N) ---------------------------------------------------
def _child(path: str, n: int, out: str) -> None:
    import resource
    import time

    import interp

    model = interp.load_model(path, device="cpu")
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.info.n_layers)]
    t = time.perf_counter()
    interp.capture(model, prompts(n), names, positions="all", batch_size=32, to_dir=out, progress=False)
    print(json.dumps({"n": n, "seconds": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def rss(sizes: tuple[int, ...] = (1000, 10000)) -> None:
    path, rows = model_dir(), []
    for n in sizes:
        with tempfile.TemporaryDirectory() as out:
            res = subprocess.run([sys.executable, __file__, "--child", str(path), str(n), out], capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            on_disk = sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20
        print(f"streaming capture N={n:>6}: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB, {on_disk:.0f} MB on disk, "
              f"{rows[-1]['seconds']:.1f} s")
    print(f"peak RSS ratio N={sizes[-1]} / N={sizes[0]}: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1:2] == ["--rss"]:
        rss()
    else:
        main(cases)
