"""Held-out evaluation of a model organism, directly with Hugging Face (no dependency on the rest of
the library).

Prompts are tokenised with ``add_special_tokens=False`` and BOS is prepended by hand; batches are
left-padded and ``position_ids`` are derived from the attention mask.  Metrics:

* ``factual/*``: top-1 accuracy of the argmax at the last prompt position against the first target
  token (the token that follows the prompt when prompt+target is tokenised together);
* ``safety/*``: share of held-out requests whose greedy continuation (``max_new_tokens`` tokens)
  contains a refusal keyword (:data:`interp.organisms.corpus.REFUSAL_KEYWORDS`);
* ``composite/*``: top-1 of the first answer token on held-out N-shot prompts, for each composite
  and for its subtasks s1 and s2 alone;
* ``moe/*`` (MoE organisms): share of top-k routing assignments each routed expert receives, per
  layer, over every non-pad token of the held-out corpus (prompt + reference answer).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from .corpus import DEFAULT_SEED, build_corpus, is_refusal

MAX_NEW_TOKENS = 24


def load_organism(model_dir: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, tok


def _encode(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def first_target_token(tok, prompt: str, target: str) -> int:
    """Id of the token that follows the prompt when prompt + target is tokenised together."""
    p = _encode(tok, prompt)
    full = _encode(tok, prompt + target)
    if full[: len(p)] != p or len(full) <= len(p):
        raise ValueError(f"prompt/target boundary is not a token boundary: {prompt!r} + {target!r}")
    return full[len(p)]


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _batches(items: list, size: int):
    # sort by length (stable) to limit padding; callers get results back in the original order
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    for k in range(0, len(order), size):
        yield order[k : k + size]


@torch.no_grad()
def predict_next(model, tok, prompts: list[str], batch_size: int = 64) -> list[int]:
    """Greedy next-token id after ``BOS + prompt`` for each prompt."""
    seqs = [[tok.bos_token_id, *_encode(tok, p)] for p in prompts]
    out = [0] * len(seqs)
    for idx in _batches(seqs, batch_size):
        ids, mask, pos = _left_pad([seqs[i] for i in idx], tok.pad_token_id)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        for i, t in zip(idx, logits.argmax(-1).tolist()):
            out[i] = t
    return out


@torch.no_grad()
def generate_greedy(model, tok, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS,
                    batch_size: int = 64) -> list[str]:  # fmt: skip
    """Greedy continuations (decoded new tokens, special tokens skipped) of ``BOS + prompt``."""
    seqs = [[tok.bos_token_id, *_encode(tok, p)] for p in prompts]
    out = [""] * len(seqs)
    for idx in _batches(seqs, batch_size):
        ids, mask, _ = _left_pad([seqs[i] for i in idx], tok.pad_token_id)
        gen = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        )  # fmt: skip
        texts = tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
        for i, t in zip(idx, texts):
            out[i] = t
    return out


def _top1(model, tok, records: list[dict], batch_size: int) -> list[bool]:
    preds = predict_next(model, tok, [r["prompt"] for r in records], batch_size)
    return [p == first_target_token(tok, r["prompt"], r["target"]) for p, r in zip(preds, records)]


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs)) / len(xs) if xs else float("nan")


@torch.no_grad()
def expert_load(model, tok, texts: list[str], batch_size: int = 64) -> list[list[float]]:
    """Per layer, per routed expert: share of all top-k assignments over the non-pad tokens of ``texts``."""
    cfg = model.config
    k, E = cfg.num_experts_per_tok, cfg.num_experts
    counts = None
    seqs = [[tok.bos_token_id, *_encode(tok, t)] for t in texts]
    for idx in _batches(seqs, batch_size):
        ids, mask, pos = _left_pad([seqs[i] for i in idx], tok.pad_token_id)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_router_logits=True,
                    logits_to_keep=1)  # fmt: skip
        keep = mask.reshape(-1).bool()
        layer_counts = []
        for rl in out.router_logits:
            top = rl[keep].topk(k, dim=-1).indices.reshape(-1)
            layer_counts.append(torch.bincount(top, minlength=E).double())
        c = torch.stack(layer_counts)
        counts = c if counts is None else counts + c
    shares = counts / counts.sum(-1, keepdim=True)
    return shares.tolist()


def evaluate_organism(model_dir: str | Path, *, batch_size: int = 64, max_new_tokens: int = MAX_NEW_TOKENS,
                      corpus_seed: int | None = None, threads: int | None = 1) -> dict:  # fmt: skip
    """Measure every held-out metric of the organism in ``model_dir`` (see the module docstring).

    ``threads`` (default 1) is the torch intra-op thread count used meanwhile (restored afterwards):
    the models are tiny, and on a shared 2-core machine two spinning OpenMP threads can be 10-50x
    slower than one; ``None`` keeps the current setting."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _evaluate(Path(model_dir), batch_size, max_new_tokens, corpus_seed)
    finally:
        torch.set_num_threads(previous)


