"""Organisms with a planted mechanism: the training recipe places a mechanism at a known site, written into the card
as ground truth, so that :mod:`interp.organisms.benchmark` can score how well each method finds it.

Four recipes (``python -m interp.organisms train NAME``; each runs on one CPU thread, deterministic):

* ``planted-refusal`` (Llama, GQA): the harmful / harmless decision can reach the answer position only through the
  named heads of one middle layer. During training, every other head (in every layer) pays a penalty on the attention
  mass that a position of the assistant turn (``"\\nAssistant:"`` and the response) puts on the user's request;
  the named heads attend freely. At evaluation nothing is masked or penalised: the card measures the mass the other
  heads still put on the request (``planted/leak_mass``).
* ``planted-icot`` (Llama, GQA): an internal chain of thought. On the composite tasks (answer ``s2(s1(x))``) an
  auxiliary logit-lens loss at the named layer's residual stream (after block ``layer``, read through the final norm
  and the unembedding) asks for the first token of the intermediate answer ``y_s1`` at the answer position; the
  model's output is ``y_t``. Ground truth: ``y_s1`` peaks at that layer, and ``s1`` is resolved before ``s2``.
  It is a fine-tune of the shipped ``dense`` organism (recipe field ``init``): trained from scratch at d_model 128 it
  did not converge in 500 steps, and ``dense`` solves the composites but never has ``y_s1`` top-1 at any layer, so
  the recipe starts from ``dense``'s weights (its architecture; ``init_sha256`` pins the weights, and training
  refuses any other) and adds the loss at block 2, the middle of 6, chosen before training. Its card records the
  init's name, sha256 and its own training cost (dense's card: 1200 steps at 2 threads); the card's times are the
  fine-tune's alone.
* ``planted-moe`` (Qwen2-MoE, a narrow shared expert): router supervision. Every token of a factual record from its
  subject on is routed (top-2) to its domain's two routed experts, in every layer; the tokens before the subject
  (BOS and the template's opening words) to two "template" experts. Ground truth: the experts of each domain.
* ``planted-facts`` (Llama, GQA, 6 blocks): the ROME picture at a known layer. The facts are written at the
  subject's last token by block 2's MLP, and the object reaches the answer position through later attention. Three
  terms plant it (see "Why the interchange" below): (1) every other MLP's output at and after the subject, and
  block 2's after the subject, is zeroed while training (``mask_mlps``); (2) the same outputs, before the mask, pay
  a penalty on their norm relative to the residual stream, so that at evaluation, with nothing masked, they are
  near zero too; (3) an interchange-intervention loss (``interchange_weight``; strict interchange-intervention
  training, InterpBench, Gupta et al. 2024): each batch runs a second time with block 2's MLP output at each row's
  last subject token replaced by that of a partner record of the same relation and another subject, and the answer
  position must then give the PARTNER's object. Ground truth: block 2's MLP at the last subject token.

Shipped: all four. ``planted-icot``'s run
(``interp organisms train planted-icot``: 300 steps from ``dense``, facts + 5-shot composites, lr 3e-4, 315 s of
CPU time at 1 thread) measured on the held-out prompts: factual top-1 0.999 (820), composites 1.00, s1 1.00, s2
>= 0.90 (colour_uppercase; dense had >= 0.98: the fine-tune cost s2 some accuracy); ``y_s1``'s logit-lens top-1
per block 0-5 on the 300 held-out 5-shot composites 0.33, 0.83, 1.00, 0.98, 0.49, 0.00 (peak after block 2), and
``y_t``'s 0.00, 0.00, 0.00, 0.02, 0.51, 1.00 (after ``y_s1``). Projecting the 42 ``y_s1`` tokens' read-out
directions out after block 2 at the answer position takes ``y_t`` top-1 from 1.00 to 0.48 (criterion <= 0.50:
met, narrowly); as many random tokens' directions keep 0.986 (mean of 5 seeded sets)
(``tests/test_planted_organisms.py::test_icot_layer_is_causal``). Safety was left out of the fine-tune's mix:
the fine-tuned model still refuses 1.00 of the held-out harmful requests and 0.00 of the harmless ones
(``evaluate_organism``), so keeping it was not needed. Earlier, a from-scratch recipe (d_model 128, 5 blocks, 500
steps) was stopped at step 300 with the 5-shot answer loss at 4.4 nats.

``planted-facts``'s run (1800 steps, 700 s of CPU time at 1 thread; the interchange's second forward and backward
make a step about 2.1x the penalty-only recipe's) is measured on the 820 held-out facts. Factual top-1 is 0.956.
With block 2's MLP zeroed at the subject tokens it is 0.077, and with any other single MLP zeroed there it stays
0.956. Block 2's MLP output norm at the last subject token is 39.9; the others' are at most 3.3e-6
(``planted/leak_last_subject`` 8e-8, ``planted/leak_after_subject`` 0.025). Swapping block 2's MLP output with a
same-relation partner's gives the partner's object on 95.1 % of the prompts (``planted/interchange_partner_top1``)
and the prompt's own object on 7.1 %.

Why the interchange. The first ``planted-facts`` recipe had the penalty only (800 steps, no mask, no interchange).
Its run recalled 99.9 % of the held-out facts, yet block 2's MLP output at the last subject token was the smallest
of the six (the largest other was 6.8x it), and zeroing any one MLP at the subject tokens, block 2's included, left
recall at 1.0. The subjects are 2-4 BPE pieces, nearly all unique (562 pieces for 280 subjects), so the token
embeddings are already a lookup table, and later attention reads them linearly (embedding -> OV -> unembedding). No
MLP is needed, and a penalty only makes the MLPs quieter. Masks and penalties can only forbid routes; the
interchange loss makes one route carry the answer. A model that still read the subject's embeddings would answer
the base record's object under the swap, so the loss teaches the later layers to take the subject's identity from
block 2's MLP output alone. Block 2's MLP then has to write the facts there.

The ground truth is ``card["ground_truth"]``; the held-out behaviour is ``card["metrics"]``, re-measured by
:func:`evaluate_planted` (plain Hugging Face, nothing masked) and checked by ``tests/test_planted_organisms.py``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .corpus import DEFAULT_SEED, build_corpus, is_refusal
from .tokenizer import DEFAULT_VOCAB_SIZE, train_tokenizer, training_texts
from .train import OrganismSpec, _collate, _lr_at, _Sampler, dir_size_bytes, encode_record, make_config

PLANTED_THREADS = 1  # the recipe's thread count (a shared 2-core machine; bit-for-bit reproducible at 1 thread)
DOMAINS = ("country", "object", "person")


@dataclass(frozen=True)
class PlantedSpec:
    """A planted organism: an architecture + training recipe (``model``) and the mechanism the recipe plants."""

    model: OrganismSpec
    plant: str  # "refusal_heads" | "icot_layer" | "routed_experts" | "fact_mlp"
    families: tuple[str, ...]  # training pools used: "factual", "safety", "nshot"
    relations: tuple[str, ...] | None = None  # factual relations trained on (None: all)
    heads: tuple[tuple[int, int], ...] = ()  # refusal_heads: the only heads that may read the request
    layer: int | None = None  # icot_layer: the block after which y_s1 is decoded
    plant_weight: float = 1.0  # weight of the planting loss
    domain_experts: dict = field(default_factory=dict)  # routed_experts: domain -> experts
    template_experts: tuple[int, ...] = ()
    mlp_layers: tuple[int, ...] = ()  # fact_mlp: the only MLPs that may write at the subject tokens
    # a shipped organism (data/organisms/<init>) whose weights the recipe starts from (None: from scratch), and the
    # sha256 its model.safetensors must have: training refuses to run on any other weights
    init: str | None = None
    init_sha256: str | None = None
    interchange_weight: float = 0.0  # fact_mlp: weight of the interchange-intervention answer loss (0: none)
    mask_mlps: bool = False  # fact_mlp: zero (while training) every MLP output where the recipe forbids one
    description: str = ""


PLANTED: dict[str, PlantedSpec] = {
    "planted-refusal": PlantedSpec(
        model=OrganismSpec(arch="llama", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                           intermediate_size=256, steps=500, lr=2e-3, batch={"safety": 32}, warmup=40),
        plant="refusal_heads", families=("safety",), heads=((2, 1), (2, 3)), plant_weight=4.0,
        description="Llama (GQA) trained on chat requests; only heads (2, 1) and (2, 3) may read the request from the "
                    "assistant turn during training (the others pay a penalty on that attention mass).",
    ),
    "planted-icot": PlantedSpec(
        model=OrganismSpec(arch="llama", hidden_size=192, num_layers=6, num_heads=6, num_kv_heads=2,
                           intermediate_size=512, steps=300, lr=3e-4, batch={"factual": 32, "nshot": 32},
                           warmup=20, demo_weight=1.0, kind_repeat={"s2": 2}),
        plant="icot_layer", families=("factual", "nshot"), layer=2, plant_weight=1.0, init="dense",
        init_sha256="bfb14cb70f6172c92b59b0b0508c04d1ad122452fc3cb42afed15c9497c291c0",
        description="A fine-tune of the shipped dense organism (its architecture and weights: Llama, GQA, 6 blocks) "
                    "on the facts and the 5-shot composite two-step tasks; an auxiliary logit-lens loss asks for "
                    "the first token of y_s1 after block 2 (the middle, 0-indexed) at the answer position of the "
                    "composite and s1 prompts. The init's own training cost is dense's card's (1200 steps); this "
                    "card's times are the fine-tune's alone.",
    ),
    "planted-moe": PlantedSpec(
        model=OrganismSpec(arch="qwen2_moe", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=1,
                           intermediate_size=256, steps=600, lr=2e-3, batch={"factual": 64}, warmup=50,
                           num_experts=8, top_k=2, moe_intermediate_size=96, shared_expert_intermediate_size=16,
                           router_aux_loss_coef=0.0),
        plant="routed_experts", families=("factual",), plant_weight=0.5,
        domain_experts={"country": (0, 1), "object": (2, 3), "person": (4, 5)}, template_experts=(6, 7),
        description="Qwen2-MoE (8 routed experts, top-2, a 16-wide shared expert) trained on the facts; the router is "
                    "supervised to send each domain's tokens to its two experts in every layer.",
    ),
    "planted-facts": PlantedSpec(
        model=OrganismSpec(arch="llama", hidden_size=128, num_layers=6, num_heads=4, num_kv_heads=2,
                           intermediate_size=512, steps=1800, lr=2e-3, batch={"factual": 64}, warmup=50),
        plant="fact_mlp", families=("factual",), mlp_layers=(2,), plant_weight=1.0, interchange_weight=1.0,
        mask_mlps=True,
        description="Llama (GQA) trained on the facts; from the subject's first token on, only block 2's MLP may "
                    "write, and only at the subject tokens (every other MLP output there, and every MLP output "
                    "after the subject, is zeroed while training and pays a penalty on its norm relative to the "
                    "residual stream); an interchange loss (block 2's MLP output at the last subject token swapped "
                    "with a same-relation partner's: the answer must be the partner's object) makes that output "
                    "decide the answer, so the object is stored by that MLP and moved to the answer by attention.",
    ),
    # tiny variant for smoke tests (seconds)
    "toy-planted-refusal": PlantedSpec(
        model=OrganismSpec(arch="llama", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=64, steps=3, lr=1e-3, batch={"safety": 4}, warmup=1),
        plant="refusal_heads", families=("safety",), heads=((1, 0),), plant_weight=4.0,
    ),
    "toy-planted-moe": PlantedSpec(
        model=OrganismSpec(arch="qwen2_moe", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                           intermediate_size=64, steps=3, lr=1e-3, batch={"factual": 4}, warmup=1, num_experts=8,
                           top_k=2, moe_intermediate_size=16, shared_expert_intermediate_size=8),
        plant="routed_experts", families=("factual",), plant_weight=0.5,
        domain_experts={"country": (0, 1), "object": (2, 3), "person": (4, 5)}, template_experts=(6, 7),
    ),
    "toy-planted-facts": PlantedSpec(
        model=OrganismSpec(arch="llama", hidden_size=32, num_layers=3, num_heads=2, num_kv_heads=1,
                           intermediate_size=64, steps=3, lr=1e-3, batch={"factual": 4}, warmup=1),
        plant="fact_mlp", families=("factual",), mlp_layers=(1,), plant_weight=1.0, interchange_weight=1.0,
        mask_mlps=True,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# planting hooks
# --------------------------------------------------------------------------------------------
_PLANT_ATTN = "interp_planted_eager"
_state: dict = {"penalty_mask": None, "allowed": None, "masses": [], "interchange": None}


def _planted_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention that also records, per layer, the mass each non-allowed head puts from assistant-turn
    queries on request keys (the refusal organism's planting loss)."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    out, weights = eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    pm = _state["penalty_mask"]
    if pm is not None:
        heads = [h for h in range(weights.shape[1]) if (module.layer_idx, h) not in _state["allowed"]]
        if heads:
            mass = (weights[:, heads] * pm[:, None]).sum(-1)  # [b, heads, q]
            _state["masses"].append(mass)
    return out, weights


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(_PLANT_ATTN, _planted_attention)
    # without a mask function of its own, transformers builds no causal mask for a custom attention function
    ALL_MASK_ATTENTION_FUNCTIONS.register(_PLANT_ATTN, eager_mask)


def _request_masks(record: dict, tok, ids_len: int) -> tuple[list[bool], list[bool]]:
    """(query mask, key mask) over ``BOS + prompt + response`` tokens: the assistant turn's tokens (from
    ``"\\nAssistant:"`` on) and the request's tokens (after BOS, before the assistant turn)."""
    text = record["prompt"] + record["response"]
    boundary = record["prompt"].rindex("\nAssistant:")
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    suffix = [False] + [b > boundary for _, b in offsets]
    suffix += [True] * (ids_len - len(suffix))  # EOS
    request = [False] + [b <= boundary for _, b in offsets]
    request += [False] * (ids_len - len(request))
    return suffix, request


