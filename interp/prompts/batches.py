"""Exact left-padded batches: attention mask, position ids from the mask, the last real token at column T - 1,
spans and target ids carried along."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .tokens import EncodedSet


@dataclass
class Batch:
    """Left-padded rows of prompts. Position p of row i sits at column ``p + offsets[i]``; the last real token
    of every row is column ``T - 1``."""

    indices: list[int]  # positions of these rows in the prompt set
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # padded coordinates
    targets: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] token ids

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    @property
    def offsets(self) -> torch.Tensor:
        return self.width - self.lengths

    @property
    def last(self) -> int:
        return self.width - 1

    def to(self, device: Any) -> Batch:
        return Batch(
            indices=self.indices,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            position_ids=self.position_ids.to(device),
            lengths=self.lengths,
            spans=self.spans,
            targets={k: v.to(device) for k, v in self.targets.items()},
        )

    def repeat(self, k: int) -> Batch:
        """The batch stacked k times (row r of copy j is row j * B + r): the layout of the variants engine."""
        return Batch(
            indices=self.indices * k,
            input_ids=self.input_ids.repeat(k, 1),
            attention_mask=self.attention_mask.repeat(k, 1),
            position_ids=self.position_ids.repeat(k, 1),
            lengths=self.lengths.repeat(k),
            spans={n: s * k for n, s in self.spans.items()},
            targets={n: t.repeat(k) for n, t in self.targets.items()},
        )


def make_batch(model: Any, encoded: EncodedSet, indices: Sequence[int]) -> Batch:
    """Left-pad the chosen prompts into one batch; position ids come from the attention mask."""
    items = [encoded.items[i] for i in indices]
    width = max(len(e) for e in items)
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0
    ids = torch.full((len(items), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        ids[row, width - len(e):] = torch.tensor(e.ids, dtype=torch.long)
        mask[row, width - len(e):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    lengths = torch.tensor([len(e) for e in items], dtype=torch.long)
    spans = {
        name: [(s + width - len(e), t + width - len(e)) for (s, t), e in zip((sp[i] for i in indices), items)]
        for name, sp in encoded.spans.items()
    }
    targets = {name: torch.tensor([t[i] for i in indices], dtype=torch.long) for name, t in encoded.targets.items()}
    return Batch(list(indices), ids, mask, positions, lengths, spans, targets)


def batches(model: Any, encoded: EncodedSet, batch_size: int, *, sort_by_length: bool = True) -> Iterator[Batch]:
    """Yield batches covering every prompt once. Sorting by length only cuts padding: results are the same."""
    order = list(range(len(encoded)))
    if sort_by_length:
        order.sort(key=lambda i: len(encoded.items[i]))
    for start in range(0, len(order), batch_size):
        yield make_batch(model, encoded, order[start:start + batch_size])
