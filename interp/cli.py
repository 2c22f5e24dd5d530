"""Command line: ``interp list``, ``interp run METHOD ...``, ``interp glossary``, ``interp demo``,
``interp organisms train NAME``.

``interp run METHOD`` builds its options from the method's registry entry (``interp run METHOD --help`` lists every
parameter with its type and default and marks the required ones). ``--import MODULE`` (a module name or a ``.py``
file, repeatable) and the ``interp.methods`` entry-point group make a user's own methods runnable. ``--debug``,
``--dtype`` and ``--device`` work anywhere on the line. Every mistake is one line on stderr and a non-zero exit,
caught before the model is loaded where it can be; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from .errors import InterpError

GLOBAL_FLAGS = {"--debug": 0, "--dtype": 1, "--device": 1, "--import": 1}


class CLIError(InterpError):
    """A mistake on the command line (unknown option, missing parameter, bad value)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (raised, printed by :func:`main`), not usage + message."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise CLIError(f"{self.prog}: {message}")


def split_globals(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Take ``--debug``, ``--dtype X``, ``--device X`` and ``--import X`` from anywhere on the line."""
    found: dict[str, Any] = {"debug": False, "dtype": None, "device": None, "import": []}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in GLOBAL_FLAGS and arg != "--":
            key = name[2:]
            if GLOBAL_FLAGS[name] == 0:
                if eq:
                    raise CLIError(f"interp: {name} takes no value.")
                found[key] = True
            else:
                if not eq:
                    if i + 1 >= len(argv):
                        raise CLIError(f"interp: {name} needs a value.")
                    i += 1
                    value = argv[i]
                if key == "import":
                    found["import"].append(value)
                else:
                    found[key] = value
        else:
            rest.append(arg)
        i += 1
    return found, rest


def import_user_module(spec: str) -> None:
    """Import a user's module (a dotted name, importable from the working directory, or a path to a .py file) so
    that the methods it registers join the registry."""
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise CLIError(f"interp: --import {spec!r}: no such file.")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        sys.modules[path.stem] = module
        try:
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:
            sys.modules.pop(path.stem, None)
            raise CLIError(f"interp: --import {spec!r} failed: {type(exc).__name__}: {exc}") from exc
        return
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise CLIError(f"interp: --import {spec!r}: cannot import it ({exc}).") from exc
    except Exception as exc:
        raise CLIError(f"interp: --import {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def parse_value(text: str) -> Any:
    """A parameter value from the command line: JSON when it parses (numbers, lists, true / null ...), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def method_parser(entry: Any) -> _Parser:
    """The options of ``interp run METHOD``, from the method's registry entry."""
    pair = entry.inputs == "pair"
    parser = _Parser(
        prog=f"interp run {entry.name}",
        description=f"{entry.summary}\n\npaper: {entry.paper}\ncost: {entry.cost}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--model", required=True, help="local Hugging Face directory or hub name")
    io.add_argument("--prompts", required=True,
                    help="JSONL, CSV or JSON prompt file" + (" (the clean prompts of each pair)" if pair else ""))
    if pair:
        io.add_argument("--corrupt", required=True,
                        help="prompt file of the corrupt prompts, row by row with --prompts")
    io.add_argument("--out", required=True, help="directory for the table (CSV, Parquet, JSON) and the figure")
    io.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                    help="a method parameter (JSON value), as an alternative to its own option")
    io.add_argument("--shard-size", type=int, default=None,
                    help="write results in shards of this many prompts under OUT/shards; a rerun resumes")
    io.add_argument("--ray", default=None, metavar="ADDRESS|local",
                    help="shard the prompts over a Ray cluster (pip install 'interp[ray]')")
    io.add_argument("--workers", type=int, default=2, help="Ray workers (each loads the model once)")
    io.add_argument("--overwrite", action="store_true", help="replace this method's earlier files in --out")
    io.add_argument("--figure-format", choices=("html", "png", "svg", "pdf"), default="html",
                    help="also save the figure in this format (html is always written; png / svg / pdf need "
                         "pip install 'interp[figures]')")
    group = parser.add_argument_group(f"parameters of {entry.name} (values are JSON where they parse, else text)")
    for name, default in entry.parameters.items():
        kind = entry.annotations.get(name) or "value"
        required = default is inspect.Parameter.empty
        text = f"{kind}; REQUIRED" if required else f"{kind}; default: {default!r}"
        flags = [_option(name)] + ([f"--{name}"] if "_" in name else [])
        group.add_argument(*flags, dest=f"param_{name}", default=None, metavar="VALUE", help=text)
    return parser


