"""``python -m interp.organisms {train,corpus,evaluate}``.

    python -m interp.organisms train dense                  # -> data/organisms/dense (11 min on 2 cores; moe 7)
    python -m interp.organisms train moe --out /tmp/moe --steps 100
    python -m interp.organisms corpus                       # -> data/organisms/corpus/*.jsonl
    python -m interp.organisms evaluate data/organisms/dense
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from . import CORPUS_DIR, organism_dir
    from .planted import PLANTED
    from .train import ORGANISMS

    ap = argparse.ArgumentParser(prog="python -m interp.organisms", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train an organism (from scratch, or from the shipped organism its recipe's "
                                     "init names; writes a HF model dir + card.json)")  # fmt: skip
    t.add_argument("name", choices=sorted(ORGANISMS) + sorted(PLANTED))
    t.add_argument("--out", default=None, help="output directory (default: data/organisms/NAME)")
    t.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    t.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    c = sub.add_parser("corpus", help="write the corpus JSONL files")
    c.add_argument("--out", default=None, help="output directory (default: data/organisms/corpus)")
    c.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="measure the held-out metrics of a model directory")
    e.add_argument("model_dir")
    args = ap.parse_args(argv)

    if args.cmd == "train":
        from .train import train_organism

        out = args.out or organism_dir(args.name)
        if args.name in PLANTED:  # planted organisms: one thread, no time budget
            from .planted import train_planted

            card = train_planted(args.name, out, steps=args.steps, seed=args.seed, evaluate=not args.no_eval)
        else:
            card = train_organism(args.name, out, steps=args.steps, seed=args.seed, time_budget_s=args.time_budget,
                                  evaluate=not args.no_eval)  # fmt: skip
        summary = {k: card[k] for k in ("name", "steps", "train_time_s", "total_time_s", "n_params", "size_bytes")}
        summary["metrics"] = {k: v for k, v in card.get("metrics", {}).items() if not isinstance(v, list)}
        print(json.dumps(summary, indent=1))
    elif args.cmd == "corpus":
        from .corpus import write_corpus

        for name, path in write_corpus(args.out or CORPUS_DIR, seed=args.seed).items():
            print(f"{name}: {path}")
    elif args.cmd == "evaluate":
        from .evaluate import evaluate_organism

        card_path = Path(args.model_dir) / "card.json"
        name = json.loads(card_path.read_text()).get("name") if card_path.exists() else None
        if name in PLANTED:
            from .planted import evaluate_planted

            m = evaluate_planted(args.model_dir)
        else:
            m = evaluate_organism(args.model_dir)
        print(json.dumps({k: v for k, v in m.items() if not isinstance(v, list)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
