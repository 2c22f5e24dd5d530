"""Shared pytest fixtures: tiny locally-built models (see ``interp/model/fixtures.py``).

Fixtures (all session-scoped, so each model is built and booted at most once per test run):

``tiny_model_dirs``
    ``dict[str, pathlib.Path]``: architecture name -> absolute directory holding a tiny
    random-init HF model + tokenizer, for every name in ``interp.model.fixtures.ARCHITECTURES``.
``bridges``
    ``bridges(arch) -> TransformerBridge``: boots ``tiny_model_dirs[arch]`` on CPU on first use
    and caches it.  The bridge is shared between tests: do not leave hooks on it or edit its
    weights (use ``fresh_bridge`` for that).
``fresh_bridge``
    ``fresh_bridge(arch) -> TransformerBridge``: a new, uncached boot (for tests that mutate).
``hf_models``
    ``hf_models(arch) -> PreTrainedModel``: the same checkpoint loaded with plain transformers
    (eager attention, eval mode), cached.  Reference for exactness tests.
``models``
    ``models[arch]`` (or ``models(arch)``) -> ``interp.Model``: the interp model of ``tiny_model_dirs[arch]``,
    loaded on first use and cached for the session (float32; the batching test loads its own float64 ones).
``tiny_tokenizer``
    the fixture tokenizer (``PreTrainedTokenizerFast``; adds no special tokens by itself).
"""

from __future__ import annotations

import pytest

from interp.model.fixtures import ARCHITECTURES, build_all_tiny_models, train_tiny_tokenizer


def boot_bridge(path):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(str(path), device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    return build_all_tiny_models(tmp_path_factory.mktemp("tiny_models"), archs=ARCHITECTURES)


@pytest.fixture(scope="session")
def bridges(tiny_model_dirs):
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = boot_bridge(tiny_model_dirs[arch])
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def fresh_bridge(tiny_model_dirs):
    return lambda arch: boot_bridge(tiny_model_dirs[arch])


@pytest.fixture(scope="session")
def hf_models(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    cache = {}

    def get(arch: str):
        if arch not in cache:
            model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dirs[arch]), attn_implementation="eager")
            cache[arch] = model.eval()
        return cache[arch]

    return get


class LoadedModels:
    """interp models of the tiny fixtures, loaded on first use and shared by the session: ``models[arch]`` or
    ``models(arch)``. Shared like ``bridges``: tests leave no hooks on them and do not edit their weights."""

    def __init__(self, dirs):
        self.dirs, self.cache = dirs, {}

    def __getitem__(self, arch: str):
        if arch not in self.cache:
            import interp

            self.cache[arch] = interp.load_model(self.dirs[arch])
        return self.cache[arch]

    __call__ = __getitem__


@pytest.fixture(scope="session")
def models(tiny_model_dirs):
    return LoadedModels(tiny_model_dirs)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tiny_tokenizer()


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), each worker computes on one thread: two workers of two
    threads each on a 2-core machine would oversubscribe it."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
