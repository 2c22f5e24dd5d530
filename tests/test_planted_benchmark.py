"""The planted-site benchmark's pieces (interp.organisms.benchmark): its statistics against direct computations, the
read-out projection it ablates with, the top-1 behaviour against plain transformers, the table's rendering and the
CLI wiring. The benchmark itself runs with `interp bench` (minutes), not here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interp.organisms import benchmark as B


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = np.random.default_rng(1).random(40) > 0.3
    a, b = B.bootstrap_ci(x, seed=5), B.bootstrap_ci(x, seed=5)
    assert a == b
    assert a[0] <= x.mean() <= a[1] and a[0] < a[1]
    assert B.bootstrap_ci(np.ones(10), seed=0) == (1.0, 1.0)


def test_spearman_and_precision_against_direct_computation():
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties: ranks are a permutation
    assert B.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1], abs=1e-12)
    assert B.spearman(a, np.exp(a)) == pytest.approx(1.0)
    p, ranks = B.precision_and_ranks([(2, 1), (0, 0), (2, 3), (1, 1)], [(2, 3), (2, 1)])
    assert p == 0.5 and ranks == [3, 1]


def test_project_out_removes_the_readout_directions(models):
    import interp

    model = models["llama"]
    ids = [3, 5, 7]
    iv = B.project_out(model, 0, ids)
    prompts = interp.PromptSet([{"prompt": "a b c d", "target": " e"}, {"prompt": "b c", "target": " d"}])
    enc = interp.encode(model, prompts)
    batch = next(interp.batches(model, enc, 8))
    name = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, clean = interp.forward(model, batch, [], read=[name], logits=None)
        _, edited = interp.forward(model, batch, [iv], read=[name], logits=None)
    hf = model.hf_model
    dirs = hf.get_output_embeddings().weight[ids].detach() * hf.model.norm.weight.detach()
    last = edited[name][:, -1]
    assert (last @ dirs.T).abs().max() < 1e-4 * last.norm()
    assert torch.equal(edited[name][:, :-1], clean[name][:, :-1])  # other positions untouched
    q, _ = torch.linalg.qr(dirs.T)
    c = clean[name][:, -1]
    assert torch.allclose(last, c - (c @ q) @ q.T, atol=1e-5)


def test_top1_correct_matches_plain_transformers(models, hf_models):
    import interp

    model, hf = models["llama"], hf_models("llama")
    tok = model.tokenizer
    records = [{"prompt": p, "target": t} for p, t in (("a b c", " d"), ("b c d e", " a"), ("c", " b"))]
    got = B.top1_correct(model, interp.PromptSet(records), batch_size=2)
    want = []
    for r in records:
        ids = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        full = tok(r["prompt"] + r["target"], add_special_tokens=False)["input_ids"]
        bos = [tok.bos_token_id] if model.prepend_bos else []
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([bos + ids])).logits[0, -1]
        want.append(int(logits.argmax()) == full[len(ids)])
    assert got.tolist() == want


def test_markdown_and_cli_wiring(tmp_path):
    from interp.cli import build_parser, cmd_bench

    row = B._row(organism="o", planted=True, method="m", metric="acc", k=2, found="[(1, 2)]", precision_at_k=0.5,
                 clean=1.0, effect_found=0.5, effect_found_lo=0.4, effect_found_hi=0.6, effect_random=0.9,
                 effect_random_lo=0.8, effect_random_hi=1.0, n_prompts=10)  # fmt: skip
    table = pd.DataFrame([row], columns=list(B.COLUMNS))
    md = B.to_markdown(table)
    assert md.count("\n") == 3 and "| o | m | 2 | [(1, 2)] | 0.50 |" in md and "0.50 [0.40, 0.60]" in md
    paths = B.write_benchmark(table, tmp_path, {"seed": 0})
    assert pd.read_csv(paths["csv"])["precision_at_k"].tolist() == [0.5]
    args = build_parser().parse_args(["bench", "--quick", "--seed", "3", "--organisms", "planted-icot"])
    assert args.func is cmd_bench and args.seed == 3 and args.quick and args.organisms == "planted-icot"


def test_readme_table_is_the_committed_benchmark():
    """The README's planted-site table is docs/benchmark/benchmark.csv as `interp bench --readme README.md` writes
    it, and that CSV was written for every planted organism shipped now (a new organism, or a stale copy, fails)."""
    import json

    from interp.organisms import REPO_ROOT

    csv = REPO_ROOT / "docs" / "benchmark" / "benchmark.csv"
    meta = json.loads((csv.parent / "benchmark.meta.json").read_text())
    assert tuple(meta["organisms"]) == B.shipped_planted()
    table = B.read_benchmark(csv)
    assert sorted(set(table.loc[table["planted"], "organism"])) == sorted(B.shipped_planted())
    readme = (REPO_ROOT / "README.md").read_text()
    assert B.readme_block(readme) == B.readme_table(table)


def test_cli_writes_the_readme_block(tmp_path, monkeypatch):
    from interp import cli

    row = B._row(organism="o", planted=True, method="m", metric="acc", k=2, found="[(1, 2)]", precision_at_k=0.5,
                 clean=1.0, effect_found=0.5, effect_found_lo=0.4, effect_found_hi=0.6, effect_random=0.9,
                 effect_random_lo=0.8, effect_random_hi=1.0, n_prompts=10)  # fmt: skip
    table = pd.DataFrame([row], columns=list(B.COLUMNS))
    monkeypatch.setattr(B, "run_benchmark", lambda **kw: table)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{B.README_BEGIN}\nold\n{B.README_END}\nrest\n")
    args = cli.build_parser().parse_args(["bench", "--organisms", "o", "--out", str(tmp_path / "b"),
                                          "--readme", str(readme)])  # fmt: skip
    assert args.func(args, {}) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{B.README_END}\nrest\n") and "old" not in text
    assert B.readme_block(text) == B.readme_table(B.read_benchmark(tmp_path / "b" / "benchmark.csv"))
    assert "| o | m | 2 | [(1, 2)] | 0.50 |  |  |  | 1.00 | 0.50 [0.40, 0.60] |  | 0.90 [0.80, 1.00] |" in text
    with pytest.raises(Exception, match="planted-benchmark"):
        B.replace_readme_block("no markers", "x")


def test_icot_order_row_from_cross_task_curves(monkeypatch):
    """score_icot_order reads the s1 / s2 peaks off cross_task_patching's acc_patch (mean over composites), calls
    a subtask with no layer above its zero-shot accuracy 'none', and compares the s1 peak with the planted layer."""
    from interp.methods import icot

    curves = {"s1": [0.1, 0.6, 0.9, 0.4], "s2": [0.5, 0.5, 0.5, 0.5]}  # s2: never above acc_0 = 0.5 (3 prompts)

    def fake(model, prompts, subs, **kw):
        comp = prompts[0]["subtask_of"]
        return pd.DataFrame([{"composite": comp, "subtask": s, "layer": la, "acc_patch": v, "acc_0": 0.1 if s == "s1"
                              else 0.5, "acc_icl": 1.0, "n_zero": 3} for s, c in curves.items()
                             for la, v in enumerate(c)])  # fmt: skip

    monkeypatch.setattr(icot, "cross_task_patching", lambda *a, **k: type("R", (), {"table": fake(*a, **k)}))
    (row,) = B.score_icot_order(None, "o", 2, seed=0, quick=True, n_random=1)
    assert row["found"] == "s1 2, s2 none" and row["layer_error"] == 0 and row["precision_at_k"] == 1.0
    assert "s1 before s2: False" in row["note"]
    curves["s1"] = [0.1, 0.3, 0.2, 0.1]  # 0.2 above acc_0 = 0.1: under one prompt's worth (1 / 3)
    (row,) = B.score_icot_order(None, "o", 2, seed=0, quick=True, n_random=1)
    assert row["found"] == "s1 none, s2 none" and row["layer_error"] is None and row["precision_at_k"] == 0.0
    curves["s1"], curves["s2"] = [0.1, 0.6, 0.9, 0.4], [0.5, 0.6, 0.7, 0.9]
    (row,) = B.score_icot_order(None, "o", 1, seed=0, quick=True, n_random=1)
    assert row["found"] == "s1 2, s2 3" and row["layer_error"] == 1 and row["precision_at_k"] == 0.0
    assert "s1 before s2: True" in row["note"] and row["n_prompts"] == 3 * 6


def test_top1_mlp_zeroed_matches_plain_transformers(models, hf_models):
    """The fact-MLP scorer's ablation: block 0's MLP output zeroed at the last subject token (left-padded batches of
    rows of different lengths) gives the same top-1 as plain transformers with a hook zeroing that one position."""
    import interp

    model, hf = models["llama"], hf_models("llama")
    tok = model.tokenizer
    records = [{"prompt": p, "subject": s, "target": t}
               for p, s, t in (("a b c d", "b c", " e"), ("c d", "c", " a"), ("b c d e a", "d e", " b"))]  # fmt: skip
    prompts = interp.PromptSet(records)
    enc = interp.encode(model, prompts, spans=["subject"])
    batch = next(interp.batches(model, enc, 8))
    rows, cols = B._role_columns(batch, [enc.items[i] for i in batch.indices], batch.spans["subject"], "last subject")
    assert sorted(rows.tolist()) == list(range(len(records)))  # one last subject token per row
    assert all(int(c) == batch.spans["subject"][int(r)][1] - 1 for r, c in zip(rows, cols))
    for layer in (None, 0):
        got = B.top1_mlp_zeroed(model, prompts, layer, "last subject", batch_size=2)
        want = []
        for r, (_, end) in zip(records, enc.spans["subject"]):
            bos = [tok.bos_token_id] if model.prepend_bos else []
            ids = bos + tok(r["prompt"], add_special_tokens=False)["input_ids"]
            full = tok(r["prompt"] + r["target"], add_special_tokens=False)["input_ids"]

            def post(mod, a, o, end=end):
                o = o.clone()
                o[:, end - 1] = 0.0
                return o

            h = hf.model.layers[0].mlp.register_forward_hook(post) if layer is not None else None
            try:
                with torch.no_grad():
                    logits = hf(input_ids=torch.tensor([ids])).logits[0, -1]
            finally:
                if h is not None:
                    h.remove()
            want.append(int(logits.argmax()) == full[len(ids) - len(bos)])
        assert got.tolist() == want, layer


def test_fact_pairs_and_roles_for_patching():
    """The fact-patching scorer's pairs share relation, template and token length, differ in subject and in the
    answer's first token; its roles are ROME's token roles of each position (the last subject token where the span
    ends)."""
    import interp
    from interp.organisms import data_path, organism_dir
    from interp.prompts import tokenize

    model = interp.load_model(organism_dir("planted-facts"))
    recs = interp.PromptSet(data_path("organisms", "corpus", "factual.jsonl")).filter(split="heldout").records
    clean, corrupt = B._fact_pairs(model, recs, 20, seed=0)
    assert len(clean) == len(corrupt) == 20
    assert B._fact_pairs(model, recs, 20, seed=0) == (clean, corrupt)
    for a, b in zip(clean, corrupt):
        assert (a["relation_name"], a["template"]) == (b["relation_name"], b["template"])
        assert a["subject"] != b["subject"]
        ia, ib = tokenize(model, a["prompt"]).ids, tokenize(model, b["prompt"]).ids
        assert len(ia) == len(ib)
        first_a = tokenize(model, a["prompt"] + a["target"]).ids[len(ia)]
        assert first_a != tokenize(model, b["prompt"] + b["target"]).ids[len(ib)]
    roles = B._site_roles(model, clean)
    enc = interp.encode(model, interp.PromptSet(clean), spans=["subject"])
    for r, (_, e) in zip(clean, enc.spans["subject"]):
        assert roles[r["id"]][e - 1] == "last subject" and roles[r["id"]][-1] == "last"
        assert roles[r["id"]].count("last subject") == 1 and roles[r["id"]][0] == "bos"


def test_icot_masking_row_from_the_masking_curves(monkeypatch):
    """score_icot_masking: the found layer is the best masked from_layer for y_s1 less one (the last block that saw
    the demonstrations), 'none' unless y_s1 beats its unmasked top-1 by more than one prompt's worth; from_layer
    n_layers is the unmasked model."""
    from interp.methods import icot

    n_layers = 4
    curves = {"y_t": [0.0, 0.2, 0.9, 1.0, 1.0], "y_s1": [0.0, 0.1, 0.7, 0.2, 0.0]}

    def fake(model, prompts, **kw):
        return pd.DataFrame([{"target_field": f, "from_layer": la, "correct": v} for f, c in curves.items()
                             for la, v in enumerate(c)])  # fmt: skip

    class M:
        info = type("I", (), {"n_layers": n_layers})

    monkeypatch.setattr(icot, "context_masking", lambda *a, **k: type("R", (), {"table": fake(*a, **k)}))
    (row,) = B.score_icot_masking(M(), "o", 1, seed=0, quick=True, n_random=1)
    assert row["found"] == "1" and row["layer_error"] == 0 and row["precision_at_k"] == 1.0
    assert "y_t kept (>= 0.9 x unmasked) from from_layer 2" in row["note"] and row["n_prompts"] == 24
    curves["y_s1"] = [0.0, 0.0, 0.0, 0.0, 0.0]
    (row,) = B.score_icot_masking(M(), "o", 1, seed=0, quick=True, n_random=1)
    assert row["found"] == "none" and row["layer_error"] is None and row["precision_at_k"] == 0.0
