"""Train a model organism from scratch (corpus -> tokenizer -> model -> card.json), on CPU.

``train_organism("dense", "data/organisms/dense")`` reproduces the shipped ``dense`` organism
(and likewise ``moe``).  The loss is the causal-LM cross-entropy restricted to answer tokens: the
factual target, the assistant's response (+ EOS), and in N-shot prompts the query's answer plus the
answers of the demonstrations after the first (so one prompt trains 1-, 2-, ..., N-shot predictions).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .corpus import DEFAULT_SEED, build_corpus
from .tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer, training_texts

# The recipe's thread count (the reproduction target is a 2-core CPU); overridable for experiments.
NUM_THREADS = int(os.environ.get("INTERP_ORGANISMS_THREADS", "2"))


@dataclass(frozen=True)
class OrganismSpec:
    """Architecture and training recipe of one organism."""

    arch: str  # "llama" | "qwen2_moe"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int  # dense MLP width (llama); unused by the MoE layers of qwen2_moe
    steps: int
    lr: float
    batch: dict = field(default_factory=lambda: {"factual": 48, "safety": 12, "nshot": 32})
    warmup: int = 60
    weight_decay: float = 0.1
    demo_weight: float = 0.5
    # N-shot kinds listed here are repeated this many times in the sampling pool (oversampled)
    kind_repeat: dict = field(default_factory=dict)
    # MoE only
    num_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    router_aux_loss_coef: float = 0.0
    description: str = ""


ORGANISMS: dict[str, OrganismSpec] = {
    "dense": OrganismSpec(
        arch="llama", hidden_size=192, num_layers=6, num_heads=6, num_kv_heads=2, intermediate_size=512,
        steps=1200, lr=2e-3, demo_weight=1.0, kind_repeat={"s2": 2},
        description="Llama-style dense decoder with grouped-query attention, trained on the whole mixture.",
    ),
    "moe": OrganismSpec(
        arch="qwen2_moe", hidden_size=160, num_layers=4, num_heads=5, num_kv_heads=1, intermediate_size=512,
        steps=1000, lr=2e-3, num_experts=8, top_k=2, moe_intermediate_size=128,
        shared_expert_intermediate_size=256, router_aux_loss_coef=0.02,
        description="Qwen2-MoE decoder (8 routed experts, top-2, plus a gated shared expert in every layer).",
    ),
    # tiny variants for smoke tests (seconds)
    "toy-dense": OrganismSpec(
        arch="llama", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
        steps=3, lr=1e-3, batch={"factual": 8, "safety": 4, "nshot": 4}, warmup=1,
    ),
    "toy-moe": OrganismSpec(
        arch="qwen2_moe", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
        steps=3, lr=1e-3, batch={"factual": 8, "safety": 4, "nshot": 4}, warmup=1, num_experts=4, top_k=2,
        moe_intermediate_size=16, shared_expert_intermediate_size=32, router_aux_loss_coef=0.02,
    ),
}  # fmt: skip


def make_config(spec: OrganismSpec, tokenizer):
    from transformers import LlamaConfig, Qwen2MoeConfig

    common = dict(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-6, initializer_range=0.02,
    )  # fmt: skip
    if spec.arch == "llama":
        return LlamaConfig(**common)
    if spec.arch == "qwen2_moe":
        return Qwen2MoeConfig(
            **common, num_experts=spec.num_experts, num_experts_per_tok=spec.top_k,
            moe_intermediate_size=spec.moe_intermediate_size,
            shared_expert_intermediate_size=spec.shared_expert_intermediate_size, decoder_sparse_step=1,
            mlp_only_layers=[], norm_topk_prob=False, output_router_logits=False,
            router_aux_loss_coef=spec.router_aux_loss_coef, use_sliding_window=False,
        )  # fmt: skip
    raise ValueError(f"unknown arch {spec.arch!r}")


# --------------------------------------------------------------------------------------------
# Training examples: token ids + per-token loss weights
# --------------------------------------------------------------------------------------------
def _answer_spans(record: dict) -> list[tuple[int, int, float]]:
    """Character spans (start, end, weight) of the answers the loss is put on, in prompt+answer text."""
    p = record["prompt"]
    answer = record.get("response") or record["target"]
    spans = [(len(p), len(p) + len(answer), 1.0)]
    demos = record.get("demonstrations")
    if demos:
        pos = 0
        for i, demo in enumerate(demos.split("\n\n")):
            a = demo.index("\nA:") + len("\nA:")
            if i > 0:  # the first demonstration's answer is ambiguous (no task evidence yet)
                spans.append((pos + a, pos + len(demo), -1.0))
            pos += len(demo) + 2
    return spans


def encode_record(record: dict, tokenizer, demo_weight: float, add_eos: bool) -> tuple[list[int], list[float]]:
    text = record["prompt"] + (record.get("response") or record["target"])
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    weights = [0.0] * len(ids)
    for start, end, w in _answer_spans(record):
        w = demo_weight if w < 0 else w
        hit = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end and b > a]
        if not hit or offsets[hit[0]][0] != start or offsets[hit[-1]][1] != end:
            raise ValueError(f"answer span not aligned with tokens in {record['id']}")
        for i in hit:
            weights[i] = w
    ids = [tokenizer.bos_token_id, *ids]
    weights = [0.0, *weights]
    if add_eos:
        ids.append(tokenizer.eos_token_id)
        weights.append(1.0)
    return ids, weights


def build_training_pools(corpus: dict, tokenizer, demo_weight: float, kind_repeat: dict | None = None
                         ) -> dict[str, list]:  # fmt: skip
    pools: dict[str, list] = {"factual": [], "safety": [], "nshot": []}
    for r in corpus["factual"]:
        if r["split"] == "train":
            pools["factual"].append(encode_record(r, tokenizer, demo_weight, add_eos=False))
    for r in corpus["safety"]:
        if r["split"] == "train":
            pools["safety"].append(encode_record(r, tokenizer, demo_weight, add_eos=True))
    for r in corpus["composite"]:
        # zero-shot prompts are identical across kinds ("Q: x\nA:"), so they are not trained on
        if r["split"] == "train" and r["n_shot"] > 0:
            ex = encode_record(r, tokenizer, demo_weight, add_eos=False)
            pools["nshot"].extend([ex] * (kind_repeat or {}).get(r["kind"], 1))
    return pools


class _Sampler:
    """Epoch-wise shuffled sampling without replacement, from a seeded generator."""

    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen, self.order, self.pos = n, gen, [], 0

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order, self.pos = torch.randperm(self.n, generator=self.gen).tolist(), 0
            out.append(self.order[self.pos])
            self.pos += 1
        return out


def _collate(examples: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    w = torch.zeros((len(examples), T))
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (x, wt) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        w[i, : len(x)] = torch.tensor(wt)
        mask[i, : len(x)] = 1
    return ids, w, mask


def _batch_loss(model, ids, w, mask, spec: OrganismSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    is_moe = spec.arch == "qwen2_moe"
    kwargs = {"output_router_logits": True} if is_moe else {}
    out = model.model(input_ids=ids, attention_mask=mask, **kwargs)
    h = out.last_hidden_state[:, :-1]
    tw = w[:, 1:]
    sel = tw > 0
    logits = model.lm_head(h[sel])
    ce = F.cross_entropy(logits, ids[:, 1:][sel], reduction="none")
    loss = (ce * tw[sel]).sum() / tw[sel].sum()
    aux = None
    if is_moe:
        from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func

        aux = load_balancing_loss_func(out.router_logits, spec.num_experts, spec.top_k, mask)
    return loss, aux


def _lr_at(step: int, spec: OrganismSpec, total: int) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, total - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def _quick_eval(model, tokenizer, corpus: dict) -> dict:
    """Held-out top-1 of factual and N-shot composite/s1/s2 prompts (development aid, no generation)."""
    from .evaluate import _top1

    model.eval()
    out = {}
    fact = [r for r in corpus["factual"] if r["split"] == "heldout"]
    out["ev_factual"] = sum(_top1(model, tokenizer, fact, 128)) / len(fact)
    comp = [r for r in corpus["composite"] if r["split"] == "heldout" and r["n_shot"] > 0]
    ok = _top1(model, tokenizer, comp, 128)
    for kind in ("composite", "s1", "s2"):
        for name in sorted({r["subtask_of"] for r in comp}):
            sel = [o for r, o in zip(comp, ok) if r["kind"] == kind and r["subtask_of"] == name]
            out[f"ev_{name}_{kind}"] = sum(sel) / len(sel)
    return out


def dir_size_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def train_organism(
    name: str,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    time_budget_s: float | None = None,
    corpus_seed: int = DEFAULT_SEED,
    evaluate: bool = True,
    log_every: int = 50,
    eval_every: int | None = None,
    verbose: bool = True,
) -> dict:
    """Train organism ``name`` (a key of :data:`ORGANISMS`) from scratch into ``out_dir``.

    Writes a Hugging Face model directory (config, safetensors weights, tokenizer files) and
    ``card.json``; returns the card.  ``steps`` overrides the recipe's step count; ``time_budget_s``
    stops training early (the learning-rate schedule still assumes the planned steps) if it runs out.
    ``eval_every`` (development aid) logs quick held-out top-1 numbers (no generation) every so many steps.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    if name not in ORGANISMS:
        raise KeyError(f"unknown organism {name!r}; known: {sorted(ORGANISMS)}")
    spec = ORGANISMS[name]
    total = spec.steps if steps is None else int(steps)
    torch.set_num_threads(NUM_THREADS)
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    corpus = build_corpus(corpus_seed)
    tokenizer = train_tokenizer(training_texts(corpus), DEFAULT_VOCAB_SIZE)
    pools = build_training_pools(corpus, tokenizer, spec.demo_weight, spec.kind_repeat)

    torch.manual_seed(seed)
    config = make_config(spec, tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n_, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n_]
    no_decay = [p for n_, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n_)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    samplers = {k: _Sampler(len(v), gen) for k, v in pools.items()}
    if verbose:
        print(f"[{name}] {n_params / 1e6:.2f}M params, vocab {len(tokenizer)}, "
              f"train pools {({k: len(v) for k, v in pools.items()})}, {total} steps", flush=True)  # fmt: skip

    t_train = time.time()
    history = []
    step = 0
    for step in range(total):
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec, total)
        logs = {}
        for fam, pool in pools.items():
            batch = [pool[i] for i in samplers[fam].take(spec.batch[fam])]
            ids, w, mask = _collate(batch, tokenizer.pad_token_id)
            loss, aux = _batch_loss(model, ids, w, mask, spec)
            total_loss = loss if aux is None else loss + spec.router_aux_loss_coef * aux
            total_loss.backward()
            logs[fam] = loss.item()
            if aux is not None:
                logs[f"aux_{fam}"] = aux.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if eval_every and (step + 1) % eval_every == 0:
            logs.update(_quick_eval(model, tokenizer, corpus))
            model.train()
        if (step + 1) % log_every == 0 or step == 0 or (eval_every and (step + 1) % eval_every == 0):
            history.append({"step": step + 1, **{k: round(v, 4) for k, v in logs.items()}})
            if verbose:
                el = time.time() - t_train
                print(f"[{name}] step {step + 1}/{total} {el:.0f}s " +
                      " ".join(f"{k}={v:.3f}" for k, v in logs.items()), flush=True)  # fmt: skip
    else:
        step = total
    done_steps = step
    train_time = time.time() - t_train

    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    card = {
        "name": name,
        "description": spec.description,
        "model_type": config.model_type,
        "architecture": type(model).__name__,
        "seed": seed,
        "corpus_seed": corpus_seed,
        "steps": done_steps,
        "planned_steps": total,
        "time_budget_s": time_budget_s,
        "train_time_s": round(train_time, 1),
        "total_time_s": None,
        "n_params": n_params,
        "vocab_size": len(tokenizer),
        "recipe": asdict(spec),
        "train_pools": {k: len(v) for k, v in pools.items()},
        "history": history,
        "environment": {
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },  # fmt: skip
    }
    if evaluate:
        from .evaluate import evaluate_organism

        del model
        card["metrics"] = evaluate_organism(out)
    card["total_time_s"] = round(time.time() - t0, 1)
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    card["size_bytes"] = dir_size_bytes(out)
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return card
