"""The method contract, checked over the whole registry: a method that joins the registry is covered here with
nothing else written.

For every registered method, on a tiny random fixture of its kind (llama: GQA; qwen2_moe: MoE with a shared
expert) and on the shipped organism it is meant for, run on held-out prompts of its declared corpus
(``interp.methods.checks``) with its declared cheap parameters:

- it declares its contract (schema, inputs, paper with arXiv ids, cost, figure, organism, corpus), and its
  parameter and column names are in the vocabulary (tests/test_glossary.py checks the glossary page itself);
- its table matches the schema (columns, kinds; the registry also checks this on every call) and its meta records
  the method, the bound parameters, the schema with its units, and the provenance;
- ``figure()``, ``top()`` and ``pivot()`` work with their defaults (top follows the schema's sign);
- CSV, Parquet and JSON round-trip exactly, the Result's class included;
- ``interp run`` gives the same table;
- a forward that raises part-way (and a metric or judge that raises, where the method takes one) leaves the
  model with the hooks it had;
- a sharded run (``interp.run_resumable``, 2 prompts a shard) equals the whole run.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

import interp
from interp import vocabulary
from interp.activations.hooks import hook_snapshot
from interp.cli import main
from interp.methods import checks
from interp.methods.registry import list_methods

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = list_methods()
FIXTURE = {"dense": "llama", "moe": "qwen2_moe"}
ARXIV = re.compile(r"arXiv[: ]\d{4}\.\d{4,5}")
PROVENANCE = ("model", "model_path", "dtype", "device", "weights_fingerprint", "seed", "torch_version",
              "transformers_version", "transformer_lens_version", "interp_version", "dataset_fingerprint")


@pytest.fixture(scope="module")
def organisms():
    cache: dict[str, interp.Model] = {}

    def get(name: str) -> interp.Model:
        if name not in cache:
            cache[name] = interp.load_model(ROOT / "data" / "organisms" / name, device="cpu")
        return cache[name]

    return get


@pytest.fixture(scope="module")
def float64_models(tiny_model_dirs):
    cache: dict[str, interp.Model] = {}

    def get(arch: str) -> interp.Model:
        if arch not in cache:
            cache[arch] = interp.load_model(tiny_model_dirs[arch], dtype="float64")
        return cache[arch]

    return get


_RUNS: dict[tuple[str, str], tuple] = {}


def run_entry(entry, model, key: str):
    """(inputs, params, result) of the entry's check run on ``model`` (cached per entry and model)."""
    if (entry.name, key) not in _RUNS:
        inputs, params = checks.check_call(entry, model)
        result = entry.function(model, *inputs, **params)
        _RUNS[(entry.name, key)] = (inputs, params, result)
    return _RUNS[(entry.name, key)]


def fixture_model(entry, models):
    return models(FIXTURE[entry.organism or "dense"])


# --- the declaration ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_declares_its_contract(entry):
    assert entry.schema is not None, f"{entry.name} declares no schema"
    assert entry.inputs in ("prompts", "pair")
    assert entry.figure is not None, f"{entry.name} declares no figure"
    assert entry.organism in ("dense", "moe") and entry.corpus in checks.CORPORA
    assert entry.cost.strip() and "forward" in entry.cost or "none" in entry.cost
    if entry.family != "core":
        assert ARXIV.search(entry.paper), f"{entry.name}: the paper names no arXiv id: {entry.paper!r}"
    unknown = [p for p in [*entry.input_names, *entry.parameters] if p not in vocabulary.PARAMETERS]
    assert not unknown, f"{entry.name}: parameters outside the vocabulary: {unknown}"
    columns = [*entry.schema.columns, *entry.schema.optional]
    assert not [c for c in columns if c not in vocabulary.COLUMNS], f"{entry.name}: columns outside the vocabulary"
    doc = inspect.getdoc(entry.function) or ""
    for section in ("Args:", "Returns:", "Example"):
        assert section in doc, f"{entry.name}: the docstring has no {section!r} section"
    if "Example (the check run" in doc:  # generated from the entry: the call the contract tests make
        assert f"interp.{entry.name}(model, " in doc
    sig = inspect.signature(entry.raw)
    for plumbing in ("subject_std", "allow_none_kept", "checkpoint_dir"):
        assert plumbing not in sig.parameters, f"{entry.name}: run plumbing {plumbing!r} in the user signature"


