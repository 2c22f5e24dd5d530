"""Selective, hook-based activation capture, in memory or streamed to disk in safetensors shards.

``capture(model, prompts, hooks)`` caches only the hooks asked for, at the positions asked for, moves each batch
off the device as soon as it is read, and with ``to_dir`` writes one shard per batch so RAM stays bounded
whatever the number of prompts; :meth:`Capture.open` reopens such a directory.

With ``positions="all"`` or a span field the position axis is left-aligned and padded to the longest prompt (or
span). Padding can never pass for an activation: padded entries of floating tensors are NaN (integer and bool
tensors, e.g. MoE expert indices, pad with 0), and :attr:`Capture.mask` (True for real entries),
:attr:`Capture.lengths`, :meth:`Capture.last` and :meth:`Capture.get` say which entries are real. The same holds
for captures written with ``to_dir`` and reopened with :meth:`Capture.open`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import InterpError, ParameterError, PromptError, check_positive_int
from ..model.loading import as_model
from ..prompts import EncodedSet, as_prompt_set, batches, encode
from ..results.atomic import atomic_path
from .hooks import check_hook_names, hook_layer
from .sites import hook_name
from .variants import forward

POSITION_MODES = ("last", "all")


class Capture:
    """Cached activations: ``cap["blocks.3.hook_resid_post"]`` is a tensor [n_prompts, (positions,) ...].

    With ``positions="last"`` there is no position axis (row i is prompt i's last real token). With
    ``positions="all"`` or a field name, the position axis is left-aligned (index p is the prompt's p-th token,
    or the span's p-th token) and padded to the longest: ``lengths[i]`` real entries, then padding, which is NaN
    for floating tensors (0 for integer / bool ones), so ``cap[name][i, lengths[i]:]`` never looks like an
    activation. ``mask`` [n_prompts, positions] is True on real entries; :meth:`last` gives every prompt's last
    real entry [n_prompts, ...] (for "all", what ``positions="last"`` captures); :meth:`get` / :meth:`prompt`
    give one prompt's unpadded slice [lengths[i], ...].
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor] | None,
        *,
        names: list[str],
        prompt_ids: list[str],
        positions: str,
        lengths: list[int] | None,
        directory: Path | None = None,
        model_name: str = "",
    ):
        self._data = data
        self.names = names
        self.prompt_ids = prompt_ids
        self.positions = positions
        self.lengths = lengths
        self.directory = directory
        self.model_name = model_name

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            from ..errors import unknown_hook_error

            raise unknown_hook_error(name, self.names)
        if self._data is not None:
            return self._data[name]
        return self._load(name)

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def keys(self) -> list[str]:
        return list(self.names)

    @property
    def padded(self) -> bool:
        """True when the tensors carry a padded position axis (``positions="all"`` or a span field)."""
        return self.lengths is not None

    @property
    def mask(self) -> torch.Tensor | None:
        """Bool [n_prompts, positions]: True where an entry is a real token (row i: its first ``lengths[i]``);
        None for ``positions="last"`` (no position axis, nothing padded)."""
        if self.lengths is None:
            return None
        lengths = torch.tensor(self.lengths, dtype=torch.long)
        width = int(lengths.max()) if len(lengths) else 0
        return torch.arange(width)[None, :] < lengths[:, None]

    def last(self, name: str) -> torch.Tensor:
        """Every prompt's last real entry of ``name`` [n_prompts, ...]: for ``positions="all"`` the last token
        (equal to what ``positions="last"`` captures), for a span field the span's last token; for
        ``positions="last"`` the tensor itself."""
        value = self[name]
        if self.lengths is None:
            return value
        idx = torch.tensor(self.lengths, dtype=torch.long) - 1
        return value[torch.arange(len(idx)), idx]

    def _index(self, index: int | str) -> int:
        if isinstance(index, str):
            if index not in self.prompt_ids:
                from ..errors import close_matches

                near = close_matches(index, self.prompt_ids)
                hint = f" Close matches: {', '.join(near)}." if near else ""
                raise PromptError(f"No prompt with id {index!r} in this capture.{hint}")
            return self.prompt_ids.index(index)
        if isinstance(index, bool) or not isinstance(index, int) or not -len(self) <= index < len(self):
            raise ParameterError(f"Prompt index {index!r} is not an integer in [0, {len(self)}).")
        return index % len(self)

    def get(self, name: str, index: int | str) -> torch.Tensor:
        """Prompt ``index``'s (an index, or a prompt id) unpadded value of ``name``: [lengths[i], ...] for
        ``positions="all"`` or a span field (no padding entry), [...] for ``positions="last"``."""
        i = self._index(index)
        value = self[name][i]
        if self.lengths is not None:
            value = value[: self.lengths[i]]
        return value

    def prompt(self, name: str, index: int | str) -> torch.Tensor:
        """The same as :meth:`get`: prompt ``index``'s (an index or a prompt id) unpadded value of ``name``."""
        return self.get(name, index)

    def head_outputs(self, model: Any, layer: int) -> torch.Tensor:
        """Per-head outputs z_h W_O[h] at ``layer`` [n, (pos,) n_heads, d_model], computed from the cached hook_z
        (never cached themselves)."""
        return head_outputs(model, self[hook_name("z", layer)], layer)

    def __repr__(self) -> str:
        where = f", on disk at {self.directory}" if self.directory else ""
        return f"Capture({len(self)} prompts, {len(self.names)} hooks, positions={self.positions!r}{where})"

    # --- disk ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path) -> Capture:
        """Reopen a capture written with ``to_dir``. Only files inside ``directory`` are ever read: an index naming
        a path outside it (``../``, an absolute path) is refused."""
        directory = Path(directory)
        index = _read_index(directory)
        return cls(
            None,
            names=index["names"],
            prompt_ids=index["prompt_ids"],
            positions=index["positions"],
            lengths=index["lengths"],
            directory=directory,
            model_name=index.get("model", ""),
        )

    def _load(self, name: str) -> torch.Tensor:
        index = _read_index(self.directory)
        parts, rows = [], []
        for shard in index["shards"]:
            tensors = load_file(str(_shard_file(self.directory, shard["file"])))
            parts.append(tensors[name])
            rows.extend(shard["rows"])
        return _assemble(parts, rows, len(self.prompt_ids), self.lengths)


