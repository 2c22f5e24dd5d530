"""The tuned lens (Belrose et al., "Eliciting Latent Predictions from Transformers with the Tuned Lens", arXiv
2303.08112, 2023): one affine translator per layer, trained so that decoding the translated residual through the
frozen final norm and unembedding matches the model's own next-token distribution. Decode with it through
``logit_lens(..., lens=...)``.

Sites. interp's default site is ``resid_post``: translator ``l`` acts on the residual after block ``l``
(``l = 0 .. n_layers - 1``). The tuned-lens library (AlignmentResearch/tuned-lens) trains its translators on
``hidden_states[:-1]``, i.e. ``resid_pre``: translator ``i`` acts on the residual before block ``i`` (``i = 0`` is
the embeddings) and the final residual has none (it is decoded as the model's output). So tuned-lens's translator
``l + 1`` is interp's ``resid_post`` translator ``l``. :meth:`TunedLens.save` with ``layout="tuned-lens"`` and
:meth:`TunedLens.load` map between the two (``config.json`` + ``params.pt``, the ``layer_translators`` state dict
``"{i}.weight"`` [d_model, d_model] / ``"{i}.bias"`` [d_model]); a lens saved either way loads in the other tool."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...activations.sites import FINAL_NORMED, RESIDUAL, hook_name
from ...errors import ParameterError, check_choice, check_positive_float, check_positive_int
from ...model.decode import decode, final_norm_module, unembed
from ...model.loading import as_model
from ...prompts import as_prompt_set, batches, encode
from .. import metrics
from . import reading

LAYOUTS = ("interp", "tuned-lens")
TUNED_LENS_PARAMS = "params.pt"
TUNED_LENS_TYPE = "linear_tuned_lens"
TUNED_LENS_CONFIG_FIELDS = ("base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
                            "unembed_hash", "lens_type")
DROP_ATOL = 1e-5  # a translator left out by the tuned-lens layout with no entry above this is the identity
SIDECAR = "interp_lens.json"  # interp's site and info beside a tuned-lens checkpoint (tuned-lens does not read it)
SIDECAR_FORMAT = "interp-tuned-lens-sidecar-v1"
# site -> how interp's translator l relates to tuned-lens's translator i (which acts on hidden_states[i])
TUNED_LENS_SITES = {"resid_pre": "i = l", "resid_post": "i = l + 1"}
_KEY = re.compile(r"^(?:layer_translators\.)?(\d+)\.(weight|bias)$")


class LensLayoutWarning(UserWarning):
    """A translator that one checkpoint layout cannot hold was left out, or a lens may belong to another model."""


def tuned_lens_unembed_hash(model: Any) -> str:
    """The tuned-lens library's ``unembed_hash`` of a model: sha256 of numpy's ``array_str`` of the unembedding
    matrix at precision 1 (a coarse fingerprint it compares on load)."""
    import numpy as np

    w = as_model(model).hf_model.get_output_embeddings().weight.detach().cpu().float().numpy()
    return hashlib.sha256(np.array_str(w, precision=1).encode()).hexdigest()


def to_tuned_lens_indices(weight: torch.Tensor, bias: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                        float]:
    """interp's translators at ``site`` as tuned-lens's (index i acts on ``hidden_states[i]``), and the largest
    absolute entry of what had to be left out (resid_post's last translator)."""
    if site == "resid_pre":
        return weight.clone(), bias.clone(), 0.0
    w, b = torch.zeros_like(weight), torch.zeros_like(bias)
    w[1:], b[1:] = weight[:-1], bias[:-1]
    dropped = max(float(weight[-1].abs().max()), float(bias[-1].abs().max()))
    return w, b, dropped


def from_tuned_lens_indices(weight: torch.Tensor, bias: torch.Tensor, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """tuned-lens's translators (index i on ``hidden_states[i]``) as interp's at ``site``: resid_pre one to one;
    resid_post l = tuned-lens l + 1, the last layer the identity (tuned-lens's translator 0 has no resid_post)."""
    if site == "resid_pre":
        return weight.clone(), bias.clone()
    w, b = torch.zeros_like(weight), torch.zeros_like(bias)
    w[:-1], b[:-1] = weight[1:], bias[1:]
    return w, b


def _translators_from_state(state: Any, n: int, d: int, has_bias: bool, where: Path) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """[n, d, d] weights and [n, d] biases from a ``layer_translators`` state dict (keys ``"{i}.weight"`` /
    ``"{i}.bias"``, optionally prefixed ``layer_translators.``; a whole lens's ``unembed.*`` entries ignored)."""
    if not isinstance(state, dict):
        raise ParameterError(f"{str(where)!r} holds a {type(state).__name__}, not a state dict of translators.")
    weight, bias = torch.zeros(n, d, d), torch.zeros(n, d)
    seen: set[str] = set()
    for key, value in state.items():
        if str(key).startswith("unembed."):
            continue
        match = _KEY.match(str(key))
        if match is None or int(match.group(1)) >= n or (match.group(2) == "bias" and not has_bias):
            raise ParameterError(f"{str(where)!r}: unexpected entry {key!r} (a lens of {n} layers holds "
                                 f"'0.weight' .. '{n - 1}.weight'" + (" and the biases" if has_bias else "") + ").")
        i, kind = int(match.group(1)), match.group(2)
        shape = (d, d) if kind == "weight" else (d,)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ParameterError(f"{str(where)!r}: {key!r} has shape {got}, config.json's d_model={d} needs {shape}.")
        (weight if kind == "weight" else bias)[i] = value.float()
        seen.add(f"{i}.{kind}")
    missing = [f"{i}.{k}" for i in range(n) for k in (("weight", "bias") if has_bias else ("weight",))
               if f"{i}.{k}" not in seen]
    if missing:
        raise ParameterError(f"{str(where)!r} lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} "
                             f"(config.json says {n} layers).")
    return weight, bias


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

    def save(self, directory: str | Path, *, layout: str = "interp", model: Any = None) -> Path:
        """Write the lens into ``directory`` (atomically, file by file).

        ``layout="interp"`` (default): ``translators.safetensors`` (``weight`` [n_layers, d, d], ``bias``
        [n_layers, d]) and ``config.json`` (n_layers, d_model, site, info). ``layout="tuned-lens"``: the tuned-lens
        library's checkpoint, loadable there with ``TunedLens.from_model_and_pretrained(model, directory)``:
        ``params.pt`` (its ``layer_translators`` state dict, ``"{i}.weight"`` / ``"{i}.bias"`` for i = 0 ..
        n_layers - 1, translator i acting on ``hidden_states[i]`` = resid_pre of block i), ``config.json`` with its
        fields (base_model_name_or_path, d_model, num_hidden_layers, bias, base_model_revision, unembed_hash,
        lens_type) and ``interp_lens.json`` (site and info, which tuned-lens does not read) so that
        :meth:`load` gives back this lens. A ``resid_pre`` lens maps one to one. A ``resid_post`` lens is shifted
        (its translator l is tuned-lens's l + 1); tuned-lens's translator 0 (the embeddings) is then the identity,
        and interp's last translator (on the final residual, which tuned-lens decodes as the model's output) is not
        written: a warning says so when an entry of it exceeds ``DROP_ATOL`` (1e-5; one trained by
        :func:`train_tuned_lens` stays within float32 round-off of the identity, the KL's gradient there being
        zero). ``resid_mid`` has no tuned-lens counterpart. ``model`` (optional) gives the config's
        ``unembed_hash`` (tuned-lens's hash of the unembedding matrix).
        """
        from safetensors.torch import save_file

        from ...results.atomic import atomic_path, write_text

        check_choice("layout", layout, LAYOUTS)
        directory = Path(directory)
        if layout == "tuned-lens":
            return self._save_tuned_lens(directory, model)
        if (directory / TUNED_LENS_PARAMS).exists():
            raise ParameterError(f"{str(directory)!r} holds a tuned-lens checkpoint (params.pt): save an interp-layout "
                                 "lens into another directory (both layouts write config.json).")
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "translators.safetensors") as tmp:
            save_file({"weight": self.weight.detach().cpu().contiguous(),
                       "bias": self.bias.detach().cpu().contiguous()}, str(tmp))
        config = {"n_layers": self.n_layers, "d_model": self.d_model, "site": self.site, "info": self.info}
        write_text(directory / "config.json", json.dumps(config, indent=1))
        return directory

    def _save_tuned_lens(self, directory: Path, model: Any) -> Path:
        from ...results.atomic import atomic_path, write_text

        if self.site not in TUNED_LENS_SITES:
            raise ParameterError(f"layout='tuned-lens': tuned-lens translates resid_pre (hidden_states[:-1]) only; "
                                 f"this lens translates {self.site!r}, which has no tuned-lens counterpart.")
        if (directory / "translators.safetensors").exists():
            raise ParameterError(f"{str(directory)!r} holds an interp-layout lens (translators.safetensors): save the "
                                 "tuned-lens layout into another directory (both layouts write config.json).")
        unembed_hash = None
        if model is not None:
            self.check_model(model)
            unembed_hash = tuned_lens_unembed_hash(model)
        weight, bias, dropped = to_tuned_lens_indices(self.weight.detach().cpu(), self.bias.detach().cpu(), self.site)
        if dropped > DROP_ATOL:
            warnings.warn(f"layout='tuned-lens': this resid_post lens's last translator (layer {self.n_layers - 1}, "
                          f"on the final residual; largest entry {dropped:.3g}) is not written: tuned-lens decodes "
                          "the final residual as the model's output, with no translator.", LensLayoutWarning,
                          stacklevel=3)
        state = {}
        for i in range(self.n_layers):
            state[f"{i}.weight"] = weight[i].contiguous().clone()
            state[f"{i}.bias"] = bias[i].contiguous().clone()
        config = {
            "base_model_name_or_path": str(self.info.get("model", "")),
            "d_model": self.d_model,
            "num_hidden_layers": self.n_layers,
            "bias": True,
            "base_model_revision": None,
            "unembed_hash": unembed_hash,
            "lens_type": TUNED_LENS_TYPE,
        }
        sidecar = {"format": SIDECAR_FORMAT, "site": self.site, "info": self.info,
                   "mapping": TUNED_LENS_SITES[self.site]}
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / TUNED_LENS_PARAMS) as tmp:
            torch.save(state, tmp)
        write_text(directory / "config.json", json.dumps(config, indent=1))
        write_text(directory / SIDECAR, json.dumps(sidecar, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = None, site: str | None = None,
             model: Any = None) -> TunedLens:
        """Read a lens written by :meth:`save` in either layout, or a checkpoint of the tuned-lens library (a
        directory with its ``config.json`` and ``params.pt``, e.g. one of its published lenses), told apart by
        ``config.json``'s fields.

        Args:
            directory: the lens's directory.
            device: where the translators go (default: the CPU).
            site: for a tuned-lens checkpoint, the site the loaded lens translates: ``"resid_pre"`` (tuned-lens's
                own: translator i on the residual before block i, exact) or ``"resid_post"`` (translator l + 1 as
                interp's translator l; tuned-lens's translator 0, on the embeddings, is left out and the last layer
                gets the identity, as tuned-lens decodes the final residual). None: the site recorded by interp's
                :meth:`save` (``interp_lens.json``), else ``"resid_pre"``. An interp-layout lens keeps its own site.
            model: optional; the lens is checked against it (layers, width) and, for a tuned-lens checkpoint, a
                warning is given when its ``unembed_hash`` differs from the model's unembedding.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.exists():
            raise ParameterError(f"{str(directory)!r} holds no tuned lens (no config.json; interp's layout has "
                                 "config.json + translators.safetensors, tuned-lens's config.json + params.pt).")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise ParameterError(f"{str(config_path)!r} is not valid JSON ({exc}).") from exc
        if isinstance(config, dict) and "num_hidden_layers" in config:
            lens = cls._load_tuned_lens(directory, config, site)
        else:
            if not (directory / "translators.safetensors").exists() or not isinstance(config, dict) \
                    or "n_layers" not in config:
                raise ParameterError(f"{str(directory)!r} holds no tuned lens (config.json / translators.safetensors "
                                     "of interp, or config.json / params.pt of tuned-lens).")
            if site is not None and site != config["site"]:
                raise ParameterError(f"site={site!r}: this interp-layout lens translates {config['site']!r}; its "
                                     "translators cannot be moved to another site.")
            lens = cls(config["n_layers"], config["d_model"], site=config["site"], info=config.get("info", {}))
            tensors = load_file(str(directory / "translators.safetensors"))
            with torch.no_grad():
                lens.weight.copy_(tensors["weight"])
                lens.bias.copy_(tensors["bias"])
        if model is not None:
            lens.check_model(model)
            expected = lens.info.get("tuned_lens_config", {}).get("unembed_hash")
            if expected and expected != tuned_lens_unembed_hash(model):
                warnings.warn(f"{str(directory)!r}: the lens's unembed_hash differs from this model's unembedding "
                              "matrix: it may have been trained on another model.", LensLayoutWarning, stacklevel=2)
        return lens.to(device) if device is not None else lens

    @classmethod
    def _load_tuned_lens(cls, directory: Path, config: dict, site: str | None) -> TunedLens:
        params = directory / TUNED_LENS_PARAMS
        if not params.exists():
            raise ParameterError(f"{str(directory)!r}: config.json is tuned-lens's, but params.pt is missing.")
        lens_type = config.get("lens_type", TUNED_LENS_TYPE)
        if lens_type != TUNED_LENS_TYPE:
            raise ParameterError(f"{str(directory)!r}: lens_type {lens_type!r} is not supported (only "
                                 f"{TUNED_LENS_TYPE!r}, affine translators).")
        for key in ("d_model", "num_hidden_layers"):
            if isinstance(config.get(key), bool) or not isinstance(config.get(key), int) or config[key] < 1:
                raise ParameterError(f"{str(directory)!r}: config.json's {key} must be a positive integer, got "
                                     f"{config.get(key)!r}.")
        n, d, has_bias = config["num_hidden_layers"], config["d_model"], bool(config.get("bias", True))
        sidecar_path = directory / SIDECAR
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
        if site is None:
            site = sidecar.get("site", "resid_pre")
        if site not in TUNED_LENS_SITES:
            raise ParameterError(f"site={site!r}: a tuned-lens checkpoint loads as 'resid_pre' (its own site) or "
                                 "'resid_post' (shifted by one layer).")
        try:
            state = torch.load(params, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch's unpickling errors name no lens
            raise ParameterError(f"{str(params)!r} is not a readable tuned-lens params.pt ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
        weight, bias = _translators_from_state(state, n, d, has_bias, params)
        info = dict(sidecar.get("info", {})) if sidecar.get("site") == site else {}
        if not info:
            info = {"model": config.get("base_model_name_or_path", ""), "source": "tuned-lens"}
        info["tuned_lens_config"] = {k: config.get(k) for k in TUNED_LENS_CONFIG_FIELDS}
        lens = cls(n, d, site=site, info=info)
        w, b = from_tuned_lens_indices(weight, bias, site)
        with torch.no_grad():
            lens.weight.copy_(w)
            lens.bias.copy_(b)
        return lens

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
        site: the residual site translated ("resid_pre", "resid_mid" or "resid_post"). The default, resid_post
            (after block l), differs from the tuned-lens library's resid_pre (``hidden_states[:-1]``, before block
            l): its translator l + 1 is this one's l; ``lens.save(..., layout="tuned-lens")`` maps them.
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
