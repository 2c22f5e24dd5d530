"""Bad inputs of the tuned lens's checkpoint layouts (interp's and tuned-lens's config.json + params.pt), collected
by tests/test_bad_input.py."""

import json

import torch

from interp.errors import ParameterError
from interp.methods.lens import TunedLens


def _checkpoint(m, t, *, config=None, state=None, extra_layers=0):
    """A tuned-lens checkpoint directory under t, with the given config fields / state dict changes."""
    d, n = m.info.d_model, m.info.n_layers + extra_layers
    directory = t / "ckpt"
    directory.mkdir(exist_ok=True)
    cfg = {"base_model_name_or_path": "x", "d_model": d, "num_hidden_layers": n, "bias": True,
           "base_model_revision": None, "unembed_hash": None, "lens_type": "linear_tuned_lens", **(config or {})}
    (directory / "config.json").write_text(json.dumps(cfg))
    full = {f"{i}.{k}": torch.zeros((d, d) if k == "weight" else (d,)) for i in range(n) for k in ("weight", "bias")}
    if state is not None:
        full = state(full)
    if full is not None:
        torch.save(full, directory / "params.pt")
    return directory


def _without(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


CASES = [
    ("tuned-lens layout of a resid_mid lens",
     lambda m, t, d: TunedLens.identity(m, site="resid_mid").save(t / "x", layout="tuned-lens"), ParameterError,
     "tuned-lens translates resid_pre .*'resid_mid', which has no tuned-lens counterpart"),
    ("unknown checkpoint layout", lambda m, t, d: TunedLens.identity(m).save(t / "x", layout="hf"), ParameterError,
     "layout"),
    ("tuned-lens checkpoint without params.pt", lambda m, t, d: TunedLens.load(_checkpoint(m, t, state=lambda s: None)),
     ParameterError, "params.pt is missing"),
    ("tuned-lens checkpoint missing a translator", lambda m, t, d: TunedLens.load(
        _checkpoint(m, t, state=_without("1.weight"))), ParameterError, "lacks 1.weight"),
    ("tuned-lens checkpoint of another width", lambda m, t, d: TunedLens.load(
        _checkpoint(m, t, config={"d_model": m.info.d_model + 1})), ParameterError, "has shape .* needs"),
    ("tuned-lens checkpoint with an extra layer", lambda m, t, d: TunedLens.load(
        _checkpoint(m, t, state=lambda s: {**s, f"{m.info.n_layers}.weight": s["0.weight"]})), ParameterError,
     "unexpected entry"),
    ("tuned-lens checkpoint of another lens type", lambda m, t, d: TunedLens.load(
        _checkpoint(m, t, config={"lens_type": "mlp_tuned_lens"})), ParameterError, "lens_type 'mlp_tuned_lens'"),
    ("tuned-lens checkpoint loaded at resid_mid", lambda m, t, d: TunedLens.load(_checkpoint(m, t), site="resid_mid"),
     ParameterError, "site='resid_mid': a tuned-lens checkpoint loads as 'resid_pre'"),
    ("tuned-lens checkpoint with no layers", lambda m, t, d: TunedLens.load(
        _checkpoint(m, t, config={"num_hidden_layers": 0})), ParameterError, "num_hidden_layers must be a positive"),
    ("tuned-lens checkpoint for another model", lambda m, t, d: TunedLens.load(
        _checkpoint(m, t, extra_layers=1), model=m), ParameterError,
     "this tuned lens has .* layers"),
    ("interp layout saved over a tuned-lens checkpoint", lambda m, t, d: TunedLens.identity(m).save(_checkpoint(m, t)),
     ParameterError, "holds a tuned-lens checkpoint"),
]
