"""What a Result records about where it came from: the model (absolute path, weights fingerprint, dtype,
device), the seed, and the versions of the packages that computed it (read from installed metadata)."""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from typing import Any

import torch

PACKAGES = {"interp": "interp", "torch": "torch", "transformers": "transformers",
            "transformer_lens": "transformer-lens"}


@functools.cache
def package_version(dist: str) -> str:
    """The installed version of a distribution (``"not installed"`` when it is absent). Read once per process:
    reading the installed metadata takes milliseconds (it parses the package's METADATA file), and every Result
    records four versions, which made up a third of a small attribution-patching call."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {f"{k}_version": package_version(v) for k, v in PACKAGES.items()}


def model_fingerprint(model: Any) -> str:
    """A hash of the model's config and weights (a sum and a sample of every tensor: cheap, and it changes with
    any retraining, edit or other checkpoint). Cached per model until a weight tensor is modified in place."""
    from ..model.loading import as_model

    m = as_model(model)
    params = list(m.hf_model.named_parameters())
    key = tuple((p.data_ptr(), p._version) for _, p in params)
    cached = getattr(m, "_fingerprint_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(json.dumps(m.hf_model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in params:
            flat = p.detach().reshape(-1)
            h.update(f"{name}{tuple(p.shape)}{flat.double().sum().item():.10e}".encode())
            h.update(flat[:: max(1, flat.numel() // 64)][:64].double().cpu().numpy().tobytes())
    digest = h.hexdigest()[:16]
    try:
        object.__setattr__(m, "_fingerprint_cache", (key, digest))
    except Exception:  # pragma: no cover - a model object that takes no attributes: just do not cache
        pass
    return digest


def provenance(model: Any, *, seed: Any = None) -> dict[str, Any]:
    """The provenance fields of a Result's meta for a run on ``model``."""
    from ..model.loading import as_model

    m = as_model(model)
    out: dict[str, Any] = {
        "model": m.name,
        "model_path": m.path,
        "architecture": m.info.architecture,
        "dtype": str(m.dtype).removeprefix("torch."),
        "device": str(m.device),
        "weights_fingerprint": model_fingerprint(m),
        "prepend_bos": m.prepend_bos,  # what tokenisation did: load_model(prepend_bos=), else the bridge default
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    }
    out.update(versions())
    return out
