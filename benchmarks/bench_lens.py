"""Logit lens benchmark: ``interp.logit_lens`` (three target fields, top-10) against a researcher's loop on the
plain Hugging Face model, at every position and at the last position.

- interp: ``logit_lens(model, prompts, target=("y_t", "y_s1", "y_s2"), positions=..., batch_size=B)``;
- naive: one prompt per forward, ``output_hidden_states``, then per layer the final norm, the unembedding and the
  statistics written with ``interp.metrics`` (log-softmax, KL, entropy, top-k, and per target its probability,
  logit and rank), one call each;
- equal_work: the same loop on the same batches as interp (prompt-batched, padding never decoded);
- floor: one plain batched forward of the same batches plus the unembedding of every other layer at the decoded
  positions (the lens cannot do less: it must produce those logits), so floor_forwards = 1.

The check is the largest difference of target_prob between interp and the naive loop.
Models: the dense organism (data/organisms/dense), its held-out composite prompts; and (positions=all) a random
Llama of GPT-2-small width with the organism's vocabulary on the same prompts (:func:`_wide_model`).
Run: .venv/bin/python benchmarks/bench_lens.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Case, main  # noqa: E402

FIELDS = ("y_t", "y_s1", "y_s2")
TOP_K = 10


def _setup(n: int, wide: bool = False):
    import interp
    from interp.organisms import CORPUS_DIR, organism_dir
    from interp.organisms.corpus import load_jsonl

    m = interp.load_model(_wide_model() if wide else organism_dir("dense"), device="cpu")
    recs = load_jsonl(CORPUS_DIR / "composite.jsonl")
    comp = [r for r in recs if r["kind"] == "composite" and r["split"] == "heldout" and r["n_shot"] > 0][:n]
    return m, comp


WIDE = {"hidden_size": 768, "num_hidden_layers": 4, "num_attention_heads": 12, "num_key_value_heads": 4,
        "intermediate_size": 2048}


def _wide_model() -> Path:
    """A random-init Llama of GPT-2-small width (d_model 768, GQA 12 / 4 heads, 4 layers) with the dense organism's
    tokenizer and vocabulary, in a temporary directory. The lens's statistics cost per decoded logit is the same at
    any width, the unembedding's grows with d_model: at the organism's d_model 192 ten passes over [rows, vocab]
    cost about as much as the unembedding itself, at real widths (768 to 8192) a fraction of it. This case measures
    the lens at the narrowest real width; its prompts and targets are the organism's (its predictions are noise)."""
    import tempfile

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from interp.organisms import organism_dir

    dense = organism_dir("dense")
    tok = AutoTokenizer.from_pretrained(dense)
    base = LlamaConfig.from_pretrained(dense)
    cfg = LlamaConfig(vocab_size=base.vocab_size, max_position_embeddings=base.max_position_embeddings,
                      bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id, pad_token_id=base.pad_token_id,
                      tie_word_embeddings=True, **WIDE)
    out = Path(tempfile.mkdtemp()) / "llama_d768"
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _batches(m, comp, batch_size: int, positions: str):
    from interp.prompts import encode, make_batch

    enc = encode(m, comp, targets=list(FIELDS))
    out = []
    for s in range(0, len(comp), batch_size):
        idx = list(range(s, min(s + batch_size, len(comp))))
        b = make_batch(m, enc, idx)
        if positions == "all":
            rows, cols = b.attention_mask.bool().nonzero(as_tuple=True)
        else:
            rows, cols = torch.arange(b.size), torch.full((b.size,), b.width - 1)
        tid = torch.stack([b.targets[f] for f in FIELDS], dim=1)[rows]  # [N, F]
        out.append({"b": b, "rows": rows, "cols": cols, "tid": tid,
                    "pos": (cols - b.offsets[rows]).tolist(),
                    "pid": [comp[idx[int(k)]]["id"] for k in rows]})
    return out


def _hidden(hf, b):
    """HF forward: (logits, every layer's output residual [B, T, d], the last one before the final norm)."""
    got = {}
    h = hf.model.norm.register_forward_pre_hook(lambda _m, i: got.__setitem__("final_in", i[0]))
    try:
        out = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                 output_hidden_states=True)
    finally:
        h.remove()
    return out.logits, [*out.hidden_states[1:-1], got["final_in"]]


def _loop(hf, batches) -> dict:
    """The lens written plainly with interp.metrics, one statistic per call, on the given batches."""
    from interp import metrics

    res = {}
    with torch.no_grad():
        for e in batches:
            _, hidden = _hidden(hf, e["b"])
            r, c = e["rows"], e["cols"]
            final = hf.lm_head(hf.model.norm(hidden[-1][r, c])).float()
            for layer, h in enumerate(hidden):
                logits = hf.lm_head(hf.model.norm(h[r, c])).float()
                metrics.kl_divergence(final, logits)
                metrics.entropy(logits)
                logits.log_softmax(-1).topk(TOP_K, dim=-1)
                for f in range(len(FIELDS)):
                    t = e["tid"][:, f]
                    p = metrics.prob(logits, t)
                    metrics.logit(logits, t)
                    metrics.rank(logits, t)
                    for pid, pos, v in zip(e["pid"], e["pos"], p.tolist()):
                        res[(pid, layer, pos, FIELDS[f])] = v
    return res


def _floor(hf, batches) -> None:
    with torch.no_grad():
        for e in batches:
            _, hidden = _hidden(hf, e["b"])
            r, c = e["rows"], e["cols"]
            for h in hidden[:-1]:
                hf.lm_head(hf.model.norm(h[r, c]))


def _check(result, ref: dict) -> float:
    t = result.table
    got = dict(zip(zip(t["prompt_id"], t["layer"], t["position"], t["target_field"]), t["target_prob"]))
    if set(got) != set(ref):
        raise AssertionError("interp and the naive loop decoded different rows")
    return max(abs(got[k] - v) for k, v in ref.items())


def cases(quick: bool = False) -> list[Case]:
    from interp.methods.lens import logit_lens

    n, bsz = (16, 16) if quick else (32, 32)
    out = []
    for wide, positions in ((False, "all"), (False, "last"), (True, "all")):
        m, comp = _setup(n, wide)
        hf = m.hf_model
        batched = _batches(m, comp, bsz, positions)
        single = _batches(m, comp, 1, positions)
        shape = f", d_model {m.info.d_model} (random Llama, the organism's vocabulary)" if wide else ""
        out.append(Case(
            name=f"logit_lens positions={positions}, {n} prompts, 3 targets{shape}",
            interp=lambda p=positions, m=m, comp=comp: logit_lens(m, comp, target=FIELDS, positions=p, top_k=TOP_K,
                                                                  batch_size=bsz),
            naive=lambda s=single, hf=hf: _loop(hf, s),
            equal_work=lambda b=batched, hf=hf: _loop(hf, b),
            floor=lambda b=batched, hf=hf: _floor(hf, b),
            floor_forwards=1,
            check=_check,
            note="floor = the forward + every layer's unembedding at the decoded positions; the dense organism "
                 "(d_model 192) unless the case names a d_model"))
    return out


if __name__ == "__main__":
    main(cases)
