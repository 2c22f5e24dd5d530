"""Inputs for check runs of registered methods: small prompt sets from the organisms' held-out corpus.

The contract tests (``tests/test_contract.py``) run every registered method through :func:`check_call`: the
prompts of the kind its entry declares (``corpus``), a clean / corrupt pair for pair methods, and the cheap
parameters its entry declares (``example``). The same prompts serve the tiny random fixtures and the shipped
organisms, so a method that joins the registry is checked with nothing else written.
"""

from __future__ import annotations

from typing import Any

from ..organisms import CORPUS_DIR

CORPORA = ("factual", "safety", "composite", "subtasks")
_cache: dict[str, list[dict]] = {}


def _records(file: str) -> list[dict]:
    if file not in _cache:
        from ..organisms.corpus import load_jsonl

        _cache[file] = load_jsonl(CORPUS_DIR / file)
    return _cache[file]


def corpus_prompts(kind: str, n: int = 4) -> list[dict[str, Any]]:
    """``n`` held-out prompts of one kind, spread over tasks (two per task where there are enough):

    - ``factual``: facts with subject, relation, target and task;
    - ``safety``: chat requests, harmful and harmless alternately, with their label;
    - ``composite``: 5-shot composite-task prompts with demonstrations and the y_t / y_s1 / y_s2 targets;
    - ``subtasks``: 5-shot s1 and s2 subtask prompts with demonstrations (cross-task patching's held-out set).
    """
    from ..errors import ParameterError

    if kind not in CORPORA:
        raise ParameterError(f"corpus={kind!r} is not one of {', '.join(CORPORA)}.")
    if kind == "factual":
        recs = [r for r in _records("factual.jsonl") if r["split"] == "heldout" and r["template"] == 0]
    elif kind == "safety":
        harmful = [r for r in _records("safety.jsonl") if r["split"] == "heldout" and r["label"] == "harmful"]
        harmless = [r for r in _records("safety.jsonl") if r["split"] == "heldout" and r["label"] == "harmless"]
        recs = [r for pair in zip(harmful, harmless) for r in pair]
        return [_clean(r) for r in recs[:n]]
    elif kind == "composite":
        recs = [r for r in _records("composite.jsonl")
                if r["kind"] == "composite" and r["split"] == "heldout" and r["n_shot"] == 5]
    else:
        recs = [r for r in _records("composite.jsonl")
                if r["kind"] in ("s1", "s2") and r["split"] == "heldout" and r["n_shot"] == 5]
    by_task: dict[str, list[dict]] = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)
    out: list[dict] = []
    while len(out) < n and any(by_task.values()):
        for task in list(by_task):
            take, by_task[task] = by_task[task][:2], by_task[task][2:]
            out.extend(take)
            if len(out) >= n:
                break
    return [_clean(r) for r in out[:n]]


def _clean(record: dict) -> dict:
    """A corpus record as a prompt record: no null fields, no lists."""
    return {k: v for k, v in record.items() if v is not None and not isinstance(v, list)}


def pair_prompts(model: Any, kind: str, n: int = 4) -> tuple[list[dict], list[dict]]:
    """``n`` clean / corrupt pairs of equal token length whose answers start with different tokens (factual:
    another subject of the same template; composite: another query under the same demonstrations)."""
    from ..organisms.pairs import composite_pairs, factual_pairs

    if kind == "composite":
        return composite_pairs(model, n, split="heldout")
    return factual_pairs(model, n)


def check_call(entry: Any, model: Any, n: int = 4) -> tuple[tuple, dict[str, Any]]:
    """The positional inputs (after the model) and keyword parameters of a cheap check run of ``entry``."""
    if entry.inputs == "pair":
        clean, corrupt = pair_prompts(model, entry.corpus, n)
        return (clean, corrupt), entry.example_parameters(model, clean)
    prompts = corpus_prompts(entry.corpus, n)
    return (prompts,), entry.example_parameters(model, prompts)