def method_params(entry: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The parameters given on the line (own options and --set), checked against the signature."""
    params: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise CLIError(f"interp run {entry.name}: --set expects KEY=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        if key not in entry.parameters:
            raise CLIError(f"interp run {entry.name}: no parameter {key!r}; it takes {', '.join(entry.parameters)}.")
        params[key] = parse_value(value)
    for name in entry.parameters:
        value = getattr(args, f"param_{name}")
        if value is not None:
            params[name] = parse_value(value)
    missing = [p for p in entry.required if p not in params]
    if missing:
        raise CLIError(f"interp run {entry.name}: missing required parameter {', '.join(_option(p) for p in missing)} "
                       f"(see interp run {entry.name} --help).")
    return params


def _prompt_sets(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters that hold a further prompt set (``subtask_prompts`` ...) are read from their file."""
    from .prompts import PromptSet

    return {k: PromptSet(v) if k.endswith("prompts") and isinstance(v, str) else v for k, v in params.items()}


def cmd_list(_args: argparse.Namespace, _g: dict[str, Any]) -> int:
    from .methods.registry import list_methods

    for entry in list_methods():
        print(entry.describe())
        print()
    return 0


def cmd_glossary(args: argparse.Namespace, _g: dict[str, Any]) -> int:
    from .vocabulary import glossary_markdown, write_glossary

    if args.out:
        print(write_glossary(args.out))
    else:
        print(glossary_markdown())
    return 0


def cmd_run(argv: list[str], g: dict[str, Any]) -> int:
    from .methods.registry import require_method

    if not argv or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            from .methods.registry import list_methods

            print("usage: interp run METHOD --model DIR --prompts FILE --out DIR [parameters]\n\nmethods: "
                  + ", ".join(e.name for e in list_methods()) + "\n\ninterp run METHOD --help lists its parameters.")
            return 0
        raise CLIError("interp run: name a method first (interp list shows them), e.g. interp run predictions ...")
    entry = require_method(argv[0])
    args = method_parser(entry).parse_args(argv[1:])
    params = _prompt_sets(method_params(entry, args))
    return run_method(entry, args, params, g)


def run_method(entry: Any, args: argparse.Namespace, params: dict[str, Any], g: dict[str, Any]) -> int:
    """Read the prompts, load the model, run the method (whole, sharded or on Ray), write table and figure."""
    from .figures.viz import save_html
    from .model.loading import load_model
    from .prompts import PromptSet
    from .results.outputs import check_result_files

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"interp run {entry.name}: --out {str(out)!r} is a file; give a directory.")
    names = [f"{entry.name}{ext}" for ext in (".csv", ".csv.meta.json", ".parquet", ".json", ".html")]
    if args.figure_format != "html":
        _check_image_export(args.figure_format)
        names.append(f"{entry.name}.{args.figure_format}")
    check_result_files([out / n for n in names], overwrite=args.overwrite, what=f"results of {entry.name}")
    prompts = PromptSet(args.prompts)
    if entry.inputs == "pair":
        params = {"corrupt": PromptSet(args.corrupt), **params}
    load_kw = {k: g[k] for k in ("device", "dtype") if g.get(k) is not None}
    if args.ray:
        from .runs.distributed import run_on_ray

        result = run_on_ray(entry.name, args.model, prompts, address=args.ray, workers=args.workers,
                            shard_size=args.shard_size or 64, out_dir=out / "shards",
                            load_kwargs={"device": "cpu", **load_kw}, **params)
    elif args.shard_size:
        from .runs.resumable import run_resumable

        result = run_resumable(entry.name, load_model(args.model, **load_kw), prompts, out / "shards",
                               shard_size=args.shard_size, **params)
    else:
        result = entry.function(load_model(args.model, **load_kw), prompts, **params)
    paths = result.save(out, entry.name)
    fig = result.figure()
    figures = [save_html(fig, out / f"{entry.name}.html")]
    if args.figure_format != "html":
        from .figures.viz import save_figure

        figures.append(save_figure(fig, out / f"{entry.name}.{args.figure_format}"))
    for p in [*paths.values(), *figures]:
        print(p)
    return 0


