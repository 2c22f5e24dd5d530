"""Loading a model: a TransformerBridge over a Hugging Face model, plus the facts methods need (ModelInfo).

``load_model`` boots offline from a local Hugging Face directory, or from a hub name where a network exists.
Every method accepts the returned :class:`Model` or a plain ``TransformerBridge``; :func:`as_model` turns either
into a ``Model``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import DeviceError, ModelLoadError, ParameterError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class ModelInfo:
    """The shape facts of a model, as researchers name them."""

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int | None
    norm: str  # "rmsnorm" | "layernorm"
    vocab_size: int
    prepends_bos: bool
    is_moe: bool = False
    n_experts: int | None = None
    top_k: int | None = None
    n_shared_experts: int = 0
    renormalizes_top_k: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Model:
    """A booted TransformerBridge with its tokenizer and :class:`ModelInfo`.

    Attribute access falls through to the bridge, so ``model.blocks[0].attn.W_O`` works as on the bridge.
    """

    def __init__(self, bridge: Any, *, name: str | None = None, path: str | None = None,
                 prepend_bos: bool | None = None):
        check_prepend_bos(prepend_bos)
        _wire_capture_hooks(bridge)
        self.bridge = bridge
        self.name = name or str(getattr(bridge.cfg, "model_name", "model"))
        self.path = path  # the absolute directory it was loaded from (None: a hub name or a bridge passed in)
        info = _read_info(bridge)
        if prepend_bos is not None:
            if prepend_bos and getattr(bridge.tokenizer, "bos_token_id", None) is None:
                raise ParameterError(f"prepend_bos=True, but the tokenizer of {self.name!r} has no BOS token; pass "
                                     "prepend_bos=False (or None: the bridge's default).")
            info = replace(info, prepends_bos=prepend_bos)
        self.info = info

    @property
    def prepend_bos(self) -> bool:
        """Whether interp prepends BOS to every prompt it tokenises for this model (``prepends_bos`` of
        :class:`ModelInfo` where the tokenizer has a BOS token; recorded as ``prepend_bos`` in every Result's
        meta)."""
        return bool(self.info.prepends_bos) and getattr(self.tokenizer, "bos_token_id", None) is not None

    def with_prepend_bos(self, prepend_bos: bool | None) -> Model:
        """The same bridge (no copy, no reload) with BOS prepended or not (None: the bridge's
        ``default_prepend_bos``), e.g. ``model.with_prepend_bos(False)`` to feed GPT-2 as ROME's code does."""
        return Model(self.bridge, name=self.name, path=self.path, prepend_bos=prepend_bos)

    # --- conveniences -------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.bridge.original_model

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.parameters()).dtype

    @property
    def hook_names(self) -> list[str]:
        return sorted(self.bridge.hook_dict.keys())

    def generate(self, input: Any, **kwargs: Any) -> Any:
        """Continue text exactly: :func:`interp.generate` (greedy unless ``do_sample=True``; keywords as there).

        A string in gives the generated text out (a dict {label: text} when ``interventions`` is a mapping); a
        list of prompts or a PromptSet gives the :class:`~interp.results.result.Result`. It replaces the bridge's own
        ``generate`` (still at ``model.bridge.generate``), whose key/value cache ignores the prompt under
        TransformerLens 4.3 with transformers 5 (see :mod:`interp.activations.generation`). Cost: as
        :func:`interp.generate`.
        """
        from collections.abc import Mapping

        from ..activations.generation import generate
        from ..errors import ParameterError

        allowed = ("interventions", "max_new_tokens", "do_sample", "temperature", "seed", "batch_size", "max_rows",
                   "progress", "chat_template")
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            raise ParameterError(
                f"model.generate() got {', '.join(map(repr, unknown))}; it takes {', '.join(allowed)} (as "
                "interp.generate). The bridge's own generate is model.bridge.generate, but its KV cache ignores "
                "the prompt (see interp.generation).")
        if hasattr(input, "shape") and hasattr(input, "dtype"):
            raise ParameterError("model.generate() takes text (a string, a list of prompts or a PromptSet), not "
                                 "token ids; decode them first with model.tokenizer.decode.")
        if not isinstance(input, str):
            return generate(self, input, **kwargs)
        res = generate(self, [input], **kwargs)
        responses = dict(zip(res.table["intervention"], res.table["response"]))
        if isinstance(kwargs.get("interventions"), Mapping):
            return responses
        return next(iter(responses.values()))

    def __getattr__(self, item: str) -> Any:
        if item in ("bridge", "info", "name", "path"):
            raise AttributeError(item)
        return getattr(self.bridge, item)

    def __repr__(self) -> str:
        i = self.info
        moe = f", experts={i.n_experts} top{i.top_k}" if i.is_moe else ""
        return (
            f"Model({self.name!r}: {i.architecture}, {i.n_layers} layers, {i.n_heads} heads "
            f"({i.n_kv_heads} kv), d_model={i.d_model}{moe})"
        )


