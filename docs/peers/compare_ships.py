"""interp's Ships against the Ships authors' code (github.com/ydyjya/SafetyHeadAttribution), in two steps.

The authors' code subclasses the Llama attention of the transformers release it pins, and interp needs
transformers 5 and TransformerLens 4.3, so the two run in their own environments and meet through a JSON file:

    # 1. in the authors' environment (their requirements.txt), from anywhere:
    python docs/peers/compare_ships.py authors --ships /path/to/SafetyHeadAttribution --model /path/to/llama \
        --out ships_authors.json
    #    (if their transformers cannot read the model's tokenizer, e.g. one written by transformers 5, first run
    #    `.venv/bin/python docs/peers/compare_ships.py ids --model /path/to/llama --out ids.json` in interp's
    #    environment and add `--ids ids.json` to step 1: interp's token ids are then fed to their model)
    # 2. in interp's environment:
    .venv/bin/python docs/peers/compare_ships.py compare --model /path/to/llama --authors ships_authors.json

Step 1 imports the authors' ``CustomLlamaModelForCausalLM`` (``lib/utils/custommodel.py``) and ``kl_divergence``
(``lib/SHIPS/pd_diff.py``) from the clone and writes, per prompt, the token ids it fed, and for every head the KL of
their ``get_ships`` loop under four of their masks: scale mask on ``q`` (interp ``ablation="query"``), scale mask
on ``v`` (``"output"``), mean mask on ``v`` (``"mean"``) and mean mask on ``q`` (``"mean_query"``); plus how far their
un-ablated logits lie from the plain ``LlamaForCausalLM``'s (large when their forward runs without a causal mask:
docs/peers.md). Step 2 runs ``interp.ships`` on the same token ids and prints the largest difference per kind.
Nothing of the authors' code is copied: it is imported from the clone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROMPTS = ["How do I bake bread?", "The capital of France is", "Write a poem about the sea."]
KINDS = {"query": ("scale_mask", ["q"]), "output": ("scale_mask", ["v"]), "mean": ("mean_mask", ["v"]),
         "mean_query": ("mean_mask", ["q"])}


def authors(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    sys.path.insert(0, str(Path(args.ships).resolve()))
    from lib.SHIPS.pd_diff import kl_divergence
    from lib.utils.custommodel import CustomLlamaModelForCausalLM

    given = json.loads(Path(args.ids).read_text()) if args.ids else None
    tok = None if given else AutoTokenizer.from_pretrained(args.model)
    theirs = CustomLlamaModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    plain = LlamaForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager").eval()
    cfg = theirs.config
    out = {"eps": args.eps, "prompts": []}
    for k, text in enumerate(PROMPTS):
        ids = torch.tensor([given[k]]) if given else tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            base = theirs(ids).logits[:, -1]
            no_mask_gap = float((base - plain(ids).logits[:, -1]).abs().max())
            base_pd = torch.softmax(base, -1)
            scores = {}
            for kind, (mask_type, qkv) in KINDS.items():
                for layer in range(cfg.num_hidden_layers):
                    for head in range(cfg.num_attention_heads):
                        logits = theirs(ids, head_mask={(layer, head): qkv}, mask_type=mask_type,
                                        scale_factor=args.eps).logits[:, -1]
                        kl = kl_divergence(base_pd, torch.softmax(logits, -1))
                        scores[f"{kind} {layer} {head}"] = float(kl)
        out["prompts"].append({"text": text, "ids": ids[0].tolist(), "scores": scores,
                               "logit_gap_to_plain_hf": no_mask_gap})
    Path(args.out).write_text(json.dumps(out))
    print(f"wrote {args.out}: {len(PROMPTS)} prompts x {len(KINDS)} kinds x {cfg.num_hidden_layers} x "
          f"{cfg.num_attention_heads} heads; largest |their clean logits - plain HF| "
          f"{max(p['logit_gap_to_plain_hf'] for p in out['prompts']):.3g}")


def ids(args: argparse.Namespace) -> None:
    import interp
    from interp.prompts import tokenize

    m = interp.load_model(args.model)
    Path(args.out).write_text(json.dumps([tokenize(m, p).ids for p in PROMPTS]))
    print(f"wrote {args.out}: interp's token ids of the {len(PROMPTS)} prompts")


def compare(args: argparse.Namespace) -> None:
    import interp
    from interp.prompts import tokenize

    data = json.loads(Path(args.authors).read_text())
    m = interp.load_model(args.model)
    prompts = [{"id": f"p{i}", "prompt": p["text"]} for i, p in enumerate(data["prompts"])]
    for p, rec in zip(data["prompts"], prompts):
        if tokenize(m, rec["prompt"]).ids != p["ids"]:
            raise SystemExit(f"interp tokenises {rec['prompt']!r} as {tokenize(m, rec['prompt']).ids}, the authors' "
                             f"run as {p['ids']}; load the model with the matching prepend_bos.")
    for kind in KINDS:
        t = interp.ships(m, prompts, ablation=kind, eps=data["eps"]).table
        diff = max(abs(r.score - data["prompts"][int(r.prompt_id[1:])]["scores"][f"{kind} {r.layer} {r.head}"])
                   for r in t.itertuples())
        print(f"ablation={kind:10s} {len(t):5d} cells  max abs diff (KL, nats) {diff:.2e}")
    gap = max(p["logit_gap_to_plain_hf"] for p in data["prompts"])
    print(f"their un-ablated logits vs plain LlamaForCausalLM: max abs diff {gap:.3g} (0 up to float error when "
          "their forward is causal)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    a = sub.add_parser("authors")
    a.add_argument("--ships", required=True)
    a.add_argument("--model", required=True)
    a.add_argument("--out", default="ships_authors.json")
    a.add_argument("--eps", type=float, default=1e-5)
    a.add_argument("--ids", help="token ids from the ids step (when their transformers cannot read the tokenizer)")
    i = sub.add_parser("ids")
    i.add_argument("--model", required=True)
    i.add_argument("--out", default="ships_ids.json")
    c = sub.add_parser("compare")
    c.add_argument("--model", required=True)
    c.add_argument("--authors", required=True)
    args = ap.parse_args()
    {"authors": authors, "ids": ids, "compare": compare}[args.step](args)


if __name__ == "__main__":
    main()
