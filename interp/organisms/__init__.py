"""Model organisms: small LMs trained offline on a seeded synthetic corpus with known behaviours.

* :mod:`interp.organisms.corpus` - the corpus (factual recall, safety refusals, composite tasks);
* :mod:`interp.organisms.tokenizer` - the byte-level BPE trained on it;
* :mod:`interp.organisms.train` - :func:`train_organism` (``dense`` Llama/GQA, ``moe`` Qwen2-MoE);
* :mod:`interp.organisms.evaluate` - :func:`evaluate_organism` (held-out metrics, plain Hugging Face).

The shipped organisms live in ``data/organisms/<name>/`` and the corpus in ``data/organisms/corpus/``;
see ``docs/organisms.md``.  Submodules are imported lazily so that importing this package is cheap.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ORGANISMS_DIR = REPO_ROOT / "data" / "organisms"
CORPUS_DIR = ORGANISMS_DIR / "corpus"
SHIPPED = ("dense", "moe")

__all__ = ["CORPUS_DIR", "ORGANISMS_DIR", "SHIPPED", "data_path", "evaluate_organism", "organism_dir",
           "train_organism"]


def data_path(*parts: str) -> Path:
    """A path under the project's data directory, whatever the working directory (a notebook started in
    ``notebooks/``, a script elsewhere): ``data_path("organisms", "dense")``, ``data_path("organisms", "corpus",
    "factual.jsonl")``."""
    return REPO_ROOT.joinpath("data", *parts)


def organism_dir(name: str) -> Path:
    """Directory of a shipped organism (``data/organisms/<name>``)."""
    return ORGANISMS_DIR / name


def train_organism(name, out_dir, *, steps=None, seed=0, time_budget_s=None, **kwargs) -> dict:
    """See :func:`interp.organisms.train.train_organism`."""
    from .train import train_organism as _train

    return _train(name, out_dir, steps=steps, seed=seed, time_budget_s=time_budget_s, **kwargs)


def evaluate_organism(model_dir, **kwargs) -> dict:
    """See :func:`interp.organisms.evaluate.evaluate_organism`."""
    from .evaluate import evaluate_organism as _evaluate

    return _evaluate(model_dir, **kwargs)
