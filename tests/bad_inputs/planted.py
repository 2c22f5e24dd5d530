"""Bad inputs of the planted organisms and their benchmark (interp.organisms.planted / .benchmark): each a clear
error before any compute."""

from interp.errors import ParameterError
from interp.organisms.benchmark import run_benchmark
from interp.organisms.planted import train_planted

CASES = [
    ("benchmark of an organism that is not shipped",
     lambda m, t, d: run_benchmark(organisms=("planted-nope",), data_dir=t),
     ParameterError, r"organisms=\['planted-nope'\]: not shipped"),
    ("training an unknown planted organism", lambda m, t, d: train_planted("planted-nope", t / "x"),
     ParameterError, "unknown planted organism 'planted-nope'"),
]  # fmt: skip
