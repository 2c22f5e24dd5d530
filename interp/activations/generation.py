"""Text generation that is exact under batching, with interventions active at every step.

:func:`generate` is the public entry point (``interp.generate``, also ``model.generate``): it continues every
prompt, clean or under each of several interventions, and returns a :class:`~interp.results.result.Result` with one row
per prompt and intervention. :func:`generate_batch` is the engine underneath: it continues one left-padded
:class:`~interp.prompts.Batch` with K interventions at once (K x B rows, one intervention per block of rows),
greedily or by seeded sampling, and returns each row's new tokens and text.

The engine uses the model's key/value cache (one prefill of the prompt, then one token per step); every
intervention of :mod:`interp.activations.interventions` acts per position, so applying it to each new
token's forward, with
the cached positions computed under it at earlier steps, is the same as re-running the whole intervened sequence.
Position ids come from the attention mask, so every row equals generating that prompt alone
(tests/test_generate.py checks it against a plain Hugging Face greedy loop on dense, grouped-query and MoE models).

Why not the bridge's own ``generate``: TransformerLens 4.3's attention bridge reads the cache from the keyword
``past_key_values`` while transformers 5.x passes it as ``cache``; without a fix the cache stays empty and every
cached step attends to nothing but itself, so the continuation after the first token ignores the prompt (the
bridge's ``generate`` with its default KV cache gives such text). :func:`_kv_cache_bridge` adds a pre-hook on every
attention bridge that passes the cache on under the name the bridge reads (removed on exit). If the cache still
does not fill, generation falls back to re-running the full sequence each step (exact, slower).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import ParameterError, PromptError, check_positive_float, check_positive_int
from ..model.loading import Model, as_model
from ..prompts import Batch, PromptSet, as_prompt_set, batches, encode
from ..results.result import Result, make_meta
from ..results.schema import Schema
from .hooks import Intervention, check_hook_names, hooked
from .variants import default_max_rows, finite_pad_rows

SCHEMA = Schema(
    keys=("prompt_id", "intervention"), value="n_new_tokens", unit="tokens", sign="higher",
    columns={"prompt_id": "str", "intervention": "str", "response": "str", "n_new_tokens": "int"},
    grid=("prompt_id", "intervention"),
)
CLEAN_LABEL = "clean"


@dataclass
class Generated:
    """Rows of a generation: new token ids (up to and excluding EOS) and their decoded text."""

    tokens: list[list[int]]
    texts: list[str]


@contextmanager
def _kv_cache_bridge(model: Model) -> Iterator[None]:
    """Pass transformers' ``cache`` keyword on as ``past_key_values`` to the attention bridges (see module doc)."""

    def pre(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
            kwargs["past_key_values"] = kwargs["cache"]
            return args, kwargs
        return None

    handles = []
    try:
        for block in model.bridge.blocks:
            handles.append(block.attn.register_forward_pre_hook(pre, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _row_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def generate_batch(
    model: Model,
    batch: Batch,
    interventions: Sequence[Intervention | None],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    row_keys: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    use_cache: bool = True,
) -> list[Generated]:
    """Continue every prompt of ``batch`` under each intervention (None = clean); returns one Generated per one.

    Rows are stacked as in the variants engine (copy k of the batch carries intervention k). Greedy by default;
    with ``do_sample`` each row samples from softmax(logits / temperature) with its own generator seeded from
    (seed, row key, intervention label), so a row's sample does not depend on its batch-mates. ``row_keys``: one
    key per prompt of the batch (default: its index in the prompt set); ``labels``: one per intervention (default:
    its ``label``, "clean" for None). A row stops at EOS; the loop stops when every row has. Cost: one prefill of
    K x B rows plus one single-token forward of K x B rows per new token (``use_cache=False``: a full forward of
    the grown sequence per new token).
    """
    m = model
    device = m.device
    bsz = batch.size
    k = len(interventions)
    rep = batch.repeat(k).to(device)
    ivs = [iv.on_rows(slice(j * bsz, (j + 1) * bsz)) for j, iv in enumerate(interventions) if iv is not None]
    eos = m.tokenizer.eos_token_id
    rows = rep.size
    keys = list(row_keys) if row_keys is not None else [str(i) for i in batch.indices]
    gens = None
    if do_sample:
        names = list(labels) if labels is not None else [iv.label if iv is not None else CLEAN_LABEL
                                                          for iv in interventions]
        gens = [torch.Generator().manual_seed(_row_seed(seed, f"{keys[r % bsz]}|{names[r // bsz]}"))
                for r in range(rows)]

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        probs = (logits.float() / temperature).softmax(-1).cpu()
        return torch.stack([torch.multinomial(probs[r], 1, generator=gens[r])[0] for r in range(rows)]).to(device)

    new = torch.empty((rows, 0), dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    ids, mask = rep.input_ids, rep.attention_mask
    if m.dtype == torch.float64 and bool((rep.attention_mask == 0).any()):
        ivs = [*ivs, finite_pad_rows(m, 0)]  # else NaN pad rows reach the real ones (see variants)
    with torch.no_grad(), hooked(m, ivs), _kv_cache_bridge(m):
        past = None
        if use_cache:
            out, past = m.bridge(ids, attention_mask=mask, position_ids=rep.position_ids,
                                 return_type="logits_and_cache", use_cache=True)
            if past is None or past.get_seq_length() != ids.shape[1]:
                past = None  # the cache did not fill (another bridge/transformers pairing): re-run in full
            logits = out[:, -1]
        else:
            logits = m.bridge(ids, attention_mask=mask, position_ids=rep.position_ids)[:, -1]
        for step in range(max_new_tokens):
            nxt = pick(logits)
            if eos is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done = done | (nxt == eos)
            new = torch.cat([new, nxt[:, None]], 1)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            ids = torch.cat([ids, nxt[:, None]], 1)
            if past is not None:
                pos = mask.sum(-1, keepdim=True) - 1
                out, past = m.bridge(nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=past,
                                     return_type="logits_and_cache", use_cache=True)
                logits = out[:, -1]
            else:
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = m.bridge(ids, attention_mask=mask, position_ids=pos)[:, -1]
    new = new.cpu()
    results = []
    for j in range(k):
        toks, texts = [], []
        for r in range(j * bsz, (j + 1) * bsz):
            row = new[r].tolist()
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            toks.append(row)
            texts.append(m.tokenizer.decode(row, skip_special_tokens=True))
        results.append(Generated(toks, texts))
    return results


# --- the public entry point -----------------------------------------------------------------------------------
def check_interventions(model: Model, interventions: Any) -> dict[str, Intervention | None]:
    """``None`` -> {"clean": None}; one Intervention -> {its label: it}; a mapping {label: Intervention | None}
    checked entry by entry (labels non-empty strings, values Interventions or None, every hook name known)."""
    if interventions is None:
        out: dict[str, Intervention | None] = {CLEAN_LABEL: None}
    elif isinstance(interventions, Intervention):
        out = {interventions.label or CLEAN_LABEL: interventions}
    elif isinstance(interventions, Mapping):
        if not interventions:
            raise ParameterError("interventions is an empty mapping: give at least one {label: Intervention | None} "
                                 "(None: the clean model), or interventions=None for clean generation only.")
        out = {}
        for label, iv in interventions.items():
            if not isinstance(label, str) or not label.strip():
                raise ParameterError(f"interventions: every label must be a non-empty string; got {label!r}.")
            if iv is not None and not isinstance(iv, Intervention):
                raise ParameterError(
                    f"interventions[{label!r}] is a {type(iv).__name__}, not an interp.Intervention or None; build "
                    "one with interp.ablate_heads, interp.patch, ... or interp.Intervention.from_function.")
            out[label] = iv
    else:
        hint = (" Give a mapping {label: Intervention} for several." if isinstance(interventions, (list, tuple))
                else "")
        raise ParameterError(
            f"interventions must be None (clean), an interp.Intervention or a mapping {{label: Intervention | "
            f"None}}; got a {type(interventions).__name__}.{hint}")
    check_hook_names(model, [e.name for iv in out.values() if iv is not None for e in iv.edits])
    return out


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"{name} must be True or False; got {value!r}.")
    return value


def _check_context(model: Model, ps: PromptSet, lengths: list[int], max_new_tokens: int) -> None:
    """Learned absolute position embeddings (gpt2) have n_ctx rows: the fed sequence must fit in them."""
    cfg = model.bridge.cfg
    n_ctx = getattr(cfg, "n_ctx", None)
    if getattr(cfg, "positional_embedding_type", None) != "standard" or not n_ctx:
        return
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    if lengths[longest] + max_new_tokens - 1 > n_ctx:
        raise ParameterError(
            f"Prompt {ps.ids[longest]!r} has {lengths[longest]} tokens; with max_new_tokens={max_new_tokens} the "
            f"sequence would need {lengths[longest] + max_new_tokens - 1} positions, but the model has n_ctx={n_ctx}"
            " learned position embeddings. Lower max_new_tokens or shorten the prompt.")


def generate(
    model: Any,
    prompts: Any,
    *,
    interventions: Intervention | Mapping[str, Intervention | None] | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    max_rows: int | None = None,
    progress: bool = False,
    chat_template: bool | str | None = None,
) -> Result:
    """Continue every prompt, clean or under each intervention, exactly as if each prompt ran alone.

    Greedy decoding by default; ``do_sample=True`` samples from softmax(logits / temperature) with one generator
    per (seed, prompt id, intervention label), so a sample is reproducible and does not depend on the batch it
    ran in. An intervention acts on every forward: the prompt's and every generated token's. Generation of a row
    stops at EOS (not included in the response) or after ``max_new_tokens``. No paper: the standard autoregressive
    loop with a key/value cache, made exact under left padding and working around the bridge's cache bug (module
    doc).

    Args:
        model: an interp.Model or a TransformerBridge.
        prompts: a list of strings or dicts (with a ``prompt``), or a PromptSet.
        interventions: None (the clean model), one :class:`interp.Intervention`, or a mapping
            {label: Intervention or None (clean)} generated side by side as rows of the same batches.
        max_new_tokens: at most this many new tokens per prompt (>= 1).
        do_sample: sample instead of the argmax.
        temperature: the sampling temperature (> 0; used when ``do_sample``).
        seed: the seed of the sampling generators.
        batch_size: prompts per batch.
        max_rows: at most this many rows (prompt x intervention) per forward; None: from a memory budget.
        progress: show a progress bar over the batches.
        chat_template: wrap every prompt (True: the tokenizer's chat template; a string with ``{prompt}``).

    Returns:
        A Result whose table has one row per intervention x prompt (intervention-major, prompts in order):
        ``prompt_id``, ``intervention`` (the label), ``response`` (the decoded new text), ``n_new_tokens`` (int,
        EOS excluded); ``meta["schema"]`` declares keys (prompt_id, intervention) and value n_new_tokens, so
        ``top()`` and ``pivot()`` work. Cost: per batch one prefill of its rows plus one single-token forward per
        new token (KV cache), rows = prompts x interventions, chunked to ``max_rows``.
    """
    m = as_model(model)
    if isinstance(prompts, str):
        raise PromptError("A single string is not a prompt set: pass a list of prompts, e.g. [text] (or call "
                          "model.generate(text), which returns the generated text).")
    ps = PromptSet(prompts, chat_template=chat_template, tokenizer=m.tokenizer) if chat_template else \
        as_prompt_set(prompts)
    ivs = check_interventions(m, interventions)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    do_sample = _check_flag("do_sample", do_sample)
    temperature = check_positive_float("temperature", temperature)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ParameterError(f"seed must be an integer; got {seed!r}.")
    batch_size = check_positive_int("batch_size", batch_size)
    if max_rows is not None:
        max_rows = check_positive_int("max_rows", max_rows)
    progress = _check_flag("progress", progress)
    enc = encode(m, ps)
    _check_context(m, ps, enc.lengths, max_new_tokens)

    labels, values = list(ivs), list(ivs.values())
    rows_cap = max_rows if max_rows is not None else default_max_rows(m, max(enc.lengths) + max_new_tokens)
    bs = min(batch_size, rows_cap)
    texts: list[list[str]] = [[""] * len(ps) for _ in labels]
    n_tok: list[list[int]] = [[0] * len(ps) for _ in labels]
    n_batches = -(-len(ps) // bs)
    for batch in tqdm(batches(m, enc, bs), total=n_batches, desc="generate", disable=not progress):
        per_chunk = max(1, rows_cap // batch.size)
        for start in range(0, len(values), per_chunk):
            gens = generate_batch(m, batch, values[start:start + per_chunk], max_new_tokens=max_new_tokens,
                                  do_sample=do_sample, temperature=temperature, seed=seed,
                                  row_keys=[ps.ids[i] for i in batch.indices],
                                  labels=labels[start:start + per_chunk])
            for j, g in enumerate(gens):
                for r, idx in enumerate(batch.indices):
                    texts[start + j][idx] = g.texts[r]
                    n_tok[start + j][idx] = len(g.tokens[r])
    table = pd.DataFrame({
        "prompt_id": [pid for _ in labels for pid in ps.ids],
        "intervention": [label for label in labels for _ in ps.ids],
        "response": [t for per in texts for t in per],
        "n_new_tokens": [n for per in n_tok for n in per],
    })
    SCHEMA.check(table, where="generate")
    params = {"interventions": {label: None if iv is None else iv.label for label, iv in ivs.items()},
              "max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature, "seed": seed,
              "batch_size": batch_size, "max_rows": max_rows, "chat_template": chat_template}
    meta = make_meta("generate", m, ps, params, schema=SCHEMA.to_dict(), seed=seed,
                     intervention_params={label: iv.params for label, iv in ivs.items() if iv is not None})
    return Result(table, meta)
