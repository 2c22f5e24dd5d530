"""Ships (Zhou et al. 2024, arXiv 2410.13708) over every head: ``interp.ships`` (the variants engine) against the
loops a researcher writes, on the harmful prompts of the dense organism (or, when it is absent, a random Llama of
its shape, named in the case).

- interp: ``ships(model, prompts, batch_size=B)``;
- naive: the authors' procedure: one prompt per forward, one clean forward and one forward per ablated head
  (bridge hooks through ``interp.forward`` + ``interp.ablate_heads``), KL in float64;
- equal_work: the same loop prompt-batched: per batch of B prompts, one clean forward and one forward per head
  (the fair baseline: the speed-up over it is the engine's, not batching's);
- floor: one plain Hugging Face forward of the same batches (no hooks); floor_forwards = 1 + H (a clean forward
  and one per head: no method can score H ablations with fewer full forwards unless it skips the unchanged
  layers, which the engine does, so interp/floor can be below 1).

The check is the largest |score difference| between interp and the naive loop.
Run: .venv/bin/python benchmarks/bench_ships.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Case, main  # noqa: E402

DENSE = Path(__file__).resolve().parents[1] / "data" / "organisms" / "dense"
_TMP = tempfile.TemporaryDirectory()


def load():
    import interp

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
    LlamaForCausalLM(cfg).save_pretrained(_TMP.name)
    tok.save_pretrained(_TMP.name)
    words = ["bread", "a kite", "the garden", "a letter", "soup", "a poem", "the bike", "a fence"]
    verbs = ["make", "fix", "clean", "paint", "build", "plan", "write", "find"]
    prompts = [{"id": f"p{i}", "prompt": f"User: How do I {verbs[i % 8]} {words[(i // 8) % 8]} today?\nAssistant:"}
               for i in range(64)]
    return interp.load_model(_TMP.name), prompts, "random Llama of the dense organism's shape (organism absent)"


def head_loop(model, prompts: list[dict], batch_size: int) -> dict:
    """KL(clean || head ablated) per prompt x head, one forward per head per batch of ``batch_size`` prompts."""
    import interp
    from interp.methods import safety_heads as sh

    out = {}
    heads = sh.all_heads(model)
    enc = interp.encode(model, prompts)
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            idx = list(range(s, min(s + batch_size, len(prompts))))
            batch = interp.make_batch(model, enc, idx)
            clean, _ = interp.forward(model, batch)
            p = clean.double().softmax(-1) + 1e-12
            for h in heads:
                abl, _ = interp.forward(model, batch, [interp.ablate_heads(model, [h])])
                q = abl.double().softmax(-1) + 1e-12
                kl = (p * (p / q).log()).sum(-1).tolist()
                for r, i in enumerate(idx):
                    out[(prompts[i]["id"], *h)] = kl[r]
    return out


def plain_forwards(model, prompts: list[dict], batch_size: int) -> None:
    import interp

    enc = interp.encode(model, prompts)
    hf = model.hf_model
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            b = interp.make_batch(model, enc, list(range(s, min(s + batch_size, len(prompts)))))
            hf(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)


def check(result, ref: dict) -> float:
    got = {(r.prompt_id, r.layer, r.head): r.score for r in result.table.itertuples()}
    if set(got) != set(ref):
        raise AssertionError("interp and the loop scored different (prompt, head) pairs")
    return max(abs(got[k] - v) for k, v in ref.items())


def cases(quick: bool = False) -> list[Case]:
    from interp.methods import safety_heads as sh

    model, prompts, which = load()
    n, bsz = (16, 16) if quick else (64, 32)
    prompts = prompts[:n]
    i = model.info
    n_heads = i.n_layers * i.n_heads
    return [Case(
        name=f"ships, all {n_heads} heads, {n} prompts",
        interp=lambda: sh.ships(model, prompts, batch_size=bsz),
        naive=lambda: head_loop(model, prompts, 1),
        equal_work=lambda: head_loop(model, prompts, bsz),
        floor=lambda: plain_forwards(model, prompts, bsz),
        floor_forwards=1 + n_heads,
        check=check,
        note=f"ships: {which}; naive = one prompt per forward, equal work = batches of {bsz} prompts, one forward "
             "per head; floor = 1 clean + 1 per head plain forwards")]


if __name__ == "__main__":
    main(cases)