def _wire_capture_hooks(bridge: Any) -> None:
    """Run one forward of one token, so that the hooks a TransformerBridge (4.3) installs in its blocks and
    attention on their first forward, and keeps (split-qkv fork, ``hook_mlp_in`` and attention-pattern capture:
    the bridge's own), are there from the start. Otherwise a fresh model's first call leaves hooks it did not have
    before, which the leak checks (``hook_snapshot``) cannot tell from a leak. Cost: one forward of one token."""
    if getattr(bridge, "_interp_hooks_settled", False):
        return
    device = next(bridge.parameters()).device
    with torch.no_grad():
        bridge(torch.zeros(1, 1, dtype=torch.long, device=device))
    try:
        object.__setattr__(bridge, "_interp_hooks_settled", True)
    except Exception:  # a frozen object: the forward runs again next time, which is harmless
        pass


def as_model(model: Any) -> Model:
    """Accept a :class:`Model` or a plain TransformerBridge and return a Model."""
    if isinstance(model, Model):
        return model
    if hasattr(model, "hook_dict") and hasattr(model, "original_model") and hasattr(model, "cfg"):
        cached = getattr(model, "_interp_model", None)
        if cached is None:
            cached = Model(model)
            try:
                object.__setattr__(model, "_interp_model", cached)
            except Exception:  # a frozen object: just do not cache
                pass
        return cached
    raise TypeError(
        f"Expected an interp.Model or a TransformerBridge, got {type(model).__name__}. "
        "Load one with interp.load_model(name_or_dir)."
    )


# --- loading ----------------------------------------------------------------------------------------------
def load_model(
    name_or_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    max_memory: dict[Any, Any] | None = None,
    prepend_bos: bool | None = None,
) -> Model:
    """Boot a TransformerBridge from a local Hugging Face directory (offline) or a hub name.

    ``prepend_bos``: whether every prompt interp tokenises starts with the tokenizer's BOS token; None (default)
    follows the bridge's ``cfg.default_prepend_bos`` (True for GPT-2 and Llama, False for Qwen). ROME's code feeds
    GPT-2 without BOS: ``prepend_bos=False`` reproduces it. Recorded as ``prepend_bos`` in every Result's meta;
    ``model.with_prepend_bos(flag)`` switches it on a loaded model without reloading.

    A model larger than one GPU is split across several with ``device_map="auto"`` (Hugging Face accelerate;
    optionally ``max_memory={0: "70GiB", 1: "70GiB"}``) or ``n_devices=k`` (the bridge's own layer split); leave
    ``device`` unset then. Every check (directory, tokenizer files, architecture, device, dtype, hub
    reachability) runs before any weight is read. Cost: reading the weights once.
    """
    check_prepend_bos(prepend_bos)
    if (device_map is not None or n_devices is not None) and device is not None:
        raise DeviceError("Give either device= or device_map= / n_devices=, not both: a device map places every layer.")
    if n_devices is not None and (not isinstance(n_devices, int) or n_devices < 1):
        raise DeviceError(f"n_devices must be a positive integer; got {n_devices!r}.")
    if n_devices is not None and n_devices > 1 and n_devices > torch.cuda.device_count():
        raise DeviceError(f"n_devices={n_devices} but this machine has {torch.cuda.device_count()} CUDA device(s).")
    split = {k: v for k, v in (("device_map", device_map), ("n_devices", n_devices), ("max_memory", max_memory))
             if v is not None}
    torch_device = None if split else _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype)
    source = str(name_or_dir)
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or os.sep in source and path.parent.exists()
    if looks_local:
        boot_name = str(_check_local_dir(path))
    else:
        _check_hub_reachable(source)
        boot_name = source

    from transformer_lens.model_bridge import TransformerBridge

    try:
        with _loading_report() as reports:
            bridge = TransformerBridge.boot_transformers(boot_name, device=torch_device, dtype=torch_dtype, **split)
    except ModelLoadError:
        raise
    except Exception as exc:  # transformers' / safetensors' own messages are long; keep the first line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"Could not load {source!r}: {type(exc).__name__}: {first}") from exc
    _check_loading_report(source, reports)
    _check_finite(source, bridge.original_model)
    if torch_dtype == torch.float64:  # grouped_mm, the default MoE experts kernel, has no float64 version
        for module in bridge.original_model.modules():
            cfg = getattr(module, "config", None)
            if getattr(cfg, "_experts_implementation", None) not in (None, "eager"):
                cfg._experts_implementation = "eager"
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return Model(bridge, name=source, path=boot_name if looks_local else None, prepend_bos=prepend_bos)