class CaptureFileError(InterpError):
    """A capture directory whose index cannot be trusted (missing, unreadable, or naming files outside it)."""


def _read_index(directory: Path) -> dict:
    index_path = directory / "index.json"
    if not index_path.exists():
        raise CaptureFileError(f"{str(directory)!r} holds no capture (index.json is missing).")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptureFileError(f"{str(index_path)!r} is not valid JSON ({exc}).") from exc
    for shard in index.get("shards", []):
        _shard_file(directory, shard.get("file", ""))
    return index


def _shard_file(directory: Path, name: Any) -> Path:
    """The shard's path, refused unless it is a plain file name inside ``directory``."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise CaptureFileError(f"{str(directory / 'index.json')!r} names the shard {name!r}, which is not a file "
                               "inside the capture directory; it is not read.")
    return directory / name


def _publish_index(directory: Path, index: dict) -> None:
    """Swap the new index in atomically, then remove the shards of the capture it replaced (files this function's
    captures wrote: named in the old index, or left by an interrupted capture under the shard_ pattern)."""
    from ..results.atomic import write_text

    old = None
    if (directory / "index.json").exists():
        with contextlib.suppress(CaptureFileError):
            old = _read_index(directory)
    write_text(directory / "index.json", json.dumps(index))
    keep = {s["file"] for s in index["shards"]}
    stale = {s["file"] for s in (old or {}).get("shards", [])}
    stale |= {p.name for p in directory.glob("shard_*.safetensors")}
    for name in stale - keep:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def head_outputs(model: Any, z: torch.Tensor, layer: int) -> torch.Tensor:
    """z [..., n_heads, d_head] -> each head's output z_h W_O[h] [..., n_heads, d_model] (no bias)."""
    w_o = as_model(model).bridge.blocks[layer].attn.W_O  # [n_heads, d_head, d_model]
    return torch.einsum("...hd,hdm->...hm", z.to(w_o.dtype).to(w_o.device), w_o).to(z.device)


def _resolve_names(model: Any, hooks: Sequence[str] | str | Callable[[str], bool]) -> list[str]:
    m = as_model(model)
    if callable(hooks):
        names = [n for n in m.hook_names if hooks(n)]
        if not names:
            raise ParameterError("The hook filter matches no hook of this model.")
        return names
    if isinstance(hooks, str):
        hooks = [hooks]
    names = list(hooks)
    if not names:
        raise ParameterError("No hooks asked for: name at least one hook (or give a filter function).")
    return check_hook_names(m, names)


