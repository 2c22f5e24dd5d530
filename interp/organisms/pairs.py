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