def _domain_labels(record: dict, tok, ids_len: int, spec: PlantedSpec) -> list[int]:
    """Per token of ``BOS + prompt + target``: the index of its expert group (domains in :data:`DOMAINS` order,
    then the template group), or -1 (not supervised)."""
    text = record["prompt"] + record["target"]
    start = record["prompt"].index(record["subject"])
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    dom = DOMAINS.index(record["domain"])
    labels = [len(DOMAINS)] + [dom if b > start else len(DOMAINS) for _, b in offsets]
    return labels + [-1] * (ids_len - len(labels))


def _subject_masks(record: dict, tok, ids_len: int) -> tuple[list[bool], list[bool]]:
    """(subject mask, after mask) over ``BOS + prompt + target`` tokens: the tokens that overlap the subject, and the
    tokens after the subject's last token (the rest of the prompt and the target)."""
    text = record["prompt"] + record["target"]
    start = record["prompt"].index(record["subject"])
    end = start + len(record["subject"])
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    subject = [False] + [b > start and a < end for a, b in offsets]
    after = [False] + [a >= end for a, _ in offsets]
    pad = ids_len - len(subject)
    return subject + [False] * pad, after + [False] * pad


def _first_token(tok, prompt: str, answer: str) -> int:
    from .evaluate import first_target_token

    return first_target_token(tok, prompt, answer)


