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

    def prompts(self, family: str, *, n: int | None = None, split: str = "heldout", **equals: Any) -> Any:
        """Records of a corpus family (e.g. "factual", "safety", "composite") in ``split`` ("heldout" by default,
        "train"), optionally filtered by field values."""
        from ..prompts import PromptSet

        path = self.data_dir / "organisms" / "corpus" / f"{family}.jsonl"
        ps = PromptSet(path).filter(split=split, **equals)
        return ps[:n] if n is not None and n < len(ps) else ps


@dataclass
class DemoFigure:
    """One figure of a section, with what it shows (``caption``: its numbers computed from the results, never
    typed) and, where the method mirrors a paper's figure, that figure described in words (``paper``)."""

    figure: Any
    caption: str = ""
    paper: str = ""


@dataclass
class DemoSection:
    """A report section: its title, a short explanation of the whole (the figures follow one another, top to
    bottom), the figures (a :class:`DemoFigure` each, or a bare plotly figure) and the tables to write."""

    title: str
    explanation: str
    figures: list[Any] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)  # table name -> Result

    @property
    def items(self) -> list[DemoFigure]:
        return [f if isinstance(f, DemoFigure) else DemoFigure(f) for f in self.figures]

    @property
    def methods(self) -> list[str]:
        """The registered methods whose results this section shows (from the results' own meta)."""
        return list(dict.fromkeys(str(r.meta.get("method")) for r in self.results.values()
                                  if r.meta.get("method")))