# --- a run, its table and meta -------------------------------------------------------------------------------
def check_result(entry, model, result, inputs, params):
    assert isinstance(result, interp.Result)
    if entry.result_class is not None:
        assert isinstance(result, entry.result_class)
    assert len(result.table) > 0, f"{entry.name}: empty table"
    entry.schema.check(result.table, where=entry.name)
    keys = list(entry.schema.keys)
    assert not result.table.duplicated(keys).any(), f"{entry.name}: keys {keys} do not identify the rows"
    meta = result.meta
    assert meta["method"] == entry.name
    assert meta["schema"] == entry.schema.to_dict() and meta["schema"]["unit"] == entry.schema.unit
    bound = entry.bind(model, *inputs, **params)
    assert meta["parameters"] == interp.results.result.jsonable_parameters(bound)
    assert set(meta["parameters"]) == set(entry.parameters)  # every parameter, defaults included
    missing = [k for k in PROVENANCE if k not in meta]
    assert not missing, f"{entry.name}: meta lacks {missing}"
    assert meta["model_path"] == str(Path(model.path).resolve())
    if "target_token" in result.table.columns:
        assert "target_id" in result.table.columns


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_runs_on_a_tiny_fixture(entry, models):
    model = fixture_model(entry, models)
    inputs, params, result = run_entry(entry, model, "fixture")
    check_result(entry, model, result, inputs, params)


METRIC_ENTRIES = [e for e in ENTRIES if "metric" in e.parameters]


def _user_logprob(logits, target, wrong):
    return logits.float().log_softmax(-1).gather(-1, target[:, None])[:, 0]


def test_methods_that_score_a_target_take_a_user_metric():
    """Every method that scores a target at the output takes ``metric=`` (the methods without one score no
    target, or their score is their paper's definition: see the glossary's ``metric``)."""
    scoring = {"activation_patching", "attribution_patching", "causal_trace", "relation_evidence",
               "context_masking", "block_experts", "shared_routed_contrast", "logit_lens"}
    assert scoring <= {e.name for e in METRIC_ENTRIES}


@pytest.mark.parametrize("entry", METRIC_ENTRIES, ids=[e.name for e in METRIC_ENTRIES])
def test_a_user_metric_is_accepted(entry, models):
    """A callable metric runs wherever a method takes one, the table keeps its schema, and the metric's values
    are in the table and its unit in meta."""
    model = fixture_model(entry, models)
    inputs, params = checks.check_call(entry, model)
    result = entry.function(model, *inputs, **{**params, "metric": _user_logprob})
    entry.schema.check(result.table, where=entry.name)
    assert result.meta["metric_unit"] == "the metric function's"
    if "metric_value" in entry.schema.optional:
        values = result.table["metric_value"]
        assert values.notna().all() and (values <= 1e-6).all(), f"{entry.name}: a log-probability above 0"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_runs_on_its_organism(entry, organisms):
    model = organisms(entry.organism)
    inputs, params, result = run_entry(entry, model, "organism")
    check_result(entry, model, result, inputs, params)


# --- views and exports ---------------------------------------------------------------------------------------
def check_views(entry, result):
    fig = result.figure()
    assert isinstance(fig, go.Figure) and len(fig.data) > 0
    assert "<div" in fig.to_html(include_plotlyjs=False, full_html=False)
    top = result.top()
    assert 0 < len(top) <= 10
    value = entry.schema.value
    values = pd.to_numeric(top[value], errors="coerce").dropna().astype(float)  # bool values: False < True
    if entry.schema.sign == "magnitude":
        values = values.abs()
    if len(values) > 1:
        diffs = values.diff().dropna()
        assert (diffs <= 1e-12).all() if entry.schema.sign != "lower" else (diffs >= -1e-12).all()
    grid = result.pivot()
    assert isinstance(grid, pd.DataFrame) and grid.size > 0
    check_interval_figure(entry, result)


# figures of methods with one row per prompt that draw each prompt, not a mean over prompts (no interval to show)
PER_PROMPT_FIGURES = {"predictions": "each prompt's top predictions"}