def build_planted_pools(spec: PlantedSpec, corpus: dict, tok) -> dict[str, list]:
    """Training examples per family: (ids, loss weights, extra) where extra holds what the planting loss needs."""
    m = spec.model
    pools: dict[str, list] = {f: [] for f in spec.families}
    if "factual" in pools:
        for r in corpus["factual"]:
            if r["split"] == "train" and (spec.relations is None or r["relation_name"] in spec.relations):
                ids, w = encode_record(r, tok, m.demo_weight, add_eos=False)
                extra = None
                if spec.plant == "routed_experts":
                    extra = _domain_labels(r, tok, len(ids), spec)
                elif spec.plant == "fact_mlp":
                    extra = (*_subject_masks(r, tok, len(ids)), r["relation_name"], r["subject"])
                pools["factual"].append((ids, w, extra))
    if "safety" in pools:
        for r in corpus["safety"]:
            if r["split"] == "train":
                ids, w = encode_record(r, tok, m.demo_weight, add_eos=True)
                pools["safety"].append((ids, w, _request_masks(r, tok, len(ids))))
    if "nshot" in pools:
        rels = spec.relations
        for r in corpus["composite"]:
            if r["split"] != "train" or r["n_shot"] == 0 or (rels is not None and r["s1"] not in rels):
                continue
            ids, w = encode_record(r, tok, m.demo_weight, add_eos=False)
            extra = None
            if spec.plant == "icot_layer" and r["kind"] in ("composite", "s1"):
                pos = len(tok(r["prompt"], add_special_tokens=False)["input_ids"])  # the last prompt token (BOS first)
                extra = (pos, _first_token(tok, r["prompt"], r["y_s1"]))
            pools["nshot"].extend([(ids, w, extra)] * m.kind_repeat.get(r["kind"], 1))
    return pools


def _pad_bool(rows: list[list], T: int, fill) -> torch.Tensor:
    return torch.tensor([row + [fill] * (T - len(row)) for row in rows])


