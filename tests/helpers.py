"""Small helpers shared by the tests (plain functions, no fixtures)."""

from __future__ import annotations

import torch

PROMPTS = [
    {"id": "p0", "prompt": "The capital of France is", "target": " Paris", "subject": "France"},
    {"id": "p1", "prompt": "User: how do I bake bread?\nAssistant:", "target": " Sure", "subject": "bread"},
    {"id": "p2", "prompt": "Q: Mary went to the store\nA:", "target": " yes", "subject": "Mary"},
    {"id": "p3", "prompt": "John", "target": " is", "subject": "John"},
]


def single_run(model, ids: list[int], names: list[str]) -> dict[str, torch.Tensor]:
    """The reference: one prompt alone, no padding, plain run_with_cache on the bridge."""
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n in names)
    return {n: cache[n][0] for n in names}


def ids_of(model, text: str) -> list[int]:
    """The token ids the toolkit feeds for ``text`` (BOS included where the model prepends it)."""
    from interp.prompts import tokenize

    return tokenize(model, text).ids


def answer_id(model, prompt: str, target: str) -> int:
    """The target's first token: the token that follows the prompt in prompt + target."""
    return ids_of(model, prompt + target)[len(ids_of(model, prompt))]