def check_prepend_bos(prepend_bos: Any) -> None:
    """Refuse a ``prepend_bos`` that is not True, False or None (before any weight is read)."""
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ParameterError(f"prepend_bos must be True, False or None (the bridge's default_prepend_bos); got "
                             f"{prepend_bos!r}.")


def _resolve_device(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"device={device!r} is not a device torch knows (try 'cpu' or 'cuda').") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was asked for, but CUDA is not available here; pass device='cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={device!r} was asked for, but MPS is not available here; pass device='cpu'.")
    return str(dev)


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise DeviceError(f"dtype={dtype!r} is not one of {', '.join(sorted(_DTYPES))} or a torch.dtype.")


def _check_local_dir(path: Path) -> Path:
    path = path.resolve()  # a relative name that matches a registry alias would be rewritten by the bridge
    if not path.exists():
        raise ModelLoadError(f"Model directory {str(path)!r} does not exist.")
    if not path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a file; pass the directory that holds config.json and the weights.")
    config = path / "config.json"
    if not config.exists():
        raise ModelLoadError(f"{str(path)!r} has no config.json: it is not a Hugging Face model directory.")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{str(path)!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer next to "
            "the model (tokenizer.save_pretrained(dir))."
        )
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{str(config)!r} is not valid JSON ({exc}).") from exc
    _check_architecture(parsed, str(path))
    return path


# The decoder-only text architectures the project tests (tiny fixtures of each in interp/model/fixtures.py, every
# exactness test run on them). To add one: add its tiny config to interp.model.fixtures.ARCHITECTURES, run the test
# suite (the exactness tests loop over the fixtures), and add its class name here.
TESTED_ARCHITECTURES = (
    "GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Gemma2ForCausalLM",
    "MixtralForCausalLM", "OlmoeForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
)


def _check_architecture(config: Any, where: str) -> None:
    if not isinstance(config, dict):
        raise ModelLoadError(f"{where}/config.json holds a JSON {type(config).__name__}, not an object.")
    archs = config.get("architectures")
    if archs is None or archs == []:
        raise ModelLoadError(f"{where}: config.json names no architecture ('architectures' is missing).")
    if isinstance(archs, str):
        raise ModelLoadError(f"{where}: config.json's 'architectures' is the string {archs!r}; it must be a list, "
                             f"e.g. [{archs!r}].")
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ModelLoadError(f"{where}: config.json's 'architectures' must be a list of class names; got {archs!r}.")
    if not any(a in TESTED_ARCHITECTURES for a in archs):
        raise ModelLoadError(
            f"{where}: architecture {', '.join(archs)} is not one interp tests (decoder-only text models: "
            f"{', '.join(TESTED_ARCHITECTURES)}); nothing was loaded. To add one, give it a tiny fixture in "
            "interp/model/fixtures.py, run the test suite and add it to interp.model.loading.TESTED_ARCHITECTURES."
        )


