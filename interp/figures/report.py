"""The demo report's building blocks: what a section builder gets (:class:`DemoContext`) and what it returns
(:class:`DemoSection`). Kept apart from :mod:`interp.figures.demo` (which assembles the page) and
:mod:`interp.figures.demo_sections` (one builder per method family), so neither imports the other's internals."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    """What a section builder gets: the organisms (loaded once, on first use), the corpus, the speed setting."""

    data_dir: Path
    quick: bool

    @cached_property
    def dense(self) -> Any:
        from ..model.loading import load_model

        return load_model(self.data_dir / "organisms" / "dense", device="cpu")

    @cached_property
    def moe(self) -> Any:
        from ..model.loading import load_model

        return load_model(self.data_dir / "organisms" / "moe", device="cpu")

    def prompts(self, family: str, *, n: int | None = None, **equals: Any) -> Any:
        """Held-out records of a corpus family (e.g. "factual", "safety", "composite"), optionally filtered."""
        from ..prompts import PromptSet

        path = self.data_dir / "organisms" / "corpus" / f"{family}.jsonl"
        ps = PromptSet(path).filter(split="heldout", **equals)
        return ps[:n] if n is not None and n < len(ps) else ps


@dataclass
class DemoSection:
    title: str
    explanation: str
    figures: list[Any] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)  # table name -> Result
