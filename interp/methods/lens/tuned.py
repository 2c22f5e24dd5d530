"""The tuned lens (Belrose et al., "Eliciting Latent Predictions from Transformers with the Tuned Lens", arXiv
2303.08112, 2023): one affine translator per layer, trained so that decoding the translated residual through the
frozen final norm and unembedding matches the model's own next-token distribution. Decode with it through
``logit_lens(..., lens=...)``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...activations.sites import FINAL_NORMED, RESIDUAL, hook_name
from ...errors import ParameterError, check_positive_float, check_positive_int
from ...model.decode import decode, final_norm_module, unembed
from ...model.loading import as_model
from ...prompts import as_prompt_set, batches, encode
from .. import metrics
from . import reading


class TunedLens(torch.nn.Module):
    """One affine translator per layer, ``T_l(h) = h + A_l h + b_l`` (A, b zero at init: the identity), applied to
    the residual at ``site`` before the (frozen) final norm and unembedding. Belrose et al. 2023.

    ``info`` holds the model's name and shape, the training parameters and the per-step training loss
    (``info["history"]``: mean KL(p_final || p_lens) per layer on each step's tokens, nats).
    """

    def __init__(self, n_layers: int, d_model: int, *, site: str = "resid_post", info: dict | None = None):
        super().__init__()
        check_positive_int("n_layers", n_layers)
        check_positive_int("d_model", d_model)
        if site not in RESIDUAL:
            raise ParameterError(f"A tuned lens translates a residual site ({', '.join(RESIDUAL)}); got site={site!r}.")
        self.n_layers, self.d_model, self.site = int(n_layers), int(d_model), site
        self.weight = torch.nn.Parameter(torch.zeros(n_layers, d_model, d_model))
        self.bias = torch.nn.Parameter(torch.zeros(n_layers, d_model))
        self.info: dict[str, Any] = dict(info or {})

    @classmethod
    def identity(cls, model: Any, *, site: str = "resid_post") -> TunedLens:
        """Zero translators for ``model`` (decodes exactly like the logit lens)."""
        m = as_model(model)
        lens = cls(m.info.n_layers, m.info.d_model, site=site, info={"model": m.name})
        return lens.to(m.device)

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """``h + A_l h + b_l`` for vectors ``h`` [..., d_model] of layer ``layer`` (same dtype as ``h``)."""
        x = h.to(self.weight.dtype)
        a, b = self.weight[layer].to(x.device), self.bias[layer].to(x.device)
        return (x + torch.nn.functional.linear(x, a, b)).to(h.dtype)

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:  # nn.Module protocol
        return self.translate(h, layer)

    def check_model(self, model: Any) -> None:
        """Raise a ParameterError unless the lens fits the model's layer count and width."""
        i = as_model(model).info
        if (i.n_layers, i.d_model) != (self.n_layers, self.d_model):
            raise ParameterError(
                f"lens: this tuned lens has {self.n_layers} layers x d_model {self.d_model} (trained on "
                f"{self.info.get('model', '?')!r}), the model has {i.n_layers} x {i.d_model}."
            )

    def fingerprint(self) -> str:
        """A content hash of the translators (16 hex digits), recorded in the results decoded with the lens."""
        digest = hashlib.sha256()
        for t in (self.weight, self.bias):
            digest.update(t.detach().cpu().float().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What a Result decoded with this lens records about it: site, fingerprint, model and training
        parameters (the per-step history left out)."""
        info = {k: v for k, v in self.info.items() if k != "history"}
        return {"kind": "tuned", "site": self.site, "fingerprint": self.fingerprint(), **info}

    def save(self, directory: str | Path) -> Path:
        """Write ``translators.safetensors`` and ``config.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()},
                  str(directory / "translators.safetensors"))
        config = {"n_layers": self.n_layers, "d_model": self.d_model, "site": self.site, "info": self.info}
        (directory / "config.json").write_text(json.dumps(config, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = None) -> TunedLens:
        """Read a lens written by :meth:`save`."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").exists() or not (directory / "translators.safetensors").exists():
            raise ParameterError(f"{str(directory)!r} holds no tuned lens (config.json / translators.safetensors).")
        config = json.loads((directory / "config.json").read_text())
        lens = cls(config["n_layers"], config["d_model"], site=config["site"], info=config.get("info", {}))
        tensors = load_file(str(directory / "translators.safetensors"))
        with torch.no_grad():
            lens.weight.copy_(tensors["weight"])
            lens.bias.copy_(tensors["bias"])
        return lens.to(device) if device is not None else lens

    def extra_repr(self) -> str:
        steps = self.info.get("train", {}).get("steps", 0)
        return f"site={self.site!r}, n_layers={self.n_layers}, d_model={self.d_model}, trained_steps={steps}"


def train_tuned_lens(
    model: Any,
    data: Any,
    *,
    steps: int = 250,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    site: str = "resid_post",
    tokens_per_step: int = 512,
    max_tokens: int = 50_000,
    batch_size: int = 16,
    clip_grad: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TunedLens:
    """Train a tuned lens (Belrose et al. 2023, arXiv 2303.08112): one affine translator per layer,
    ``T_l(h) = h + A_l h + b_l`` initialised to the identity, trained to minimise the sum over layers of
    KL(p_final || p_lens_l) in nats (:func:`interp.methods.metrics.kl_divergence`), where
    ``p_lens_l = softmax(W_U . LN_f(T_l(h_l)))`` and ``p_final`` is the model's own distribution at the same token.
    The final norm and unembedding stay frozen; SGD with Nesterov momentum 0.9, lr 1.0, weight decay 1e-3 (the
    paper's settings). A plain function, not a registered method: it returns a lens, not a Result.

    Args:
        data: texts (a list of strings), records or a PromptSet; every real token of every text is a training
            position (up to ``max_tokens``).
        steps: optimiser steps.
        lr, momentum, weight_decay: SGD's (Nesterov when momentum > 0).
        site: the residual site translated ("resid_pre", "resid_mid" or "resid_post").
        tokens_per_step: positions drawn (seeded) for each step.
        max_tokens: at most this many training positions are cached.
        batch_size: texts per forward while caching the residuals.
        clip_grad: an optional gradient-norm clip (off by default, as in the spec); lower ``lr`` or set it if
            ``lens.info["history"]`` rises.
        seed: the seed of the position draws.
        progress: show a progress bar over the steps.

    The loss is averaged over tokens and summed over layers; with that scaling the paper's lr 1.0 trains stably
    on the tiny fixtures and the dense organism (no lr rescaling needed).

    Returns: a :class:`TunedLens` whose ``info["history"]`` is the mean KL per layer (nats) on each step's tokens,
    before that step's update, and ``info["train"]`` the training parameters and the data's fingerprint.

    Cost: one forward per batch of texts (stopped after the final norm) to cache the residuals, then ``steps``
    x n_layers unembeddings + one backward of ``tokens_per_step`` rows per step (no model forward per step).
    Memory: (n_layers + 1) x tokens x d_model floats.
    """
    m = as_model(model)
    steps = check_positive_int("steps", steps)
    lr = check_positive_float("lr", lr)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ParameterError(f"momentum must be a number in [0, 1); got {momentum!r}.")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ParameterError(f"weight_decay must be a number >= 0; got {weight_decay!r}.")
    if site not in RESIDUAL:
        raise ParameterError(f"site={site!r}: a tuned lens translates one of {', '.join(RESIDUAL)}.")
    tokens_per_step = check_positive_int("tokens_per_step", tokens_per_step)
    max_tokens = check_positive_int("max_tokens", max_tokens)
    batch_size = check_positive_int("batch_size", batch_size)
    if clip_grad is not None:
        clip_grad = check_positive_float("clip_grad", clip_grad)
    ps = as_prompt_set(data)
    enc = encode(m, ps)

    n_layers = m.info.n_layers
    names = [hook_name(site, layer) for layer in range(n_layers)]
    hs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    finals: list[torch.Tensor] = []
    n_tokens = 0
    with torch.no_grad():
        for batch in batches(m, enc, batch_size, sort_by_length=False):
            rows, cols = reading.select(batch, "all")
            store = reading.read(m, batch, names, rows, cols)
            for layer, n in enumerate(names):
                hs[layer].append(store[n].float())
            finals.append(store[FINAL_NORMED])
            n_tokens += len(rows)
            if n_tokens >= max_tokens:
                break
    h_all = torch.stack([torch.cat(h)[:max_tokens] for h in hs])  # [L, N, d]
    final_normed = torch.cat(finals)[:max_tokens]
    n = final_normed.shape[0]

    lens = TunedLens.identity(m, site=site)
    opt = torch.optim.SGD(lens.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0,
                          weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    frozen = [*final_norm_module(m).parameters(), *m.hf_model.get_output_embeddings().parameters()]
    flags = [p.requires_grad for p in frozen]
    history: list[float] = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for _ in tqdm(range(steps), desc="tuned lens", disable=not progress, leave=False):
            idx = torch.randint(0, n, (min(tokens_per_step, n),), generator=gen).to(m.device)
            with torch.no_grad():
                final_logits = unembed(m, final_normed[idx]).float()
            opt.zero_grad(set_to_none=True)
            total = 0.0
            loss = torch.zeros((), device=m.device)
            with torch.enable_grad():
                for layer in range(n_layers):
                    h = h_all[layer, idx].to(m.dtype)
                    lens_logits = decode(m, lens.translate(h, layer), output="logits").float()
                    kl = metrics.kl_divergence(final_logits, lens_logits).mean()
                    loss = loss + kl
                    total += float(kl.detach())
                loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(lens.parameters(), clip_grad)
            opt.step()
            history.append(total / n_layers)
    finally:
        for p, f in zip(frozen, flags):
            p.requires_grad_(f)
    lens.info.update({
        "model": m.name,
        "train": {"steps": steps, "lr": lr, "momentum": momentum, "nesterov": momentum > 0,
                  "weight_decay": weight_decay, "tokens_per_step": tokens_per_step, "n_tokens": int(n),
                  "clip_grad": clip_grad, "seed": seed, "dataset_fingerprint": ps.fingerprint(),
                  "n_texts": len(ps), "loss": "sum over layers of mean KL(p_final || p_lens), nats"},
        "history": history,  # mean KL per layer (nats) on each step's tokens, before that step's update
    })
    lens.requires_grad_(False)
    return lens
