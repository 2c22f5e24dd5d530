"""Clean / corrupt prompt pairs from the organisms' corpus, for patching."""

from __future__ import annotations

from typing import Any

from . import CORPUS_DIR
from .corpus import load_jsonl


def composite_pairs(model: Any, n: int, split: str | None = None) -> tuple[list[dict], list[dict]]:
    """``n`` pairs of composite N-shot prompts: the clean prompt, and the same demonstrations with another query of
    the same token length whose answer starts with another token (the usual patching setup of the internal
    chain-of-thought study). ``split``: only records of that split (None: all)."""
    from ..prompts import tokenize

    recs = [r for r in load_jsonl(CORPUS_DIR / "composite.jsonl")
            if r.get("kind") == "composite" and r.get("n_shot", 0) > 0 and split in (None, r["split"])]
    answers: dict[str, dict[str, str]] = {}
    for r in recs:
        answers.setdefault(r["task"], {})[r["subject"]] = r["target"]
    clean, corrupt = [], []
    for r in recs[:: max(1, len(recs) // (4 * n))]:
        n_tok = len(tokenize(model, r["prompt"]).ids)
        a_tok = tokenize(model, r["prompt"] + r["target"]).ids[n_tok]
        for x, y in answers[r["task"]].items():
            if x == r["subject"]:
                continue
            prompt = f"{r['demonstrations']}\n\nQ: {x}\nA:"
            ids = tokenize(model, prompt).ids
            if len(ids) == n_tok and tokenize(model, prompt + y).ids[n_tok] != a_tok:
                clean.append({"id": r["id"], "prompt": r["prompt"], "target": r["target"]})
                corrupt.append({"id": r["id"] + "/corrupt", "prompt": prompt, "target": y})
                break
        if len(clean) == n:
            break
    return clean, corrupt


def factual_pairs(model: Any, n: int, split: str | None = "heldout") -> tuple[list[dict], list[dict]]:
    """``n`` pairs of factual prompts: the same template and relation, another subject of the same token length
    whose answer starts with another token. Pairs are taken two by two from the largest (template, length)
    groups first. ``split``: only records of that split, if it has any (None: all)."""
    from ..prompts import tokenize

    def first_answer_token(prompt: str, target: str) -> int:
        return tokenize(model, prompt + target).ids[len(tokenize(model, prompt).ids)]

    every = load_jsonl(CORPUS_DIR / "factual.jsonl")
    recs = [r for r in every if split is not None and r.get("split") == split] or every
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in recs:
        template = r["prompt"].replace(r["subject"], "{}")
        groups.setdefault((template, len(tokenize(model, r["prompt"]).ids)), []).append(r)
    pairs = []
    for rs in sorted(groups.values(), key=len, reverse=True):
        for i in range(0, len(rs) - 1, 2):
            c, k = rs[i], rs[i + 1]
            if first_answer_token(c["prompt"], c["target"]) != first_answer_token(c["prompt"], k["target"]):
                pairs.append((c, k))
        if len(pairs) >= n:
            break
    pairs = pairs[:n]
    return [dict(c) for c, _ in pairs], [dict(k) for _, k in pairs]
