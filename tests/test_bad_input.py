"""The bad-input catalogue: every input a user can get wrong, the clear error it gets (type and message),
raised before any compute, with nothing written half-way. The core's cases are below; each method family adds
its own in tests/bad_inputs/<family>.py (a CASES list: (case id, fn(model, tmp_path, model_dirs), error type,
message pattern)), where ``model`` is the tiny llama fixture (GQA, 3 layers, 4 heads)."""

import json
import math

import pytest

import interp
from interp.cli import CLIError, main
from interp.errors import (
    DeviceError,
    HookNameError,
    ModelLoadError,
    ParameterError,
    PromptError,
    SpanError,
    TargetTokenWarning,
)

GOOD = [{"id": "paris", "prompt": "The capital of France is", "target": " Paris", "subject": "France"}]


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return interp.load_model(tiny_model_dirs["llama"])


def no_tokenizer_dir(tmp_path, src):
    d = tmp_path / "no_tok"
    d.mkdir()
    for f in src.iterdir():
        if "token" not in f.name and "special" not in f.name:
            (d / f.name).write_bytes(f.read_bytes())
    return d


def unsupported_dir(tmp_path, src):
    d = tmp_path / "weird"
    d.mkdir()
    for f in src.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["FrobnicatorForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def cli(argv: list[str]) -> None:
    """Run the command line with --debug, so the one-line error it would print is raised here instead."""
    main(["--debug", *argv])


def prompt_file(tmp_path) -> str:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n")
    return str(path)


def metric_that_raises(logits, target, wrong):
    raise RuntimeError("my metric is broken")


# (case id, function of (llama model, tmp_path, model dirs), error or warning type, message pattern)
CASES = [
    # --- models ---
    ("missing directory", lambda m, t, d: interp.load_model(t / "nowhere"), ModelLoadError, "does not exist"),
    ("file instead of directory", lambda m, t, d: interp.load_model(d["llama"] / "config.json"), ModelLoadError,
     "is a file"),
    ("directory without tokenizer", lambda m, t, d: interp.load_model(no_tokenizer_dir(t, d["llama"])),
     ModelLoadError, "no tokenizer files"),
    ("unsupported architecture", lambda m, t, d: interp.load_model(unsupported_dir(t, d["llama"])), ModelLoadError,
     "FrobnicatorForCausalLM is not one interp tests"),
    ("hub name without network", lambda m, t, d: interp.load_model("some-org/some-model-that-is-not-here"),
     ModelLoadError, "unreachable|offline mode.*pass its directory|local directory"),
    ("cuda without cuda", lambda m, t, d: interp.load_model(d["llama"], device="cuda"), DeviceError,
     "CUDA is not available"),
    ("unknown device", lambda m, t, d: interp.load_model(d["llama"], device="banana"), DeviceError,
     "not a device"),
    ("unknown dtype", lambda m, t, d: interp.load_model(d["llama"], dtype="float13"), DeviceError, "float13"),
    ("not a model", lambda m, t, d: interp.predictions("gpt2", GOOD), TypeError, "interp.Model or a TransformerBridge"),
    # --- prompts ---
    ("empty prompt set", lambda m, t, d: interp.PromptSet([]), PromptError, "empty"),
    ("empty prompt text", lambda m, t, d: interp.PromptSet([{"id": "a", "prompt": "  "}]), PromptError,
     "Prompt 'a' is empty"),
    ("prompt not text", lambda m, t, d: interp.PromptSet([{"id": "a", "prompt": 3}]), PromptError,
     "'a' has no 'prompt' text"),
    ("duplicate ids", lambda m, t, d: interp.PromptSet([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]),
     PromptError, "'a' appears more than once"),
    ("missing prompt file", lambda m, t, d: interp.PromptSet(str(t / "none.jsonl")), PromptError, "no such file"),
    ("bad JSONL line", lambda m, t, d: interp.PromptSet((t / "bad.jsonl", (t / "bad.jsonl").write_text("{\n"))[0]),
     PromptError, "line 1 is not valid JSON"),
    ("a single string", lambda m, t, d: interp.PromptSet("hello there"), PromptError, "list of prompts"),
    ("chat template without tokenizer", lambda m, t, d: interp.PromptSet(["x"], chat_template=True), PromptError,
     "needs a tokenizer"),
    ("chat format without {prompt}", lambda m, t, d: interp.PromptSet(["x"], chat_template="User:"), PromptError,
     "must contain '{prompt}'"),
    # --- spans and targets ---
    ("subject absent", lambda m, t, d: interp.capture(m, [{**GOOD[0], "subject": "Spain"}], "blocks.0.hook_resid_post",
                                                      positions="subject"), SpanError,
     "Prompt 'paris'.*'Spain' does not occur"),
    ("subject cuts a token", lambda m, t, d: interp.capture(m, [{**GOOD[0], "subject": "ranc"}],
                                                            "blocks.0.hook_resid_post", positions="subject"),
     SpanError, "Prompt .paris.*inside a word"),
    ("subject missing", lambda m, t, d: interp.capture(m, [{"id": "q", "prompt": "a b", "subject": ""},
                                                           {"id": "r", "prompt": "c d", "subject": "d"}],
                                                       "blocks.0.hook_resid_post", positions="subject"),
     PromptError, "Prompt 'q' has no 'subject'"),
    ("target merges with the prompt", lambda m, t, d: interp.predictions(m, [{"prompt": "The capital of Fr",
                                                                                "target": "ance"}]),
     SpanError, "merges with the end of the prompt"),
    # --- hooks and capture ---
    ("unknown hook name", lambda m, t, d: interp.capture(m, GOOD, ["blocks.0.hook_resid_pots"]), HookNameError,
     "no hook named 'blocks.0.hook_resid_pots'.*Close matches: blocks.0.hook_resid_post"),
    ("no hooks", lambda m, t, d: interp.capture(m, GOOD, []), ParameterError, "No hooks asked for"),
    ("filter matches nothing", lambda m, t, d: interp.capture(m, GOOD, lambda n: False), ParameterError,
     "matches no hook"),
    ("unknown positions", lambda m, t, d: interp.capture(m, GOOD, "blocks.0.hook_resid_post", positions="first"),
     PromptError, "positions='first' is neither"),
    ("batch size zero", lambda m, t, d: interp.capture(m, GOOD, "blocks.0.hook_resid_post", batch_size=0),
     ParameterError, "batch_size must be an integer >= 1"),
    # --- interventions ---
    ("head layer out of range", lambda m, t, d: interp.ablate_heads(m, [(3, 0)]), ParameterError,
     r"Head \(3, 0\): layer 3 is out of range"),
    ("head index out of range", lambda m, t, d: interp.ablate_heads(m, [(0, 4)]), ParameterError,
     r"head 4 is out of range"),
    ("empty head list", lambda m, t, d: interp.ablate_heads(m, []), ParameterError, "head list is empty"),
    ("unknown ablation kind", lambda m, t, d: interp.ablate_heads(m, [(0, 0)], ablation="erase"), ParameterError,
     "ablation='erase' is not one of"),
    ("eps zero", lambda m, t, d: interp.ablate_heads(m, [(0, 0)], eps=0), ParameterError, "eps must be a positive"),
    ("eps not a number", lambda m, t, d: interp.ablate_heads(m, [(0, 0)], eps="small"), ParameterError,
     "eps must be a positive number"),
    ("eps NaN", lambda m, t, d: interp.ablate_heads(m, [(0, 0)], eps=math.nan), ParameterError, "finite"),
    ("mask from a layer past the model", lambda m, t, d: interp.mask_attention(m, __import__("torch").zeros(1, 2),
                                                                               from_layer=9),
     ParameterError, "from_layer=9 is out of range"),
    # --- methods ---
    ("top_k zero", lambda m, t, d: interp.predictions(m, GOOD, top_k=0), ParameterError, "top_k must be"),
    ("top_k above vocabulary", lambda m, t, d: interp.predictions(m, GOOD, top_k=10**7), ParameterError,
     "exceeds the vocabulary"),
    ("target that is not a word start", lambda m, t, d: interp.predictions(m, [{"id": "nospace", "prompt":
                                                                                "The capital of France is",
                                                                                "target": "Paris"}]),
     TargetTokenWarning, "Prompt 'nospace'.*does not begin a word"),
    ("user metric that raises", lambda m, t, d: interp.activation_patching(
        m, GOOD, [{**GOOD[0], "id": "spain", "prompt": "The capital of Spain is"}], metric=metric_that_raises),
     ParameterError, "metric function fails.*my metric is broken"),
    # --- the command line ---
    ("CLI: missing required parameter", lambda m, t, d: cli(["run", "generalized_ships", "--model", str(d["llama"]),
                                                             "--prompts", prompt_file(t), "--out", str(t / "o")]),
     CLIError, "missing required parameter --heads"),
    ("CLI: unknown --import module", lambda m, t, d: cli(["--import", "no_such_user_module", "list"]), CLIError,
     "--import 'no_such_user_module': cannot import"),
    ("CLI: --import of a missing file", lambda m, t, d: cli(["--import", str(t / "mine.py"), "list"]), CLIError,
     "no such file"),
    ("CLI: unknown method option", lambda m, t, d: cli(["run", "predictions", "--model", str(d["llama"]), "--prompts",
                                                        prompt_file(t), "--out", str(t / "o"), "--topk", "3"]),
     CLIError, "unrecognized arguments: --topk"),
    ("CLI: --set without =", lambda m, t, d: cli(["run", "predictions", "--model", str(d["llama"]), "--prompts",
                                                  prompt_file(t), "--out", str(t / "o"), "--set", "top_k"]),
     CLIError, "--set expects KEY=VALUE"),
    ("CLI: --set of an unknown parameter", lambda m, t, d: cli(["run", "predictions", "--model", str(d["llama"]),
                                                                "--prompts", prompt_file(t), "--out", str(t / "o"),
                                                                "--set", "topk=3"]),
     CLIError, "no parameter 'topk'"),
    ("CLI: --out names a file", lambda m, t, d: cli(["run", "predictions", "--model", str(d["llama"]), "--prompts",
                                                     prompt_file(t), "--out", prompt_file(t)]),
     CLIError, "is a file"),
    ("CLI: a method without its inputs", lambda m, t, d: cli(["run", "predictions", "--model", str(d["llama"])]),
     CLIError, "required: --prompts, --out"),
    ("CLI: a global flag without its value", lambda m, t, d: cli(["list", "--dtype"]), CLIError,
     "--dtype needs a value"),
]


def _family_cases() -> list:
    """Each method family keeps its cases in tests/bad_inputs/<family>.py as a CASES list of the same shape."""
    import importlib
    import pkgutil

    from . import bad_inputs

    cases = []
    for info in sorted(pkgutil.iter_modules(bad_inputs.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{bad_inputs.__name__}.{info.name}")
        cases.extend((f"{info.name}: {c[0]}", *c[1:]) for c in module.CASES)
    return cases


CASES = CASES + _family_cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(case, llama, tmp_path, tiny_model_dirs):
    _, fn, error, pattern = case
    if issubclass(error, Warning):
        with pytest.warns(error, match=pattern):
            fn(llama, tmp_path, tiny_model_dirs)
        return
    with pytest.raises(error, match=pattern):
        fn(llama, tmp_path, tiny_model_dirs)
    assert not (tmp_path / "o").exists()  # a refused CLI run writes nothing
    half = [p.name for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".new")) or ".building-" in p.name]
    assert not half, f"left half-written: {half}"


def test_nothing_is_written_when_capture_input_is_bad(llama, tmp_path):
    out = tmp_path / "capture_out"
    with pytest.raises(HookNameError):
        interp.capture(llama, GOOD, ["blocks.0.hook_nothing"], to_dir=out)
    with pytest.raises(SpanError):
        interp.capture(llama, [{**GOOD[0], "subject": "Spain"}], "blocks.0.hook_resid_post", positions="subject",
                       to_dir=out)
    assert not out.exists()


def test_every_error_is_an_interp_error_or_type_error():
    for _, _, error, _ in CASES:
        assert issubclass(error, (interp.InterpError, TypeError, interp.TargetTokenWarning))