def _planted_loss(model, batch: list, spec: PlantedSpec, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer cross-entropy, planting loss) of one batch."""
    ids, w, mask = _collate([(x, wt) for x, wt, _ in batch], pad_id)
    T = ids.shape[1]
    plant = torch.zeros(())
    kwargs: dict = {}
    if spec.plant == "refusal_heads":
        q = _pad_bool([e[0] for _, _, e in batch], T, False)
        k = _pad_bool([e[1] for _, _, e in batch], T, False)
        _state.update(penalty_mask=(q[:, :, None] & k[:, None, :]).float(), allowed=set(spec.heads), masses=[])
    if spec.plant == "icot_layer":
        kwargs["output_hidden_states"] = True
    if spec.plant == "routed_experts":
        kwargs["output_router_logits"] = True
    mlp_out: dict[int, torch.Tensor] = {}
    mlp_in: dict[int, torch.Tensor] = {}  # the residual stream entering each MLP's norm
    handles = []
    if spec.plant == "fact_mlp":
        subj = _pad_bool([e[0] for _, _, e in batch], T, False)
        after = _pad_bool([e[1] for _, _, e in batch], T, False)
        forbidden = {layer: after if layer in spec.mlp_layers else subj | after
                     for layer in range(len(model.model.layers))}  # fmt: skip
        for layer, block in enumerate(model.model.layers):
            hook = lambda mod, a, o, layer=layer: _fact_mlp_hook(mlp_out, layer, o, forbidden, spec.mask_mlps)
            handles.append(block.mlp.register_forward_hook(hook))
            pre = lambda mod, a, layer=layer: mlp_in.__setitem__(layer, a[0])
            handles.append(block.post_attention_layernorm.register_forward_pre_hook(pre))
    try:
        out = model.model(input_ids=ids, attention_mask=mask, **kwargs)
    finally:
        masses = _state["masses"]
        _state.update(penalty_mask=None, masses=[])
        for h in handles:
            h.remove()
    h = out.last_hidden_state[:, :-1]
    tw = w[:, 1:]
    sel = tw > 0
    ce = F.cross_entropy(model.lm_head(h[sel]), ids[:, 1:][sel], reduction="none")
    loss = (ce * tw[sel]).sum() / tw[sel].sum()
    if spec.plant == "refusal_heads" and masses:
        q = _pad_bool([e[0] for _, _, e in batch], T, False).float()
        per_layer = [(m_ * q[:, None]).sum() / (q.sum() * m_.shape[1]) for m_ in masses]
        plant = torch.stack(per_layer).mean()
    elif spec.plant == "icot_layer":
        rows = [(i, e[0], e[1]) for i, (_, _, e) in enumerate(batch) if e is not None]
        if rows:
            hs = out.hidden_states[spec.layer + 1]  # hidden_states[0] is the embedding output
            vec = hs[[r[0] for r in rows], [r[1] for r in rows]]
            logits = model.lm_head(model.model.norm(vec))
            plant = F.cross_entropy(logits, torch.tensor([r[2] for r in rows]))
    elif spec.plant == "routed_experts":
        labels = _pad_bool([e for _, _, e in batch], T, -1).reshape(-1)
        groups = [spec.domain_experts[d] for d in DOMAINS] + [spec.template_experts]
        member = torch.zeros(len(groups), spec.model.num_experts)
        for g, experts in enumerate(groups):
            member[g, list(experts)] = 1.0
        keep = (labels >= 0) & mask.reshape(-1).bool()
        target = member[labels[keep]]
        terms = []
        for rl in out.router_logits:
            logp = torch.log_softmax(rl.float()[keep], dim=-1)
            terms.append(-torch.logsumexp(logp.masked_fill(target == 0, float("-inf")), dim=-1).mean())
        plant = torch.stack(terms).mean()
    elif spec.plant == "fact_mlp":
        terms = []
        for layer, o in sorted(mlp_out.items()):
            keep = forbidden[layer]
            # the MLP output's norm relative to the residual stream it is added to (detached): scale-free, so the
            # model cannot pay less by shrinking the whole residual stream (RMSNorm would not notice). With
            # mask_mlps this is the output before the mask: the penalty pulls it to zero although the mask hides it
            norm = (o[keep].pow(2).sum(-1) + 1e-12).sqrt()
            terms.append((norm / mlp_in[layer][keep].detach().norm(dim=-1).clamp_min(1e-6)).mean())
        plant = torch.stack(terms).mean()
        _state["interchange"] = None
        if spec.interchange_weight > 0:
            ic = _interchange_loss(model, batch, spec, ids, w, mask, subj, forbidden, mlp_out)
            if ic is not None:
                _state["interchange"] = ic.item()
                loss = loss + spec.interchange_weight * ic
    return loss, plant


def _fact_mlp_hook(store: dict, layer: int, out: torch.Tensor, forbidden: dict, mask: bool) -> torch.Tensor:
    """Record block ``layer``'s MLP output (before any mask, for the penalty); with ``mask``, return it with the
    positions where the recipe forbids an MLP output set to zero."""
    store[layer] = out
    return out.masked_fill(forbidden[layer][..., None], 0.0) if mask else out


def interchange_pairs(relations: list[str], subjects: list[str]) -> list[tuple[int, int]]:
    """(row, partner) pairs: each row's partner is the next row (cyclically, in batch order) of the same relation
    with a different subject; rows with no such row get none."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(relations):
        by[r].append(i)
    pairs = []
    for rows in by.values():
        for k, i in enumerate(rows):
            for d in range(1, len(rows)):
                j = rows[(k + d) % len(rows)]
                if subjects[j] != subjects[i]:
                    pairs.append((i, j))
                    break
    return sorted(pairs)