def _check_image_export(fmt: str) -> None:
    """Before any compute: an image format needs kaleido."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise CLIError(f"interp run: --figure-format {fmt} needs kaleido: pip install 'interp[figures]'.") from None


def cmd_demo(args: argparse.Namespace, _g: dict[str, Any]) -> int:
    from .figures.demo import run_demo

    index = run_demo(Path(args.out), data_dir=Path(args.data) if args.data else None, quick=args.quick,
                     overwrite=args.overwrite)
    print(f"Demo report: {index}")
    return 0


def cmd_organisms(args: argparse.Namespace, _g: dict[str, Any]) -> int:
    from .organisms.planted import PLANTED, train_planted
    from .organisms.train import train_organism

    train = train_planted if args.name in PLANTED else train_organism
    card = train(args.name, args.out or f"data/organisms/{args.name}", steps=args.steps, seed=args.seed)
    print(json.dumps(card, indent=1))
    return 0


def cmd_bench(args: argparse.Namespace, _g: dict[str, Any]) -> int:
    from .organisms.benchmark import run_benchmark, shipped_planted, to_markdown, write_benchmark

    organisms = tuple(args.organisms.split(",")) if args.organisms else shipped_planted()
    if args.readme:  # a README without the table's block fails now, not after minutes of benchmark
        from .organisms.benchmark import readme_block

        readme_block(Path(args.readme).read_text())
    table = run_benchmark(organisms=organisms, natural=not args.no_natural, seed=args.seed, quick=args.quick,
                          n_random=args.n_random)  # fmt: skip
    meta = {"organisms": organisms, "natural": not args.no_natural, "seed": args.seed, "quick": args.quick,
            "n_random": args.n_random}  # fmt: skip
    paths = write_benchmark(table, args.out, meta)
    print(to_markdown(table))
    print(f"Benchmark table: {paths['md']} (CSV: {paths['csv']})")
    if args.readme:
        from .organisms.benchmark import read_benchmark, readme_table, replace_readme_block
        from .results.atomic import write_text

        readme = Path(args.readme)
        # from the CSV as written, so the README's copy is what tests/test_planted_benchmark.py re-derives
        write_text(readme, replace_readme_block(readme.read_text(), readme_table(read_benchmark(paths["csv"]))))
        print(f"README table: {readme}")
    return 0


def build_parser() -> _Parser:
    parser = _Parser(prog="interp", description=(__doc__ or "").splitlines()[0],
                     epilog="Global options, anywhere on the line: --debug (full tracebacks), --dtype D, --device D, "
                            "--import MODULE (a module or .py file that registers methods; repeatable).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the registered methods").set_defaults(func=cmd_list)
    sub.add_parser("run", help="run a registered method and write its table and figure (interp run METHOD --help)",
                   add_help=False)
    glossary = sub.add_parser("glossary", help="print (or write) the glossary of parameters, columns and methods")
    glossary.add_argument("--out", default=None, help="write it to this file (e.g. docs/glossary.md)")
    glossary.set_defaults(func=cmd_glossary)
    demo = sub.add_parser("demo", help="run the methods on the shipped organisms and write an HTML report")
    demo.add_argument("--out", default="results/demo")
    demo.add_argument("--data", default=None, help="the data directory (organisms and corpus); default: data/")
    demo.add_argument("--quick", action="store_true", help="a small, fast configuration")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an earlier demo report in --out (only the files the demo wrote)")
    demo.set_defaults(func=cmd_demo)
    org = sub.add_parser("organisms", help="model organisms")
    org_sub = org.add_subparsers(dest="action", required=True, parser_class=_Parser)
    train = org_sub.add_parser("train", help="train an organism from scratch")
    train.add_argument("name")
    train.add_argument("--out", default=None)
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=cmd_organisms)
    bench = sub.add_parser("bench", help="score the methods on the planted organisms' known sites")
    bench.add_argument("--out", default="results/bench")
    bench.add_argument("--organisms", default=None, help="comma-separated planted organisms (default: all shipped)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--n-random", type=int, default=20, help="random sets of the same size per found set")
    bench.add_argument("--quick", action="store_true", help="fewer prompts")
    bench.add_argument("--no-natural", action="store_true", help="skip the natural organisms (dense, moe)")
    bench.add_argument("--readme", default=None,
                       help="also write the table into this file's planted-benchmark block (e.g. README.md)")
    bench.set_defaults(func=cmd_bench)
    return parser


def _dispatch(argv: list[str], g: dict[str, Any]) -> int:
    for spec in g["import"]:
        import_user_module(spec)
    if argv and argv[0] == "run":
        return cmd_run(argv[1:], g)
    args = build_parser().parse_args(argv)
    return int(args.func(args, g) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        g, rest = split_globals(argv)
        return _dispatch(rest, g)
    except SystemExit as exc:  # --help, or argparse's own exit
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        if debug:
            raise
        print("interp: interrupted", file=sys.stderr)
        return 130
    except (InterpError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if debug:
            raise
        print(f"interp: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected failure: still one line, with its type
        if debug:
            raise
        print(f"interp: error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
