"""Command line: ``interp list``, ``interp run METHOD ...``, ``interp demo``, ``interp organisms train NAME``.

Errors print as one clear line (no traceback unless ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import InterpError


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_list(_args: argparse.Namespace) -> int:
    from .registry import list_methods

    for entry in list_methods():
        print(entry.describe())
        print()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .model import load_model
    from .prompts import PromptSet
    from .registry import require_method
    from .viz import save_html

    entry = require_method(args.method)
    params: dict[str, Any] = {}
    for item in args.set or []:
        if "=" not in item:
            raise InterpError(f"--set expects key=value, got {item!r}.")
        key, value = item.split("=", 1)
        if key not in entry.parameters:
            raise InterpError(f"{args.method} has no parameter {key!r}; it takes {', '.join(entry.parameters)}.")
        params[key] = _parse_value(value)
    prompts = PromptSet(args.prompts)
    out = Path(args.out)
    if args.ray:
        from .distributed import run_on_ray

        result = run_on_ray(entry.name, args.model, prompts, address=args.ray, workers=args.workers,
                            shard_size=args.shard_size or 64, out_dir=out / "shards",
                            load_kwargs={"device": args.device or "cpu"}, **params)
    elif args.shard_size:
        from .runs import run_resumable

        model = load_model(args.model, device=args.device)
        result = run_resumable(entry.name, model, prompts, out / "shards", shard_size=args.shard_size, **params)
    else:
        result = entry.function(load_model(args.model, device=args.device), prompts, **params)
    paths = result.save(out, args.method)
    fig_path = save_html(result.figure(), out / f"{args.method}.html")
    for p in [*paths.values(), fig_path]:
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    index = run_demo(Path(args.out), data_dir=Path(args.data) if args.data else None, quick=args.quick)
    print(f"Demo report: {index}")
    return 0


def cmd_organisms(args: argparse.Namespace) -> int:
    from .organisms.train import train_organism

    card = train_organism(args.name, args.out or f"data/organisms/{args.name}", steps=args.steps, seed=args.seed)
    print(json.dumps(card, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered methods").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="run a registered method and write its table and figure")
    run.add_argument("method")
    run.add_argument("--model", required=True, help="local Hugging Face directory or hub name")
    run.add_argument("--prompts", required=True, help="JSONL or CSV prompt file")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method parameter (JSON value)")
    run.add_argument("--out", required=True)
    run.add_argument("--device", default=None)
    run.add_argument("--shard-size", type=int, default=None,
                     help="write results in shards of this many prompts under OUT/shards; a rerun resumes")
    run.add_argument("--ray", default=None, metavar="ADDRESS|local",
                     help="shard the prompts over a Ray cluster (pip install 'interp[ray]')")
    run.add_argument("--workers", type=int, default=2, help="Ray workers (each loads the model once)")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="run the methods on the shipped organisms and write an HTML report")
    demo.add_argument("--out", default="results/demo")
    demo.add_argument("--data", default=None, help="the data directory (organisms and corpus); default: data/")
    demo.add_argument("--quick", action="store_true", help="a small, fast configuration")
    demo.set_defaults(func=cmd_demo)
    org = sub.add_parser("organisms", help="model organisms")
    org_sub = org.add_subparsers(dest="action", required=True)
    train = org_sub.add_parser("train", help="train an organism from scratch")
    train.add_argument("name")
    train.add_argument("--out", default=None)
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_organisms)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InterpError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"interp: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