def check_interval_figure(entry, result):
    """A method with one row per prompt (prompt_id among its keys) draws means over prompts: its figure takes
    ``ci=`` and shows each mean's bootstrap interval (error bars, or the hover of a heatmap), reproducibly."""
    from interp.figures.viz import bar_top, check_convention

    # the default figure (bar_top) draws the top rows themselves, each one prompt's, not means
    if "prompt_id" not in entry.schema.keys or entry.name in PER_PROMPT_FIGURES or entry.figure is bar_top:
        return
    assert "ci" in inspect.signature(entry.figure).parameters, f"{entry.name}: its figure takes no ci="
    fig = result.figure(ci=0.9, n_boot=50, seed=1)
    assert not check_convention(fig), entry.name
    bars = [t for t in fig.data if getattr(t, "error_y", None) is not None and t.error_y.array is not None]
    hovers = [t for t in fig.data if "interval" in (getattr(t, "hovertemplate", None) or "")]
    assert bars or hovers, f"{entry.name}: figure(ci=0.9) shows no interval"
    for t in bars:
        assert all(x >= -1e-9 for x in [*t.error_y.array, *(t.error_y.arrayminus or [])]), entry.name
    assert fig.to_json() == result.figure(ci=0.9, n_boot=50, seed=1).to_json(), entry.name


def check_round_trip(result, tmp_path):
    for ext in ("csv", "parquet", "json"):
        path = getattr(result, f"to_{ext}")(tmp_path / f"r.{ext}")
        back = interp.Result.read(path)
        assert type(back) is type(result), ext
        pd.testing.assert_frame_equal(back.table, result.table, check_exact=True)
        assert back.meta == json.loads(json.dumps(result.meta)), ext


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_figure_top_pivot_with_defaults(entry, models):
    check_views(entry, run_entry(entry, fixture_model(entry, models), "fixture")[2])


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_exports_round_trip_exactly(entry, models, tmp_path):
    check_round_trip(run_entry(entry, fixture_model(entry, models), "fixture")[2], tmp_path)


# --- the command line ----------------------------------------------------------------------------------------
def _write_prompts(path: Path, prompts) -> Path:
    records = prompts.records if isinstance(prompts, interp.PromptSet) else prompts
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def cli_args(entry, model, inputs, params, tmp_path) -> list[str]:
    argv = ["run", entry.name, "--model", str(model.path), "--out", str(tmp_path / "cli"),
            "--prompts", str(_write_prompts(tmp_path / "prompts.jsonl", inputs[0]))]
    if entry.inputs == "pair":
        argv += ["--corrupt", str(_write_prompts(tmp_path / "corrupt.jsonl", inputs[1]))]
    for key, value in params.items():
        if key.endswith("prompts"):
            value = str(_write_prompts(tmp_path / f"{key}.jsonl", value))
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


def check_cli(entry, model, inputs, params, result, tmp_path):
    assert main(cli_args(entry, model, inputs, params, tmp_path)) == 0
    back = interp.Result.read(tmp_path / "cli" / f"{entry.name}.parquet")
    pd.testing.assert_frame_equal(back.table, result.table, check_exact=True)
    assert back.meta["parameters"] == result.meta["parameters"]
    assert (tmp_path / "cli" / f"{entry.name}.html").exists()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_cli_gives_the_same_table(entry, models, tmp_path):
    model = fixture_model(entry, models)
    inputs, params, result = run_entry(entry, model, "fixture")
    check_cli(entry, model, inputs, params, result, tmp_path)


# --- hooks after an exception --------------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


def count_and_raise(model, raise_at: int | None):
    """A forward hook on the first block (every forward runs it, also one stopped early after a captured hook)
    that counts its calls and raises at call ``raise_at``."""
    calls = {"n": 0}

    def hook(_module, _inputs, _output):
        calls["n"] += 1
        if raise_at is not None and calls["n"] >= raise_at:
            raise Boom("a forward that fails part-way")

    return calls, model.bridge.blocks[0].register_forward_hook(hook)