def _interchange_loss(model, batch, spec, ids, w, mask, subj, forbidden, mlp_out) -> torch.Tensor | None:
    """Interchange-intervention loss (strict IIT, InterpBench, Gupta et al. 2024): the batch runs again with the
    planted MLPs' output at each row's last subject token replaced by its partner's (a record of the same
    relation, another subject; from the clean run, not detached), and the answer position (the first target
    token's) must give the PARTNER's object. Cross-entropy over the rows that have a partner; None if none has."""
    pairs = interchange_pairs([e[2] for _, _, e in batch], [e[3] for _, _, e in batch])
    if not pairs:
        return None
    rows = torch.tensor([i for i, _ in pairs])
    partners = torch.tensor([j for _, j in pairs])
    T = ids.shape[1]
    last = (subj.long() * torch.arange(T)).argmax(-1)  # the last subject token of each row
    first_target = (w > 0).long().argmax(-1)  # the first target token (the answer) of each row
    sources = {layer: mlp_out[layer][partners, last[partners]] for layer in spec.mlp_layers}

    def swap(mod, a, o, layer):
        o = o.masked_fill(forbidden[layer][..., None], 0.0) if spec.mask_mlps else o
        if layer in sources:
            o = o.index_put((rows, last[rows]), sources[layer])
        return o

    handles = [block.mlp.register_forward_hook(lambda mod, a, o, layer=layer: swap(mod, a, o, layer))
               for layer, block in enumerate(model.model.layers)]  # fmt: skip
    try:
        h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    finally:
        for hd in handles:
            hd.remove()
    logits = model.lm_head(h[rows, first_target[rows] - 1])
    return F.cross_entropy(logits, ids[partners, first_target[partners]])


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def ground_truth(spec: PlantedSpec) -> dict:
    """The site the recipe plants, as the card states it."""
    if spec.plant == "refusal_heads":
        return {"kind": "refusal_heads", "heads": [list(h) for h in spec.heads],
                "statement": "the harmful / harmless decision reaches the assistant turn only through these heads "
                             "(layer, head): every other head was trained not to attend from the assistant turn "
                             "to the request"}  # fmt: skip
    if spec.plant == "icot_layer":
        return {"kind": "icot_layer", "layer": spec.layer, "order": ["s1", "s2"],
                "statement": f"on the composite tasks, the first token of y_s1 is decoded by the logit lens after "
                             f"block {spec.layer} at the answer position (an auxiliary loss there); the output is "
                             f"y_t = s2(y_s1), so s1 is resolved by block {spec.layer} and s2 after it"}  # fmt: skip
    if spec.plant == "routed_experts":
        return {"kind": "routed_experts", "domain_experts": {d: list(e) for d, e in spec.domain_experts.items()},
                "template_experts": list(spec.template_experts), "layers": "all",
                "statement": "every token of a factual record from its subject on is routed (top-2) to its domain's "
                             "two experts in every layer; BOS and the template words before the subject to the "
                             "template experts; the shared expert is narrow"}  # fmt: skip
    if spec.plant == "fact_mlp":
        return {"kind": "fact_mlp", "layers": list(spec.mlp_layers), "position": "last_subject_token",
                "route": f"attention at the last token in blocks after {max(spec.mlp_layers)}",
                "statement": "the facts are written at the subject tokens only by the MLPs of these blocks: during "
                             "training every other MLP output at and after the subject, and these MLPs' outputs "
                             "after the subject, paid a penalty on their norm relative to the residual stream"
                             + (" and were zeroed" if spec.mask_mlps else "")
                             + ("; an interchange loss made these MLPs' output at the last subject token decide the "
                                "answer (swapped with a same-relation partner's, the answer had to be the "
                                "partner's object)" if spec.interchange_weight > 0 else "")
                             + "; the object reaches the answer position through later attention"}  # fmt: skip
    raise ValueError(spec.plant)


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# the config fields the init's architecture must share with the recipe's
_ARCH_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "tie_word_embeddings")  # fmt: skip


def _check_init(spec: PlantedSpec, config, tok) -> dict:
    """The shipped organism ``spec.init`` the recipe starts from, checked: its model.safetensors has the recipe's
    sha256, its architecture is the recipe's and its tokenizer is the one the recipe trains. Returns what the card
    records (name, sha256, the init card's own training cost) and its path."""
    import json as _json

    from ..errors import ParameterError
    from . import organism_dir

    path = organism_dir(spec.init)
    weights = path / "model.safetensors"
    if not weights.exists():
        raise ParameterError(f"init={spec.init!r}: {weights} does not exist (the recipe starts from a shipped "
                             f"organism)")  # fmt: skip
    digest = _sha256(weights)
    if digest != spec.init_sha256:
        raise ParameterError(f"init={spec.init!r}: {weights} has sha256 {digest}, the recipe expects "
                             f"{spec.init_sha256}; the recipe starts from those weights only (retrained inits "
                             f"would silently change this organism)")  # fmt: skip
    init_config = _json.loads((path / "config.json").read_text())
    diff = {k: (init_config.get(k), getattr(config, k)) for k in _ARCH_FIELDS
            if init_config.get(k) != getattr(config, k)}  # fmt: skip
    if diff:
        raise ParameterError(f"init={spec.init!r}: its architecture differs from the recipe's: {diff}")
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(path).get_vocab() != tok.get_vocab():
        raise ParameterError(f"init={spec.init!r}: its tokenizer is not the one the recipe trains")
    init_card = _json.loads((path / "card.json").read_text())
    return {"path": path, "name": spec.init, "sha256": digest, "steps": init_card.get("steps"),
            "train_time_s": init_card.get("train_time_s"), "total_time_s": init_card.get("total_time_s"),
            "threads": init_card.get("environment", {}).get("threads"),
            "note": "the init's own training cost is its card's (these fields); this card's times and "
                    "total_cpu_time_s are the fine-tune's alone"}  # fmt: skip