def _to_batch_positions(value: torch.Tensor, bsz: int, width: int) -> torch.Tensor:
    """Hooks that flatten tokens ([B*T, ...], e.g. MoE routing) back to [B, T, ...]."""
    if value.shape[0] == bsz * width and (value.dim() < 2 or value.shape[0] != bsz or value.shape[1] != width):
        return value.reshape(bsz, width, *value.shape[1:])
    return value


class _Writer:
    """Writes shards on a background thread, so a batch's file write overlaps the next batch's forward. Each job
    waits for its device-to-host copies (a CUDA event) before reading the tensors, and writes atomically
    (interp.results.atomic). An error in the thread is raised in the caller at its next :meth:`submit` or at
    :meth:`close`; the queue holds at most two batches, so host memory stays bounded."""

    def __init__(self) -> None:
        import queue
        import threading

        self._queue: Any = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="interp-capture-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure the rest is drained, not written
                    path, tensors, event = job
                    if event is not None:
                        event.synchronize()
                    with atomic_path(path) as tmp:
                        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp))
            except BaseException as exc:  # handed to the caller
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, path: Path, tensors: dict[str, torch.Tensor], event: Any) -> None:
        self._raise()
        self._queue.put((path, tensors, event))

    def close(self, *, raise_error: bool = True) -> None:
        """Wait until every submitted shard is written (or the thread failed); re-raise its error."""
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()


class _Assembler:
    """The in-memory result of a capture: one preallocated tensor per hook [n_prompts, (positions,) ...], filled
    with the padding value, into which each batch's rows are copied in place (no concatenation, no second
    full-size copy)."""

    def __init__(self, n: int, lengths: list[int] | None):
        self.n, self.lengths = n, lengths
        self.width = max(lengths) if lengths else 0
        self.data: dict[str, torch.Tensor] = {}

    def add(self, name: str, part: torch.Tensor, rows: Sequence[int]) -> None:
        out = self.data.get(name)
        if out is None:
            shape = (self.n, self.width, *part.shape[2:]) if self.lengths is not None else (self.n, *part.shape[1:])
            out = self.data[name] = torch.full(shape, _pad_value(part.dtype), dtype=part.dtype)
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        if self.lengths is not None:
            w = min(part.shape[1], self.width)
            out[idx, :w] = part[:, :w]
        else:
            out[idx] = part

    def result(self, name: str) -> torch.Tensor:
        out = self.data[name]
        if self.lengths is not None:  # padding is the padding value, whatever a part held there
            real = torch.arange(out.shape[1])[None, :] < torch.tensor(self.lengths, dtype=torch.long)[:, None]
            out[~real] = _pad_value(out.dtype)
        return out