def check_hooks_after_failures(entry, model, inputs, params):
    before = hook_snapshot(model)
    calls, handle = count_and_raise(model, None)
    try:
        entry.function(model, *inputs, **params)
    finally:
        handle.remove()
    assert calls["n"] >= 1, f"{entry.name} never ran a forward"
    _, handle = count_and_raise(model, max(1, calls["n"] // 2 + 1))
    try:
        with pytest.raises(Boom):
            entry.function(model, *inputs, **params)
    finally:
        handle.remove()
    assert hook_snapshot(model) == before, f"{entry.name} left hooks behind after a failing forward"
    for name in ("metric", "judge"):
        if name in entry.parameters:
            with pytest.raises(Exception, match="user callable fails"):
                entry.function(model, *inputs, **{**params, name: _fails_in_the_run(name)})
            assert hook_snapshot(model) == before, f"{entry.name} left hooks behind after its {name} raised"


def _fails_in_the_run(name: str):
    """A metric that passes the up-front check (zero logits) and raises on real logits; a judge that raises."""
    if name == "judge":
        def judge(_response: str) -> bool:
            raise RuntimeError("the user callable fails")
        return judge

    def metric(logits, target, wrong):
        if bool((logits != 0).any()):
            raise RuntimeError("the user callable fails")
        return logits.sum(-1) * 0.0

    return metric


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_no_hook_is_left_after_an_exception(entry, models):
    model = fixture_model(entry, models)
    inputs, params, _ = run_entry(entry, model, "fixture")
    check_hooks_after_failures(entry, model, inputs, params)


# --- sharded == whole ----------------------------------------------------------------------------------------
def check_sharded(entry, model, tmp_path):
    inputs, params = checks.check_call(entry, model)
    if "progress" in entry.parameters:  # run_resumable(progress=False) passes it on to the method
        params = {**params, "progress": False}
    whole = entry.function(model, *inputs, **params)
    kw = {k: v for k, v in params.items() if k != "progress"}  # run_resumable's progress reaches the method
    if entry.inputs == "pair":
        kw["corrupt"] = inputs[1]
    sharded = interp.run_resumable(entry.name, model, inputs[0], tmp_path / "run", shard_size=2, progress=False, **kw)
    assert type(sharded) is type(whole)
    a, b = sharded.table.reset_index(drop=True), whole.table.reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6, check_dtype=False)
    assert sharded.meta["parameters"] == whole.meta["parameters"]
    assert sharded.meta["dataset_fingerprint"] == whole.meta["dataset_fingerprint"]
    assert sharded.meta["n_prompts"] == whole.meta["n_prompts"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_sharded_run_equals_the_whole_run(entry, float64_models, tmp_path):
    # float64: a different split of the prompts into batches moves float32 values at the 1e-7 level
    check_sharded(entry, float64_models(FIXTURE[entry.organism or "dense"]), tmp_path)


# --- the README's "Adding a method" --------------------------------------------------------------------------
def readme_method_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Adding a method of your own", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_adding_a_method_runs_end_to_end(models, tmp_path):
    """The README's example, verbatim, joins the registry and passes every check above, CLI included."""
    module = tmp_path / "readme_method.py"
    module.write_text(readme_method_code())
    name = re.search(r'register_method\(\s*"(\w+)"', readme_method_code()).group(1)
    prompts = _write_prompts(tmp_path / "p.jsonl", checks.corpus_prompts("factual", 4))
    out = tmp_path / "readme_cli"
    model = models("llama")
    try:
        assert main(["--import", str(module), "run", name, "--model", str(model.path), "--prompts", str(prompts),
                     "--out", str(out)]) == 0
        entry = interp.methods.registry.require_method(name)
        inputs, params = checks.check_call(entry, model)
        result = entry.function(model, *inputs, **params)
        check_result(entry, model, result, inputs, params)
        check_views(entry, result)
        check_round_trip(result, tmp_path)
        cli = interp.Result.read(out / f"{name}.parquet")
        pd.testing.assert_frame_equal(cli.table, result.table, check_exact=True)
        check_hooks_after_failures(entry, model, inputs, params)
        check_sharded(entry, model, tmp_path)
        assert not math.isnan(float(result.table[entry.schema.value].sum()))
    finally:
        interp.methods.registry._REGISTRY.pop(name, None)