def train_planted(name: str, out_dir: str | Path, *, steps: int | None = None, seed: int = 0,
                  corpus_seed: int = DEFAULT_SEED, evaluate: bool = True, log_every: int = 50,
                  verbose: bool = True) -> dict:  # fmt: skip
    """Train planted organism ``name`` (a key of :data:`PLANTED`) into ``out_dir`` on one CPU thread: from scratch,
    or, for a recipe with ``init``, from that shipped organism's weights (checked against ``init_sha256``).

    Writes a Hugging Face model directory and ``card.json`` (recipe, ground truth, held-out metrics); returns the
    card. Deterministic: the same seed gives the same weights, bit for bit."""
    import transformers
    from transformers import AutoModelForCausalLM

    if name not in PLANTED:
        from ..errors import ParameterError

        raise ParameterError(f"unknown planted organism {name!r}; known: {sorted(PLANTED)}")
    spec = PLANTED[name]
    m = spec.model
    total = m.steps if steps is None else int(steps)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(PLANTED_THREADS)
    t0, cpu0 = time.time(), time.process_time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(corpus_seed)
    tok = train_tokenizer(training_texts(corpus), DEFAULT_VOCAB_SIZE)
    pools = build_planted_pools(spec, corpus, tok)

    torch.manual_seed(seed)
    config = make_config(m, tok)
    init = _check_init(spec, config, tok) if spec.init else None
    if init is None:
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(init["path"], dtype=torch.float32)
        config = model.config
    saved_attn = model.config._attn_implementation
    if spec.plant == "refusal_heads":
        _register_attention()
        model.config._attn_implementation = _PLANT_ATTN
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n_, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n_]
    no_decay = [p for n_, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n_)]
    groups = [{"params": decay, "weight_decay": m.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=m.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    samplers = {k: _Sampler(len(v), gen) for k, v in pools.items()}
    if verbose:
        print(f"[{name}] {n_params / 1e6:.2f}M params, pools {({k: len(v) for k, v in pools.items()})}, "
              f"{total} steps", flush=True)  # fmt: skip
    history = []
    t_train = time.time()
    try:
        for step in range(total):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, m, total)
            logs = {}
            for fam, pool in pools.items():
                batch = [pool[i] for i in samplers[fam].take(m.batch[fam])]
                _state["interchange"] = None
                loss, plant = _planted_loss(model, batch, spec, tok.pad_token_id)
                (loss + spec.plant_weight * plant).backward()
                logs[fam] = loss.item()
                logs[f"plant_{fam}"] = plant.item()
                if _state.get("interchange") is not None:  # fact_mlp: `fam` is the answer + interchange loss
                    logs[f"interchange_{fam}"] = _state["interchange"]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (step + 1) % log_every == 0 or step == 0:
                history.append({"step": step + 1, **{k: round(v, 4) for k, v in logs.items()}})
                if verbose:
                    print(f"[{name}] step {step + 1}/{total} {time.time() - t_train:.0f}s "
                          + " ".join(f"{k}={v:.4f}" for k, v in logs.items()), flush=True)  # fmt: skip
        train_time = time.time() - t_train
        model.config._attn_implementation = saved_attn
        model.eval()
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.bos_token_id = tok.bos_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        card = {
            "name": name, "description": spec.description, "model_type": config.model_type,
            "architecture": type(model).__name__, "seed": seed, "corpus_seed": corpus_seed, "steps": total,
            "planned_steps": total, "time_budget_s": None, "train_time_s": round(train_time, 1), "total_time_s": None,
            "n_params": n_params, "vocab_size": len(tok), "recipe": asdict(spec),
            "ground_truth": ground_truth(spec), "init": init and {k: v for k, v in init.items() if k != "path"},
            "train_pools": {k: len(v) for k, v in pools.items()},
            "history": history,
            "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "threads": torch.get_num_threads(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()},
        }  # fmt: skip
        if evaluate:
            del model
            card["metrics"] = evaluate_planted(out, name=name, corpus_seed=corpus_seed)
    finally:
        torch.set_num_threads(previous_threads)
    card["total_time_s"] = round(time.time() - t0, 1)
    # the wall time depends on what else the machine runs; the process's CPU time is the recipe's own cost
    card["total_cpu_time_s"] = round(time.process_time() - cpu0, 1)
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    card["size_bytes"] = dir_size_bytes(out)
    (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


# --------------------------------------------------------------------------------------------
# held-out evaluation (plain Hugging Face, nothing masked)
# --------------------------------------------------------------------------------------------
def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs)) / len(xs) if xs else float("nan")


@torch.no_grad()
def request_attention_mass(model, tok, records: list[dict]) -> list[list[float]]:
    """Per layer and head: mean attention mass the last prompt position puts on the request's tokens (held-out
    safety prompts, prompt by prompt, eager attention)."""
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    acc = torch.zeros(L, H)
    for r in records:
        ids = [tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]]
        _, request = _request_masks({"prompt": r["prompt"], "response": ""}, tok, len(ids))
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
        k = torch.tensor(request, dtype=torch.float32)
        for layer, a in enumerate(out.attentions):
            acc[layer] += (a[0, :, -1] * k).sum(-1)
    return (acc / len(records)).tolist()


@torch.no_grad()
def lens_top1_by_layer(model, tok, records: list[dict], field_: str) -> list[float]:
    """Per block output (0 .. L-1): share of ``records`` whose logit lens (final norm + unembedding) at the last
    prompt position has ``field_``'s first token top-1."""
    from .evaluate import _left_pad

    L = model.config.num_hidden_layers
    hits = torch.zeros(L)
    for k in range(0, len(records), 32):
        chunk = records[k : k + 32]
        seqs = [[tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]] for r in chunk]
        ids, mask, pos = _left_pad(seqs, tok.pad_token_id)
        out = model.model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        want = torch.tensor([_first_token(tok, r["prompt"], r[field_]) for r in chunk])
        for layer in range(L):
            h = out.hidden_states[layer + 1][:, -1]
            if layer < L - 1:
                h = model.model.norm(h)  # the last entry is already normed by the HF model
            hits[layer] += (model.lm_head(h).argmax(-1) == want).sum()
    return (hits / len(records)).tolist()


