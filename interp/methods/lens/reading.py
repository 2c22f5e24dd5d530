"""Reading the residual stream for the lens: which token positions of a batch are decoded, and one forward
(stopped after the final norm) that keeps only the sites asked for, at those positions only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...activations.sites import FINAL_NORMED
from ...activations.variants import forward
from ...errors import ParameterError, PromptError
from ...model.loading import Model
from ...prompts import EncodedSet, PromptSet

POSITION_MODES = ("last", "all")
Positions = str | tuple[int, ...]


def check_positions(ps: PromptSet, positions: Any) -> Positions:
    """``positions`` as the lens reads it: "last", "all", the name of a prompt field (its token span), or a
    non-empty list of distinct 0-based positions (returned sorted, as a tuple)."""
    if isinstance(positions, str):
        if positions in POSITION_MODES or positions in ps.fields:
            return positions
        raise PromptError(f"positions={positions!r} is neither 'last', 'all', a list of positions nor a field of "
                          f"the prompts ({', '.join(ps.fields)}).")
    if isinstance(positions, Sequence) and positions and all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions):
        if len(set(positions)) != len(positions):
            raise ParameterError(f"positions={list(positions)!r} names a position twice.")
        return tuple(sorted(int(p) for p in positions))
    raise ParameterError(f"positions={positions!r} must be 'last', 'all', a prompt field or a non-empty list of "
                         "0-based token positions (integers >= 0).")


def check_positions_fit(enc: EncodedSet, positions: Positions) -> None:
    """Refuse, naming the prompt, a list of positions beyond a prompt's length (before any forward)."""
    if isinstance(positions, str):
        return
    for item, pid in zip(enc.items, enc.prompts.ids):
        if positions[-1] >= len(item):
            raise PromptError(f"positions={list(positions)!r}: prompt {pid!r} has {len(item)} tokens (positions are "
                              "0-based, BOS included).")


def select(batch: Any, positions: Positions) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the batch's positions to decode, in row-major order (padding never selected)."""
    bsz, width = batch.size, batch.width
    if positions == "last":
        return torch.arange(bsz), torch.full((bsz,), width - 1, dtype=torch.long)
    if positions == "all":
        rows, cols = batch.attention_mask.cpu().bool().nonzero(as_tuple=True)
        return rows, cols
    if isinstance(positions, str):  # a field's token span
        pairs = [(r, c) for r, (s, e) in enumerate(batch.spans[positions]) for c in range(s, e)]
    else:
        offsets = batch.offsets.tolist()
        pairs = [(r, offsets[r] + p) for r in range(bsz) for p in positions]
    rows = torch.tensor([r for r, _ in pairs], dtype=torch.long)
    cols = torch.tensor([c for _, c in pairs], dtype=torch.long)
    return rows, cols


def read(m: Model, batch: Any, names: list[str], rows: torch.Tensor, cols: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward of the batch (stopped after the final norm) keeping the hooks ``names`` at the selected
    positions ([N, d_model] each), plus the final norm's output there (under ``sites.FINAL_NORMED``)."""
    r, c = rows.to(m.device), cols.to(m.device)
    bsz, width = batch.size, batch.width

    def keep(_name: str, value: torch.Tensor) -> torch.Tensor:
        if value.dim() == 2 and value.shape[0] == bsz * width:  # a hook that flattens tokens
            value = value.reshape(bsz, width, -1)
        return value[r, c]

    wanted = list(dict.fromkeys([*names, FINAL_NORMED]))
    _, store = forward(m, batch, (), read=wanted, read_fn=keep, logits=None, stop_after=FINAL_NORMED)
    return store