@contextmanager
def _loading_report() -> Iterator[list[dict]]:
    """Collect transformers' loading report (missing, unexpected and wrongly shaped tensors) of every
    ``from_pretrained`` made inside the block; the bridge loads with the report switched off."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]
    reports: list[dict] = []

    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = kwargs.pop("output_loading_info", False)
        try:
            model, info = original.__func__(cls, *args, output_loading_info=True, **kwargs)
        except RuntimeError as exc:
            if "mismatched" not in str(exc) and "ignore_mismatched_sizes" not in str(exc):
                raise
            where = str(args[0]) if args else "the checkpoint"
            raise ModelLoadError(f"{where!r}: the checkpoint does not match its architecture (wrongly shaped: "
                                 f"{_shape_mismatches(cls, where, kwargs.get('config'))}); check the weights files "
                                 "and config.json.") from None
        reports.append(info)
        return (model, info) if wanted else model

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)  # type: ignore[method-assign,assignment]
    try:
        yield reports
    finally:
        PreTrainedModel.from_pretrained = original  # type: ignore[method-assign]


def _shape_mismatches(cls: Any, directory: str, config: Any) -> str:
    """The tensors whose shape in the safetensors files differs from the architecture's (for the error message)."""
    try:
        from safetensors import safe_open
        from transformers import AutoConfig

        config = config if config is not None else AutoConfig.from_pretrained(directory)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls._from_config(config).state_dict().items()}
        out = []
        for file in sorted(Path(directory).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():
                    got = tuple(fh.get_slice(key).get_shape())
                    if key in expected and expected[key] != got:
                        out.append(f"{key} {got} in {file.name}, {expected[key]} expected")
        return "; ".join(out[:8]) or "see transformers' report"
    except Exception:  # the message is best effort; the refusal stands either way
        return "see transformers' report"


def _check_loading_report(source: str, reports: list[dict]) -> None:
    """A checkpoint whose tensors do not match the architecture would run with random weights: refuse it."""
    problems = []
    for info in reports:
        for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected")):
            names = sorted(info.get(key) or [])
            if names:
                problems.append(f"{what}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
        mismatched = sorted(info.get("mismatched_keys") or [], key=str)
        if mismatched:
            shown = [f"{k[0]} {tuple(k[1])} in the file, {tuple(k[2])} expected" if isinstance(k, tuple) and
                     len(k) == 3 else str(k) for k in mismatched[:8]]
            problems.append(f"wrongly shaped: {'; '.join(shown)}")
    if problems:
        raise ModelLoadError(f"{source!r}: the checkpoint does not match its architecture ({' | '.join(problems)}); "
                             "those weights would be random. Check the weights files and config.json.")


def _check_finite(source: str, hf_model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                name = name.replace("._original_component", "")  # the bridge's wrapping, not HF's name
                raise ModelLoadError(f"{source!r}: the weight tensor {name!r} holds NaN or infinite values.")


def _check_hub_reachable(name: str) -> None:
    """Fail fast, with advice, when a hub name cannot be fetched (and is not in the local HF cache)."""
    if _in_hf_cache(name):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    reachable = False
    if not offline:
        try:
            with socket.create_connection((host, 443), timeout=3):
                reachable = True
        except OSError:
            reachable = False
    if not reachable:
        why = "offline mode is set (HF_HUB_OFFLINE)" if offline else f"the hub ({host}) is unreachable"
        raise ModelLoadError(
            f"{name!r} is not a local directory and {why}. Download the model elsewhere and pass its "
            "directory instead, e.g. interp.load_model('/models/my-model') (a folder with config.json, "
            "weights and tokenizer files)."
        )


def _in_hf_cache(name: str) -> bool:
    if name.count("/") != 1:
        return False
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub"))
    return (hub_cache.expanduser() / f"models--{name.replace('/', '--')}").exists()


# --- facts ------------------------------------------------------------------------------------------------
def _read_info(bridge: Any) -> ModelInfo:
    cfg = bridge.cfg
    hf_cfg = bridge.original_model.config
    text_cfg = getattr(hf_cfg, "text_config", None) or hf_cfg
    arch = (getattr(hf_cfg, "architectures", None) or [type(bridge.original_model).__name__])[0]
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or getattr(text_cfg, "num_key_value_heads", None) or n_heads
    norm_type = str(getattr(cfg, "normalization_type", "") or "").upper()
    norm = "layernorm" if norm_type.startswith("LN") and "RMS" not in norm_type else "rmsnorm"
    n_experts = getattr(text_cfg, "num_local_experts", None) or getattr(text_cfg, "num_experts", None)
    top_k = getattr(text_cfg, "num_experts_per_tok", None)
    is_moe = bool(n_experts) and bool(top_k)
    shared = 0
    renorm = None
    if is_moe:
        model_type = getattr(text_cfg, "model_type", "")
        if getattr(text_cfg, "shared_expert_intermediate_size", 0):
            shared = 1
        elif getattr(text_cfg, "n_shared_experts", 0):
            shared = int(text_cfg.n_shared_experts)
        if model_type == "mixtral":
            renorm = True
        else:
            renorm = bool(getattr(text_cfg, "norm_topk_prob", False))
    return ModelInfo(
        architecture=arch,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=int(cfg.d_mlp) if getattr(cfg, "d_mlp", None) else None,
        norm=norm,
        vocab_size=int(cfg.d_vocab),
        prepends_bos=bool(getattr(cfg, "default_prepend_bos", True)),
        is_moe=is_moe,
        n_experts=int(n_experts) if is_moe else None,
        top_k=int(top_k) if is_moe else None,
        n_shared_experts=shared,
        renormalizes_top_k=renorm,
    )