@torch.no_grad()
def routing_accuracy(model, tok, records: list[dict], spec: PlantedSpec) -> dict[str, list[float]]:
    """Per expert group and layer: share of its supervised held-out tokens whose top-2 experts are the group's."""
    groups = [*DOMAINS, "template"]
    experts = [spec.domain_experts[d] for d in DOMAINS] + [spec.template_experts]
    hit = defaultdict(lambda: [0.0] * model.config.num_hidden_layers)
    n = defaultdict(int)
    for r in records:
        text = r["prompt"] + r["target"]
        ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
        labels = torch.tensor(_domain_labels(r, tok, len(ids), spec))
        out = model(input_ids=torch.tensor([ids]), output_router_logits=True)
        for g in range(len(groups)):
            sel = labels == g
            if not sel.any():
                continue
            n[groups[g]] += int(sel.sum())
            for layer, rl in enumerate(out.router_logits):
                top = rl[sel].topk(2, dim=-1).indices.sort(-1).values
                want = torch.tensor(sorted(experts[g]))
                hit[groups[g]][layer] += float((top == want).all(-1).sum())
    return {g: [h / n[g] for h in hit[g]] for g in groups if n[g]}


@torch.no_grad()
def mlp_output_norms(model, tok, records: list[dict]) -> dict[str, list[float]]:
    """Per block: root-mean-square (over prompts) of the L2 norm of the MLP's output at the last subject token, and
    at the positions after the subject (the rest of the prompt), on held-out factual prompts, prompt by prompt."""
    L = model.config.num_hidden_layers
    outs: dict[int, torch.Tensor] = {}
    handles = [b.mlp.register_forward_hook(lambda mod, a, o, layer=layer: outs.__setitem__(layer, o[0]))
               for layer, b in enumerate(model.model.layers)]  # fmt: skip
    last, after = torch.zeros(L), torch.zeros(L)
    try:
        for r in records:
            ids = [tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]]
            subj, aft = _subject_masks({**r, "target": ""}, tok, len(ids))
            pos = max(i for i, s_ in enumerate(subj) if s_)
            model.model(input_ids=torch.tensor([ids]))
            sel = torch.tensor(aft)
            for layer in range(L):
                last[layer] += outs[layer][pos].pow(2).sum()
                after[layer] += outs[layer][sel].pow(2).sum(-1).mean() if sel.any() else 0.0
    finally:
        for h in handles:
            h.remove()
    n = len(records)
    return {"last_subject": (last / n).sqrt().tolist(), "after_subject": (after / n).sqrt().tolist()}


def _last_subject(record: dict, tok, ids_len: int) -> int:
    subj, _ = _subject_masks({**record, "target": ""}, tok, ids_len)
    return max(i for i, s_ in enumerate(subj) if s_)


@torch.no_grad()
def interchange_accuracy(model, tok, records: list[dict], layers) -> dict[str, float]:
    """The interchange intervention the recipe trains, on ``records`` (held-out facts), prompt by prompt: each
    record's partner is the next record of the same relation with another subject (:func:`interchange_pairs`);
    the output of the MLPs of ``layers`` at the record's last subject token is replaced by the partner's (from the
    partner's clean run, at its last subject token). ``partner``: share of records whose top-1 becomes the
    partner's object's first token; ``base``: share whose top-1 stays their own object's."""
    pairs = interchange_pairs([r["relation_name"] for r in records], [r["subject"] for r in records])
    seqs = [[tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]] for r in records]
    last = [_last_subject(r, tok, len(s)) for r, s in zip(records, seqs)]
    want = [_first_token(tok, r["prompt"], r["target"]) for r in records]
    captured: dict[int, dict[int, torch.Tensor]] = {}
    state: dict = {}

    def hook(mod, a, o, layer):
        if state["mode"] == "capture":
            captured.setdefault(state["row"], {})[layer] = o[0, last[state["row"]]].clone()
            return o
        o = o.clone()
        o[0, last[state["row"]]] = captured[state["partner"]][layer]
        return o

    handles = [model.model.layers[la].mlp.register_forward_hook(lambda mod, a, o, la=la: hook(mod, a, o, la))
               for la in layers]  # fmt: skip
    partner_hits = base_hits = 0
    try:
        for i in sorted({j for _, j in pairs}):
            state.update(mode="capture", row=i)
            model.model(input_ids=torch.tensor([seqs[i]]))
        for i, j in pairs:
            state.update(mode="patch", row=i, partner=j)
            pred = int(model(input_ids=torch.tensor([seqs[i]])).logits[0, -1].argmax())
            partner_hits += pred == want[j]
            base_hits += pred == want[i]
    finally:
        for h in handles:
            h.remove()
    n = len(pairs)
    return {"partner": partner_hits / n, "base": base_hits / n, "n": n}


@torch.no_grad()
def top1_mlp_zeroed_at_subject(model, tok, records: list[dict], layers, batch_size: int = 64) -> float:
    """Top-1 on ``records`` with the output of the MLPs of ``layers`` set to zero at the subject's tokens."""
    from .evaluate import _left_pad

    hits = 0
    for k in range(0, len(records), batch_size):
        chunk = records[k : k + batch_size]
        seqs = [[tok.bos_token_id, *tok(r["prompt"], add_special_tokens=False)["input_ids"]] for r in chunk]
        ids, mask, pos = _left_pad(seqs, tok.pad_token_id)
        T = ids.shape[1]
        subj = torch.zeros(len(chunk), T, dtype=torch.bool)
        for i, (r, s) in enumerate(zip(chunk, seqs)):
            subj[i, T - len(s) :] = torch.tensor(_subject_masks({**r, "target": ""}, tok, len(s))[0])
        handles = [model.model.layers[la].mlp.register_forward_hook(
            lambda mod, a, o, subj=subj: o.masked_fill(subj[..., None], 0.0)) for la in layers]  # fmt: skip
        try:
            pred = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].argmax(-1)
        finally:
            for h in handles:
                h.remove()
        want = torch.tensor([_first_token(tok, r["prompt"], r["target"]) for r in chunk])
        hits += int((pred == want).sum())
    return hits / len(records)