def _left_aligned(value: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of ``value`` [B, T, ...] read from column ``starts[r]`` for ``lengths[r]`` entries into [B, width,
    ...], the rest the padding value; one gather on the tensor's own device (exact: entries are copied)."""
    cols = torch.arange(width, device=value.device)
    idx = (starts.to(value.device)[:, None] + cols[None, :]).clamp(max=value.shape[1] - 1)
    out = value[torch.arange(value.shape[0], device=value.device)[:, None], idx]
    pad = cols[None, :] >= lengths.to(value.device)[:, None]
    if bool(pad.any()):
        out[pad] = _pad_value(out.dtype)
    return out


def capture(
    model: Any,
    prompts: Any,
    hooks: Sequence[str] | str | Callable[[str], bool],
    *,
    positions: str = "last",
    batch_size: int = 16,
    dtype: torch.dtype | None = None,
    to_dir: str | Path | None = None,
    progress: bool = True,
) -> Capture:
    """Cache the named hooks (or those a filter accepts) for every prompt.

    ``positions``: "last" (the last real token), "all" (every token) or a field name (that field's token span,
    e.g. "subject"). Cost: one forward per batch (stopped early after the deepest hook asked for when only one
    hook sits at that depth); memory: only the asked-for values, in one preallocated tensor per hook, or
    streamed to disk (one shard per batch, written on a background thread).

    On a CUDA device the selected values are copied to pinned host memory without blocking inside the hooks;
    a batch's copies are waited for (its CUDA event) only when its values are placed or written, after the next
    batch's forward has been queued.
    """
    m = as_model(model)
    names = _resolve_names(m, hooks)
    check_positive_int("batch_size", batch_size)
    ps = as_prompt_set(prompts)
    span_field = None
    if positions not in POSITION_MODES:
        if positions not in ps.fields:
            raise PromptError(
                f"positions={positions!r} is neither 'last', 'all' nor a field of the prompts ({', '.join(ps.fields)})."
            )
        span_field = positions
    encoded: EncodedSet = encode(m, ps, spans=[span_field] if span_field else [])
    directory = Path(to_dir) if to_dir is not None else None
    run_token = os.urandom(4).hex()  # this capture's shard names: an earlier capture's stay valid until the swap
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)

    layers = [hook_layer(n) for n in names]
    deepest = max(layers)
    stop_after = names[layers.index(deepest)] if layers.count(deepest) == 1 and deepest < 10**9 else None

    if positions == "last":
        lengths: list[int] | None = None
    elif positions == "all":
        lengths = [len(item) for item in encoded.items]
    else:
        lengths = [e - s for s, e in encoded.spans[span_field]]
    cuda = torch.device(m.device).type == "cuda"
    assembler = _Assembler(len(ps), lengths) if directory is None else None
    writer = _Writer() if directory is not None else None
    shards: list[dict[str, Any]] = []
    pending: tuple[int, list[int], dict[str, torch.Tensor], Any] | None = None

    def consume(job: tuple[int, list[int], dict[str, torch.Tensor], Any]) -> None:
        k, rows, values, event = job
        if writer is not None:
            file = f"shard_{run_token}_{k:06d}.safetensors"
            writer.submit(directory / file, values, event)  # type: ignore[operator]
            shards.append({"file": file, "rows": rows})
            return
        if event is not None:
            event.synchronize()
        for n in names:
            assembler.add(n, values[n], rows)  # type: ignore[union-attr]

    n_batches = (len(ps) + batch_size - 1) // batch_size
    try:
        for k, batch in enumerate(tqdm(batches(m, encoded, batch_size), total=n_batches, desc="capture",
                                       disable=not progress)):
            bsz, width = batch.size, batch.width
            starts = real = None
            longest = 0
            if positions == "all":
                starts, real, longest = batch.offsets, batch.lengths, width
            elif span_field:
                spans = batch.spans[span_field]
                starts = torch.tensor([s for s, _ in spans], dtype=torch.long)
                real = torch.tensor([e - s for s, e in spans], dtype=torch.long)
                longest = int(real.max()) if len(real) else 0

            def select(name: str, value: torch.Tensor, bsz=bsz, width=width, starts=starts, real=real,
                       longest=longest) -> torch.Tensor:
                value = _to_batch_positions(value, bsz, width).detach()
                if positions == "last":
                    out = value[:, -1]
                else:  # left-aligned (a span: from its first token), padded past each row's length
                    out = _left_aligned(value, starts, real, longest)
                if dtype is not None:
                    out = out.to(dtype)
                if out.device.type != "cuda":
                    return out.to("cpu")
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                host.copy_(out, non_blocking=True)  # queued after the kernels that made it; the hook does not wait
                return host

            _, store = forward(m, batch, (), read=names, read_fn=select, logits=None, stop_after=stop_after)
            event = None
            if cuda:
                event = torch.cuda.Event()
                event.record()
            if pending is not None:
                consume(pending)
            pending = (k, list(batch.indices), {n: store[n] for n in names}, event)
        if pending is not None:
            consume(pending)
            pending = None
    except BaseException:
        if writer is not None:
            writer.close(raise_error=False)
        raise
    if writer is not None:
        writer.close()

    index = {
        "names": names,
        "prompt_ids": ps.ids,
        "positions": positions,
        "lengths": lengths,
        "model": m.name,
        "shards": shards,
    }
    if directory is not None:
        _publish_index(directory, index)
        return Capture.open(directory)
    data = {n: assembler.result(n) for n in names}  # type: ignore[union-attr]
    return Capture(data, names=names, prompt_ids=ps.ids, positions=positions, lengths=lengths, model_name=m.name)


def _pad_value(dtype: torch.dtype) -> float | int | bool:
    """What fills padded entries: NaN for floating tensors (never mistaken for an activation), else 0."""
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    return False if dtype == torch.bool else 0


def _assemble(parts: list[torch.Tensor], rows: list[int], n: int, lengths: list[int] | None) -> torch.Tensor:
    """Batch parts (read back from shards) placed into one preallocated tensor in prompt order; every entry past
    a row's length is the padding value (also in shards written before padding was NaN)."""
    out = _Assembler(n, lengths)
    start = 0
    for p in parts:
        out.add("x", p, rows[start:start + p.shape[0]])
        start += p.shape[0]
    if "x" not in out.data:  # no prompt at all
        return torch.empty(0)
    return out.result("x")
