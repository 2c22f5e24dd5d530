"""Model directories that would load wrongly or do something behind the user's back: each is a ModelLoadError
naming the file or tensor, raised before the model is used (architectures that interp does not test are refused
before anything is read, so nothing is ever installed); and a ``prepend_bos`` that is not True / False / None, a
ParameterError before any weight is read."""

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

import interp
from interp.errors import ModelLoadError, ParameterError


def copy_of(t, src, name="m"):
    dst = t / name
    shutil.copytree(src, dst)
    return dst


def edit_weights(t, src, edit):
    d = copy_of(t, src)
    sd = load_file(str(d / "model.safetensors"))
    edit(sd)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def edit_config(t, src, edit):
    d = copy_of(t, src)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def drop(sd, part):
    del sd[next(k for k in sd if part in k)]


def reshape(sd, part):
    k = next(k for k in sd if part in k)
    sd[k] = sd[k][:, :-1].contiguous()


def poison(sd, part):
    k = next(k for k in sd if part in k)
    sd[k] = sd[k].clone()
    sd[k].view(-1)[3] = float("nan")


def rename(sd, part):
    k = next(k for k in sd if part in k)
    sd[k.replace("q_proj", "query_proj")] = sd.pop(k)


def corrupt_file(t, src):
    d = copy_of(t, src)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(b"\x00\x01garbage" + data[40:])
    return d


def bad_json(t, src):
    d = copy_of(t, src)
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    return d


L = "layers.1.self_attn.q_proj"
CASES = [
    ("missing tensor", lambda m, t, d: interp.load_model(edit_weights(t, d["llama"], lambda sd: drop(sd, L))),
     ModelLoadError, r"does not match its architecture \(missing: model.layers.1.self_attn.q_proj.weight"),
    ("renamed tensor", lambda m, t, d: interp.load_model(edit_weights(t, d["llama"], lambda sd: rename(sd, L))),
     ModelLoadError, "missing: .*q_proj.weight.*unexpected: .*query_proj.weight"),
    ("unexpected tensor", lambda m, t, d: interp.load_model(edit_weights(
        t, d["llama"], lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(3)))), ModelLoadError,
     "unexpected: model.extra.weight"),
    ("wrongly shaped tensor", lambda m, t, d: interp.load_model(edit_weights(t, d["llama"],
                                                                             lambda sd: reshape(sd, L))),
     ModelLoadError, r"wrongly shaped: model.layers.1.self_attn.q_proj.weight \(64, 63\) in model.safetensors, "
     r"\(64, 64\) expected"),
    ("NaN in a weight", lambda m, t, d: interp.load_model(edit_weights(t, d["llama"], lambda sd: poison(sd, L))),
     ModelLoadError, "weight tensor 'model.layers.1.self_attn.q_proj.weight' holds NaN"),
    ("corrupt safetensors", lambda m, t, d: interp.load_model(corrupt_file(t, d["llama"])), ModelLoadError,
     "Could not load"),
    ("invalid config.json", lambda m, t, d: interp.load_model(bad_json(t, d["llama"])), ModelLoadError,
     "config.json' is not valid JSON"),
    ("architectures as a string", lambda m, t, d: interp.load_model(edit_config(
        t, d["llama"], lambda c: c.__setitem__("architectures", "LlamaForCausalLM"))), ModelLoadError,
     "'architectures' is the string 'LlamaForCausalLM'; it must be a list"),
    ("architectures missing", lambda m, t, d: interp.load_model(edit_config(
        t, d["llama"], lambda c: c.pop("architectures"))), ModelLoadError, "names no architecture"),
    ("multimodal architecture", lambda m, t, d: interp.load_model(edit_config(
        t, d["llama"], lambda c: c.__setitem__("architectures", ["LlavaForConditionalGeneration"]))),
     ModelLoadError, "LlavaForConditionalGeneration is not one interp tests.*nothing was loaded"),
    ("encoder model", lambda m, t, d: interp.load_model(edit_config(
        t, d["llama"], lambda c: c.__setitem__("architectures", ["BertForMaskedLM"]))), ModelLoadError,
     "BertForMaskedLM is not one interp tests"),
    ("prepend_bos not a bool", lambda m, t, d: interp.load_model(d["llama"], prepend_bos="no"), ParameterError,
     r"prepend_bos must be True, False or None.*got 'no'"),
    ("prepend_bos as an integer", lambda m, t, d: interp.load_model(d["llama"], prepend_bos=0), ParameterError,
     "prepend_bos must be True, False or None"),
    ("prepend_bos not a bool on a loaded model", lambda m, t, d: m.with_prepend_bos("False"), ParameterError,
     "prepend_bos must be True, False or None"),
]
