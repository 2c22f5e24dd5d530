"""Stage checkpoints: the finished stages of one long dataset-level computation, saved as it goes.

Some statistics need the whole prompt set at every stage (Sahara's greedy step scores every candidate head over all
prompts; cross-task patching needs each composite's mean task vector before any subtask is patched), so they
cannot be split into prompt shards. They resume by stage instead: each finished stage is written atomically
(a temporary name, then a rename) to the checkpoint directory, and a rerun with the same arguments loads the
stages that are there and computes only the rest. :func:`interp.run_resumable` passes the directory as the shard
input ``checkpoint_dir`` (its manifest guarding against a changed argument, model or dataset); research code that
wants a directory of its own sets it with ``interp.methods.registry.shard_inputs(checkpoint_dir=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..results.result import Result


class StageCheckpoints:
    """Saved stages under ``directory`` (None: nothing is saved or loaded)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str, suffix: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{name}{suffix}"

    def load_result(self, name: str) -> Result | None:
        if self.directory is None or not self._path(name, ".parquet").exists():
            return None
        return Result.read(self._path(name, ".parquet"))

    def save_result(self, name: str, result: Result) -> None:
        if self.directory is None:
            return
        tmp = self._path(f".{name}.tmp", ".parquet")
        result.to_parquet(tmp)
        os.replace(tmp, self._path(name, ".parquet"))

    def load_tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        if self.directory is None or not self._path(name, ".safetensors").exists():
            return None
        from safetensors.torch import load_file

        return load_file(str(self._path(name, ".safetensors")))

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.directory is None:
            return
        from safetensors.torch import save_file

        tmp = self._path(f".{name}.tmp", ".safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, self._path(name, ".safetensors"))
