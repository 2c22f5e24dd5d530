"""Bad inputs of the planted organisms and their benchmark (interp.organisms.planted / .benchmark): each a clear
error before any compute."""

from interp.errors import ParameterError
from interp.organisms.benchmark import run_benchmark
from interp.organisms.planted import train_planted
from interp.results.result import ResultFileError


def _bench_into_readme_without_block(tmp):
    from interp.cli import build_parser

    readme = tmp / "README.md"
    readme.write_text("a README with no benchmark block\n")
    args = build_parser().parse_args(["bench", "--out", str(tmp / "b"), "--readme", str(readme)])
    return args.func(args, {})


CASES = [
    ("benchmark of an organism that is not shipped",
     lambda m, t, d: run_benchmark(organisms=("planted-nope",), data_dir=t),
     ParameterError, r"organisms=\['planted-nope'\]: not shipped"),
    ("training an unknown planted organism", lambda m, t, d: train_planted("planted-nope", t / "x"),
     ParameterError, "unknown planted organism 'planted-nope'"),
    ("benchmark written into a README without its block", lambda m, t, d: _bench_into_readme_without_block(t),
     ResultFileError, "no '<!-- planted-benchmark:begin -->'"),
]  # fmt: skip
