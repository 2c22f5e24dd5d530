"""interp's activation patching against nnsight's and pyvene's, on the tiny fixtures.

    python docs/peers/compare_patching_peers.py [--arch gpt2 llama] [--peers nnsight pyvene]

Needs nnsight and / or pyvene installed beside interp (neither is interp's dependency; docs/peers.md says in which
environment it ran). For each fixture (interp.model.fixtures) and clean / corrupt pair of one token length, each
peer patches the clean run's residual stream after block l (``resid_post``; the block's output) at one position
into the corrupt run, for every layer and position, one patched forward each, on the plain Hugging Face model; the
metric is the logit of the clean prompt's target minus that of the corrupt prompt's, at the last position. The
script prints the cells compared and the largest absolute difference from interp's
``activation_patching(..., sites="resid_post", metric="logit_diff")`` (``patched_metric``, denoising).

Nothing of the peers is copied: their public APIs are called (nnsight: ``NNsight(model).trace`` with the block's
``output`` saved and assigned; pyvene: ``IntervenableModel`` with a ``VanillaIntervention`` on ``block_output``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import tempfile
from pathlib import Path

import torch

import interp
from interp.model.fixtures import build_all_tiny_models
from interp.prompts import tokenize

PAIRS = [({"id": "c0", "prompt": "The capital of France is the city of", "target": " Paris"},
          {"id": "k0", "prompt": "The capital of Italy is the city of", "target": " Rome"}),
         ({"id": "c1", "prompt": "Megan Rapinoe plays the sport of", "target": " soccer"},
          {"id": "k1", "prompt": "Tiger Woods plays the sport of", "target": " golf"})]


def blocks(hf: torch.nn.Module):
    """The model's list of decoder blocks (GPT-2: transformer.h; Llama-like: model.layers)."""
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def block_path(hf: torch.nn.Module) -> str:
    return "transformer.h" if hasattr(hf, "transformer") else "model.layers"


def nnsight_sweep(hf, clean_ids, corrupt_ids, target, wrong) -> dict:
    from nnsight import NNsight

    lm = NNsight(hf)
    n, t = len(blocks(hf)), clean_ids.shape[1]
    out, saved, logits = {}, [], None  # declared before the traces: nnsight writes back only names that exist
    with torch.no_grad():
        with lm.trace(clean_ids):
            for layer in range(n):
                saved.append(blocks(lm)[layer].output.save())
        clean = [s[0] if isinstance(s, tuple) else s for s in saved]
        for layer in range(n):
            for pos in range(t):
                with lm.trace(corrupt_ids):
                    o = blocks(lm)[layer].output
                    h = o[0] if isinstance(o, tuple) else o
                    h[:, pos] = clean[layer][:, pos]
                    logits = lm.output.logits.save()
                last = logits[0, -1]
                out[(layer, pos)] = float(last[target] - last[wrong])
    return out


def pyvene_sweep(hf, clean_ids, corrupt_ids, target, wrong) -> dict:
    import pyvene as pv

    n, t = len(blocks(hf)), clean_ids.shape[1]
    out = {}
    with torch.no_grad():
        for layer in range(n):
            cfg = pv.IntervenableConfig([{"layer": layer, "component": "block_output",
                                          "intervention_type": pv.VanillaIntervention}])
            im = pv.IntervenableModel(cfg, hf)
            for pos in range(t):
                _, res = im({"input_ids": corrupt_ids}, [{"input_ids": clean_ids}],
                            unit_locations={"sources->base": pos})
                last = res.logits[0, -1]
                out[(layer, pos)] = float(last[target] - last[wrong])
    return out


def run(arch: str, model_dir: Path, peers: list[str]) -> None:
    from transformers import AutoModelForCausalLM

    m = interp.load_model(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    for clean, corrupt in PAIRS:
        ci, ki = tokenize(m, clean["prompt"]).ids, tokenize(m, corrupt["prompt"]).ids
        if len(ci) != len(ki):
            raise SystemExit(f"{arch}: {clean['prompt']!r} and {corrupt['prompt']!r} differ in token length")
        target = tokenize(m, clean["prompt"] + clean["target"]).ids[len(ci)]
        wrong = tokenize(m, clean["prompt"] + corrupt["target"]).ids[len(ci)]
        ours = interp.activation_patching(m, [clean], [corrupt], sites="resid_post", progress=False).table
        for peer in peers:
            sweep = nnsight_sweep if peer == "nnsight" else pyvene_sweep
            theirs = sweep(hf, torch.tensor([ci]), torch.tensor([ki]), target, wrong)
            diff = max(abs(r.patched_metric - theirs[(r.layer, r.position)]) for r in ours.itertuples())
            scale = max(abs(v) for v in theirs.values())
            print(f"[{arch}] {clean['id']}: {peer} {md.version(peer)} resid_post patch vs activation_patching: "
                  f"{len(ours)} cells (|metric| up to {scale:.3g}), max abs diff {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["gpt2", "llama"])
    ap.add_argument("--peers", nargs="+", default=["nnsight", "pyvene"], choices=["nnsight", "pyvene"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("transformer-lens", md.version("transformer-lens"), "transformers", md.version("transformers"), "torch",
          torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build_all_tiny_models(Path(tmp) / "tiny", archs=args.arch)
        for arch in args.arch:
            run(arch, Path(dirs[arch]), args.peers)


if __name__ == "__main__":
    main()