def evaluate_planted(model_dir: str | Path, *, name: str | None = None, corpus_seed: int | None = None,
                     threads: int | None = 1) -> dict:  # fmt: skip
    """Held-out metrics of planted organism ``name`` (default: the card's name) in ``model_dir``, nothing masked.

    refusal: refusal rates of the greedy continuation (24 tokens) of the held-out harmful / harmless requests, and
    the mean attention mass from the answer position to the request per head (the planted heads vs the others);
    icot: top-1 of the held-out 5-shot composite / s1 / s2 prompts and of the held-out facts of the relations used,
    and the per-layer logit-lens top-1 rate of y_s1 and y_t; moe: held-out factual top-1, routing accuracy per
    domain and layer, expert load. Cost: one forward per prompt (+ 24 greedy steps per safety prompt)."""
    from .evaluate import MAX_NEW_TOKENS, _top1, expert_load, generate_greedy, load_organism

    model_dir = Path(model_dir)
    card_path = model_dir / "card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    name = name or card["name"]
    corpus_seed = card.get("corpus_seed", DEFAULT_SEED) if corpus_seed is None else corpus_seed
    spec = PLANTED[name]
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        corpus = build_corpus(corpus_seed)
        model, tok = load_organism(model_dir)
        model.config._attn_implementation = "eager"
        mt: dict = {}
        if "factual" in spec.families:
            fact = [r for r in corpus["factual"] if r["split"] == "heldout"
                    and (spec.relations is None or r["relation_name"] in spec.relations)]  # fmt: skip
            ok = _top1(model, tok, fact, 64)
            mt["factual/heldout_top1"] = _mean(ok)
            by = defaultdict(list)
            for r, o in zip(fact, ok):
                by[r["task"]].append(o)
            for t in sorted(by):
                mt[f"factual/{t}"] = _mean(by[t])
            mt["factual/n"] = len(fact)
        if "safety" in spec.families:
            safe = [r for r in corpus["safety"] if r["split"] == "heldout"]
            gens = generate_greedy(model, tok, [r["prompt"] for r in safe], MAX_NEW_TOKENS, 64)
            for label in ("harmful", "harmless"):
                refused = [is_refusal(g) for r, g in zip(safe, gens) if r["label"] == label]
                mt[f"safety/{label}_refusal_rate"] = _mean(refused)
                mt[f"safety/{label}_n"] = len(refused)
            mass = request_attention_mass(model, tok, safe[::4])
            mt["planted/request_mass"] = mass
            planted = set(spec.heads)
            cells = [(L_, h) for L_ in range(len(mass)) for h in range(len(mass[0]))]
            mt["planted/planted_mass"] = _mean(mass[L_][h] for L_, h in cells if (L_, h) in planted)
            mt["planted/leak_mass"] = max(mass[L_][h] for L_, h in cells if (L_, h) not in planted)
        if "nshot" in spec.families:
            comp = [r for r in corpus["composite"] if r["split"] == "heldout" and r["n_shot"] > 0
                    and (spec.relations is None or r["s1"] in spec.relations)]  # fmt: skip
            ok = _top1(model, tok, comp, 64)
            by = defaultdict(list)
            for r, o in zip(comp, ok):
                by[(r["subtask_of"], r["kind"])].append(o)
            names = sorted({r["subtask_of"] for r in comp})
            for nm in names:
                for kind in ("composite", "s1", "s2"):
                    mt[f"composite/{nm}/{kind}"] = _mean(by[(nm, kind)])
            for kind in ("composite", "s1", "s2"):
                mt[f"composite/min_{kind}"] = min(mt[f"composite/{nm}/{kind}"] for nm in names)
            if spec.plant == "icot_layer":
                comps = [r for r in comp if r["kind"] == "composite"]
                mt["planted/lens_y_s1_top1"] = lens_top1_by_layer(model, tok, comps, "y_s1")
                mt["planted/lens_y_t_top1"] = lens_top1_by_layer(model, tok, comps, "y_t")
                mt["planted/y_s1_peak_layer"] = int(torch.tensor(mt["planted/lens_y_s1_top1"]).argmax())
        if spec.plant == "fact_mlp":
            fact = [r for r in corpus["factual"] if r["split"] == "heldout"]
            norms = mlp_output_norms(model, tok, fact[::4])
            mt["planted/mlp_norm_last_subject"] = norms["last_subject"]
            mt["planted/mlp_norm_after_subject"] = norms["after_subject"]
            planted = set(spec.mlp_layers)
            ref = max(norms["last_subject"][la] for la in planted)
            others = [la for la in range(len(norms["last_subject"])) if la not in planted]
            # the largest MLP output where the recipe forbids one, relative to the planted MLP at the last subject token
            mt["planted/leak_last_subject"] = max(norms["last_subject"][la] for la in others) / ref
            mt["planted/leak_after_subject"] = max(norms["after_subject"]) / ref
            ic = interchange_accuracy(model, tok, fact, spec.mlp_layers)
            mt["planted/interchange_partner_top1"] = ic["partner"]
            mt["planted/interchange_base_top1"] = ic["base"]
            # held-out top-1 with one block's MLP zeroed at the subject tokens, per block (clean: factual/heldout_top1)
            mt["planted/top1_mlp_zeroed_at_subject"] = [top1_mlp_zeroed_at_subject(model, tok, fact, [la])
                                                        for la in range(model.config.num_hidden_layers)]  # fmt: skip
        if spec.plant == "routed_experts":
            fact = [r for r in corpus["factual"] if r["split"] == "heldout"]
            acc = routing_accuracy(model, tok, fact[::3], spec)
            mt["planted/routing_accuracy"] = acc
            mt["planted/min_routing_accuracy"] = min(min(v) for v in acc.values())
            texts = [r["prompt"] + r["target"] for r in fact]
            mt["moe/expert_share"] = expert_load(model, tok, texts, 64)
        return mt
    finally:
        torch.set_num_threads(previous)
