"""interp's causal tracing against ROME's own code (github.com/kmeng01/rome, ``experiments/causal_trace.py``).

    python docs/peers/compare_rome.py --rome /path/to/your/rome/clone --model /path/to/gpt2 [--facts F.json]

Needs a clone of ROME with its requirements installed (its ``experiments/causal_trace.py`` imports matplotlib,
datasets and its own ``dsets`` / ``util`` packages, and reads ``globals.yml`` from the clone's root, so the script
runs from there), a GPT-2 directory (ROME's code recognises GPT-2 / GPT-J / NeoX layer names; a tiny one:
``python -c "from interp.model.fixtures import build_all_tiny_models as b; print(b('/tmp/tiny', archs=['gpt2']))"``)
and interp. Nothing of ROME's is copied: its functions are imported from the clone and called.

It prints, per fact and kind (None = block outputs, "mlp", "attn"), the largest absolute difference between
ROME's ``calculate_hidden_flow`` scores and interp's ``target_prob`` with the options that reproduce ROME:
``load_model(..., prepend_bos=False)``, ``causal_trace(..., target=None, samples=10, window=10, noise=3.0,
noise_scale="records", noise_draws="rome")``; then ROME's ``collect_embedding_std`` against interp's nu; then the
severed restoration: ROME's ``trace_with_repatch`` (MLP frozen) as shipped, and with its generator restarted for
the second pass, against interp's ``severed="mlp_out"`` rows.

ROME's ``make_inputs`` defaults to CUDA; without a GPU the script sets that default to the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

FACTS = [
    {"prompt": "The Space Needle is located in the city of", "subject": "The Space Needle"},
    {"prompt": "Megan Rapinoe plays the sport of", "subject": "Megan Rapinoe"},
    {"prompt": "The Eiffel Tower is in", "subject": "The Eiffel Tower"},
]


_RANDOM_STATE = np.random.RandomState  # kept: ROME's numpy is this numpy, so the patch below replaces this name


class _RestartingRandomState:
    """A stand-in for numpy.random.RandomState whose every draw restarts from the seed (so both passes of
    trace_with_repatch see the noise that trace_with_patch's single pass sees)."""

    def __init__(self, seed: int):
        self.seed = seed

    def randn(self, *shape: int) -> np.ndarray:
        return _RANDOM_STATE(self.seed).randn(*shape)

    def uniform(self, low: float, high: float, shape: tuple) -> np.ndarray:
        return _RANDOM_STATE(self.seed).uniform(low, high, shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rome", required=True, help="path to a clone of github.com/kmeng01/rome")
    ap.add_argument("--model", required=True, help="a GPT-2 Hugging Face directory (or hub name)")
    ap.add_argument("--facts", help="JSON list of {prompt, subject} (default: three known_1000-style facts)")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", type=int, default=10)
    args = ap.parse_args()
    facts = json.loads(Path(args.facts).read_text()) if args.facts else FACTS
    rome = Path(args.rome).resolve()
    sys.path.insert(0, str(rome))
    os.chdir(rome)  # ROME's util/globals.py reads globals.yml from the working directory
    rct = importlib.import_module("experiments.causal_trace")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rct.make_inputs.__defaults__ = (device,)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import interp
    from interp.methods.tracing import subject_embedding_std

    model_dir = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    hf = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    mt = rct.ModelAndTokenizer(model=hf, tokenizer=tok)
    m = interp.load_model(model_dir, device=device, prepend_bos=False)
    subjects = [f["subject"] for f in facts]
    nu_rome = rct.collect_embedding_std(mt, subjects)
    nu_ours = subject_embedding_std(m, subjects, weighting="records")
    print(f"nu: ROME collect_embedding_std {nu_rome:.8g}, interp noise_scale='records' {nu_ours:.8g}, "
          f"'subjects' {subject_embedding_std(m, subjects):.8g}")
    noise = 3 * nu_rome
    prompts = [{"id": f"f{i}", **f, "target": " x"} for i, f in enumerate(facts)]
    kw = dict(target=None, only_correct=False, samples=args.samples, window=args.window, noise=1.0,
              noise_scale=noise, noise_draws="rome")
    ours = interp.causal_trace(m, prompts, sites=("resid_post", "mlp_out", "attn_out"), severed="mlp_out",
                               **kw).table
    site_of = {None: "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
    cells, worst = 0, 0.0
    for rec in prompts:
        mine = ours[ours["prompt_id"] == rec["id"]]
        for kind, site in site_of.items():
            res = rct.calculate_hidden_flow(mt, rec["prompt"], rec["subject"], samples=args.samples, noise=noise,
                                            window=args.window, kind=kind)
            scores = res["scores"].numpy()  # [tokens, layers]: ROME's restored probability
            part = mine[(mine["site"] == site) & (mine["severed"] == "")]
            d = max(abs(r.target_prob - float(scores[r.position, r.layer])) for r in part.itertuples())
            d = max(d, abs(part["corrupted_target_prob"].iloc[0] - res["low_score"]),
                    abs(part["clean_target_prob"].iloc[0] - float(res["high_score"])))
            print(f"{rec['id']} kind={kind!s:5s} {scores.size:5d} cells  max abs diff {d:.2e}")
            cells, worst = cells + scores.size, max(worst, d)
    print(f"calculate_hidden_flow: {cells} cells, max abs diff {worst:.2e}")

    # severed (MLP frozen above the restored layer): ROME's trace_with_repatch as shipped, then restarted
    def repatch(rec: dict, restart: bool) -> np.ndarray:
        inp = rct.make_inputs(tok, [rec["prompt"]] * (args.samples + 1))
        with torch.no_grad():
            answer, _ = [d[0] for d in rct.predict_from_input(hf, inp)]
        b, e = rct.find_token_range(tok, inp["input_ids"][0], rec["subject"])
        n_layers = mt.num_layers
        original = rct.numpy.random.RandomState
        if restart:
            rct.numpy.random.RandomState = _RestartingRandomState
        try:
            table = np.zeros((inp["input_ids"].shape[1], n_layers))
            for t in range(table.shape[0]):
                for layer in range(n_layers):
                    frozen = [(t, rct.layername(hf, j, "mlp")) for j in range(layer + 1, n_layers)]
                    table[t, layer] = float(rct.trace_with_repatch(hf, inp, [(t, rct.layername(hf, layer))], frozen,
                                                                   answer, (b, e), noise=noise))
        finally:
            rct.numpy.random.RandomState = original
        return table

    for restart in (False, True):
        worst = 0.0
        for rec in prompts:
            table = repatch(rec, restart)
            part = ours[(ours["prompt_id"] == rec["id"]) & (ours["severed"] == "mlp_out")]
            worst = max(worst, max(abs(r.target_prob - table[r.position, r.layer]) for r in part.itertuples()))
        what = "generator restarted for the second pass" if restart else "as shipped"
        print(f"trace_with_repatch ({what}) vs interp severed='mlp_out': max abs diff {worst:.2e}")


if __name__ == "__main__":
    main()