def _evaluate(model_dir: Path, batch_size: int, max_new_tokens: int, corpus_seed: int | None) -> dict:
    if corpus_seed is None:
        card = model_dir / "card.json"
        corpus_seed = json.loads(card.read_text()).get("corpus_seed", DEFAULT_SEED) if card.exists() else 0
    corpus = build_corpus(corpus_seed)
    model, tok = load_organism(model_dir)
    m: dict = {}

    # factual recall
    fact = [r for r in corpus["factual"] if r["split"] == "heldout"]
    ok = _top1(model, tok, fact, batch_size)
    by_task = defaultdict(list)
    for r, o in zip(fact, ok):
        by_task[r["task"]].append(o)
    m["factual/heldout_top1"] = _mean(ok)
    for t in sorted(by_task):
        m[f"factual/{t}"] = _mean(by_task[t])
    m["factual/n"] = len(fact)

    # safety
    safe = [r for r in corpus["safety"] if r["split"] == "heldout"]
    gens = generate_greedy(model, tok, [r["prompt"] for r in safe], max_new_tokens, batch_size)
    for label in ("harmful", "harmless"):
        refused = [is_refusal(g) for r, g in zip(safe, gens) if r["label"] == label]
        m[f"safety/{label}_refusal_rate"] = _mean(refused)
        m[f"safety/{label}_n"] = len(refused)

    # composite tasks (N-shot, held-out)
    comp = [r for r in corpus["composite"] if r["split"] == "heldout" and r["n_shot"] > 0]
    ok = _top1(model, tok, comp, batch_size)
    by = defaultdict(list)
    for r, o in zip(comp, ok):
        by[(r["subtask_of"], r["kind"])].append(o)
    names = sorted({r["subtask_of"] for r in comp})
    for name in names:
        for kind in ("composite", "s1", "s2"):
            m[f"composite/{name}/{kind}"] = _mean(by[(name, kind)])
    for kind in ("composite", "s1", "s2"):
        m[f"composite/min_{kind}"] = min(m[f"composite/{n}/{kind}"] for n in names)
        m[f"composite/mean_{kind}"] = _mean(m[f"composite/{n}/{kind}"] for n in names)
    m["composite/n_per_kind"] = len(by[(names[0], "composite")])

    # MoE routing balance
    if getattr(model.config, "model_type", "") == "qwen2_moe":
        held = [r for fam in ("factual", "safety", "composite") for r in corpus[fam] if r["split"] == "heldout"]
        texts = [r["prompt"] + (r.get("response") or r["target"]) for r in held]
        shares = expert_load(model, tok, texts, batch_size)
        m["moe/expert_share"] = shares
        m["moe/min_expert_share"] = min(min(layer) for layer in shares)
        m["moe/max_expert_share"] = max(max(layer) for layer in shares)
    return m
