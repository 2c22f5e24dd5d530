"""The one vocabulary: every parameter and column name a registered method uses, with its one meaning.

A name means one thing everywhere. A method that needs a new name adds it here first, in its section;
``tests/test_glossary.py`` fails for any registered method whose parameters or schema columns are not here, and
for a ``docs/glossary.md`` that is not the one :func:`write_glossary` generates (``python -m interp.vocabulary``).

Conventions the names carry:

- heads are integer ``layer`` and ``head`` columns (a query-head index within its layer); a set of heads in one
  cell is written ``"(0, 2), (1, 0)"``: (layer, head) integer pairs;
- layer windows are half-open: ``window_start`` included, ``window_end`` excluded;
- positions are 0-based indices into the prompt's tokens, BOS included where the model prepends one;
- KL divergences are in nats;
- a rank is named after what it ranks (``target_rank``: 1 + the number of tokens with a larger logit than the
  target's; ``prediction_rank``; ``step_rank``);
- every table that scores a target carries ``target_token`` (its text) and ``target_id``.
"""

from __future__ import annotations

from pathlib import Path

# name -> meaning. Inputs first, then shared parameters, then each family's own.
PARAMETERS: dict[str, str] = {
    # inputs
    "model": "The model: an interp.Model (interp.load_model) or a TransformerBridge.",
    "prompts": "The prompt set: an interp.PromptSet, or anything it accepts (strings, dicts, a DataFrame, a file).",
    "clean": "The clean prompt set of a pair method; row i is paired with row i of corrupt.",
    "corrupt": "The corrupt prompt set of a pair method, paired row by row with clean (same token lengths, or "
               "aligned by `align`).",
    # shared
    "target": "The prompt field (or fields, where a method scores several) whose text's first token is scored; "
              "default 'target' (None, where a method allows it: the model's own top-1 token).",
    "wrong": "The prompt field whose first token is the contrast answer of a logit difference (None: the target "
             "of the other prompt of the pair).",
    "metric": "What is scored: a name from interp.methods.metrics ('logit_diff', 'prob', 'logprob', 'rank', 'kl'), "
              "patching's 'norm_logit_diff' ((LD - LD_corrupt) / (LD_clean - LD_corrupt) per pair: 1 = clean, "
              "0 = corrupt), or a callable metric (see interp.methods.metrics.MetricFn).",
    "ablation": "How a component is ablated: for heads (interp.ablate_heads) 'query' (scale the head's query by "
                "eps: undifferentiated attention), 'output' (scale its output z by eps), 'key' (scale its KV "
                "group's key by eps), 'mean' (z replaced by a mean), 'mean_query' (the query replaced by the mean "
                "of the layer's queries), 'zero' (z set to 0); for experts 'zero' "
                "(drop its output) or 'reroute' (its router logit to -inf before top-k).",
    "sites": "Which component kinds are patched, restored, knocked out or decoded: names from interp.activations.sites "
             "('resid_pre', 'resid_mid', 'resid_post', 'attn_out', 'mlp_out', 'z').",
    "layers": "Layer (block) indices, 0-based; None means every layer.",
    "positions": "Which token positions: 'last' (the last real token), 'all', the name of a prompt field (its "
                 "token span, e.g. 'subject'), or a list of 0-based positions.",
    "heads": "A list of (layer, head) integer pairs.",
    "experts": "A list of (layer, expert) integer pairs.",
    "batch_size": "Prompts per forward batch (a method that batches rows of several variants per prompt counts "
                  "prompts, and caps rows with max_rows).",
    "max_rows": "At most this many rows (prompt x variant) in one forward; None: chosen from a memory budget.",
    "memory_budget": "MiB that a method's largest intermediate tensors may take (it chunks its work to fit; the "
                     "results do not depend on it beyond float32 reordering); None: the method's default.",
    "progress": "Show a progress bar (tqdm; renders in Jupyter and in a terminal).",
    "seed": "The seed of every random draw the method makes (noise, sampling, random controls).",
    "top_k": "How many of the highest-ranked items are kept (tokens of a distribution, pairs of a correlation).",
    "eps": "The factor an ablation scales by (Zhou et al.: 1e-5).",
    "window": "The width of a half-open window of layers around a layer (ROME: 10).",
    "chat_template": "Wrap every prompt: True uses the tokenizer's chat template, a string with '{prompt}' is a "
                     "format.",
    # safety heads
    "steps": "Sahara: the number of greedy steps (the size of the head group).",
    "r_main": "Generalised Ships: the number of leading singular vectors whose principal angles are summed.",
    "basis": "Generalised Ships: 'left' (singular vectors in sample space, the authors' default) or 'right'.",
    "variants": "attack_success_rate: the head sets to ablate, as {name: [(layer, head), ...] or None (clean)}.",
    "max_new_tokens": "Generation: at most this many new tokens per prompt.",
    "do_sample": "Generation: sample from softmax(logits / temperature) instead of taking the argmax.",
    "temperature": "Generation: the sampling temperature.",
    "judge": "A callable response -> bool (True: the attack succeeded); None: Zhou et al.'s keyword judge.",
    # lens
    "norm": "How a residual vector is normalised before the unembedding: 'recompute' (the final norm applied "
            "afresh) or 'frozen' (divided by the final layer's norm scale at that position).",
    "lens": "A trained TunedLens to decode with (None: the logit lens).",
    # patching and internal chain of thought
    "direction": "'denoising' (clean activations patched into the corrupt run) or 'noising' (the reverse).",
    "verify_top": "Attribution patching: also patch exactly the k places with the largest estimates.",
    "ig_steps": "Attribution patching: points of the embedding path the gradient is averaged over (EAP-IG; 1 is "
                "Nanda's attribution patching).",
    "align": "Patching: None (clean and corrupt prompts of equal token length, paired position by position) or "
             "'end' (tokens paired counting from the last one, for prompts of different lengths).",
    "span": "The prompt field whose token span is masked (context masking: the demonstrations).",
    "from_layers": "Context masking: the layers l from which on (l' >= l) the span is masked.",
    "subtask_prompts": "Cross-task patching: the held-out subtask prompts (N-shot, with their zero-shot "
                       "version through the demonstrations field).",
    "n_vectors": "Cross-task patching: composite prompts averaged into each task vector.",
    "subtask": "The prompt field naming each subtask prompt's subtask.",
    "demonstrations": "The prompt field holding a prompt's demonstrations (dropped for its zero-shot version).",
    # tracing
    "corruption": "Causal tracing: which tokens get noise, 'subject' (ROME) or 'relation' (every non-subject "
                  "token, Liu et al.).",
    "samples": "Causal tracing: corrupted copies per fact.",
    "noise": "Causal tracing: the noise std as a multiple of nu (noise_scale; ROME: 3), or explicit noise "
             "tensors.",
    "noise_scale": "Causal tracing: nu, the unit of noise: 'subjects' (std of the embedding elements of the distinct "
                   "subjects), 'records' (of every record's subject: ROME's collect_embedding_std), or a number.",
    "noise_draws": "Causal tracing: how the noise is drawn: 'torch' (torch.Generator seeded seed) or 'rome' (ROME's "
                   "numpy RandomState(1 + seed) per fact, float64).",
    "severed": "Causal tracing: sublayer sites ('mlp_out', 'attn_out') frozen in their corrupted state above the "
               "layer where the hidden state (resid_post) is restored.",
    "only_correct": "Keep only facts whose top-1 prediction is the target's first token (ROME).",
    "attributes": "Relation evidence: tokens related to each relation (A_r), or None to take every target of "
                  "the relation's prompts.",
    # moe
    "levels": "Expert attribution: which levels to compute: 'layer' (rows of level attn and ffn), 'head', "
              "'expert' (levels expert and shared_expert), 'neuron'.",
    "top_neurons": "Expert attribution: neuron rows kept per prompt and layer (the largest gains).",
    "controls": "Expert blocking: random expert sets of the same size blocked as controls.",
    "keep": "Shared / routed contrast: how many routed experts each token keeps (0 = the shared expert alone).",
    "by": "What rows are grouped by: a method's prompt field (None: one group), or in Result.aggregate / "
          "Result.compare the table's columns (aggregate's None: the schema's keys other than prompt_id).",
    "attribution_result": "A finished expert_attribution Result to reuse (None: computed here).",
    # generation and capture
    # statistics over prompts (Result.aggregate, Result.compare, interp.results.statistics)
    "ci": "The confidence level of a bootstrap interval over prompts (0.95: a 95 % interval).",
    "n_boot": "Bootstrap replicates (prompts drawn with replacement) behind an interval.",
    "n_perm": "Random sign patterns of a paired permutation test (all 2^n patterns, exact, when that is fewer).",
    "interval": "The bootstrap interval's kind: 'bca' (bias-corrected and accelerated, Efron 1987) or "
                "'percentile'.",
    "value": "The table column(s) averaged or compared (None: the schema's value column).",
    "column": "Result.compare: the table column whose values are the conditions compared.",
    "baseline": "Result.compare: the value of `column` that marks the baseline condition.",
    "treatment": "Result.compare: the value(s) of `column` compared with the baseline (None: every other value).",
    "interventions": "interp.generate: None (the clean model), one interp.Intervention, or a mapping {label: "
                     "Intervention or None (clean)} generated side by side.",
}

COLUMNS: dict[str, str] = {
    # identity
    "prompt_id": "The prompt's id (in a pair method: the clean / destination prompt's).",
    "corrupt_id": "The corrupt prompt's id of a pair.",
    "task": "The prompt's task field.",
    "label": "The prompt's label field.",
    "group": "The group a row summarises (a prompt field's value, or 'all').",
    # components
    "layer": "Layer (block) index, 0-based.",
    "head": "Query-head index within its layer.",
    "expert": "Expert index within its layer.",
    "expert_layer": "The layer of the expert of a head-expert pair.",
    "neuron": "Neuron index within an expert.",
    "site": "The component kind (a name from interp.activations.sites).",
    "window_start": "First layer of a half-open layer window (included).",
    "window_end": "End of a half-open layer window (excluded).",
    # positions and tokens
    "position": "0-based token position in the prompt (BOS included where the model prepends one).",
    "pos_from_end": "Position counted from the last token (-1 = the last).",
    "token": "The input token's text at `position`.",
    "role": "Causal tracing: the token's role (bos, before subject, first / middle / last subject, first "
            "subsequent, further, last).",
    # targets and predictions
    "target_field": "The prompt field whose text's first token is scored.",
    "target_token": "The scored target token's text.",
    "target_id": "The scored target token's id.",
    "target_prob": "Probability of the target token.",
    "target_logprob": "Log-probability of the target token (nats).",
    "target_logit": "Logit of the target token.",
    "target_rank": "1 + the number of tokens with a larger logit than the target's.",
    "target_rr": "1 / target_rank.",
    "prediction_rank": "The predicted token's rank in the model's distribution (1 = top).",
    "predicted_token": "A predicted token's text.",
    "predicted_id": "A predicted token's id.",
    "prob": "Probability of the row's token (predictions: the predicted token's).",
    "logprob": "Log-probability of the row's token (nats).",
    "correct": "The top-1 prediction is the target token.",
    # generic values
    "score": "The method's score for the row (its unit is in the schema).",
    "l2_norm": "The L2 norm of a vector (e.g. a residual-stream state).",
    "kl": "KL divergence, in nats.",
    "entropy": "Entropy of a distribution, in nats.",
    # safety heads
    "heads": "A set of heads in one cell, written '(0, 2), (1, 0)' ((layer, head) integer pairs; '' for none).",
    "n_heads": "The number of heads in the row's head set.",
    "r": "Generalised Ships: the 1-based index of the singular-vector pair whose angle the row holds.",
    "angle": "Generalised Ships: the principal angle between the r-th singular vectors with and without the "
             "heads ablated, in degrees.",
    "sigma_clean": "Generalised Ships: the r-th singular value of M, the final-norm outputs of the clean model.",
    "sigma_ablated": "Generalised Ships: the r-th singular value of M_A, the final-norm outputs with the heads "
                     "ablated.",
    "step": "Sahara: the greedy step (1-based; the size of the group once the step's head is added).",
    "step_rank": "Sahara: the candidate's rank within its step by score (1 = the head the step adds).",
    "chosen": "Sahara: the candidate is the head its step adds to the group.",
    "variant": "attack_success_rate: the name of the variant (the head set ablated, or 'clean').",
    "variant_group": "attack_success_rate: the variant's name without a trailing ' #i' (draws of one control).",
    "response": "The generated text (the new tokens only, EOS excluded).",
    "n_new_tokens": "The number of generated tokens (EOS excluded).",
    "success": "attack_success_rate: the judge says the attack succeeded on the response.",
    # lens
    "lens": "The lens a row was decoded with: 'logit' (no translator) or 'tuned' (a TunedLens's translators).",
    "norm": "The normalisation a row was decoded with: 'recompute' or 'frozen' (see the parameter norm).",
    "depth": "Blocks applied to the vector at (site, layer): interp.activations.sites.depth (resid_pre of layer l "
             "is l, its resid_post l + 1).",
    "is_last": "The row's position is the prompt's last token.",
    "predicted_prob": "Probability of the predicted (top-1) token.",
    "top_ids": "The top_k decoded token ids, best first, as a JSON list in one cell.",
    "top_tokens": "The top_k decoded tokens' texts, best first, as a JSON list in one cell.",
    "cross_entropy": "-log p of the actual next token (the next prompt token; after the prompt, the first target "
                     "field's token), in nats.",
    # patching and internal chain of thought
    "strength_note": "Why a cross-task strength is undefined (NaN), or empty where it is defined.",
    "effect": "Activation patching: the metric after patching minus the destination run's own metric (raw, "
              "before norm_logit_diff's normalisation; 0 = the patch changed nothing).",
    "attribution": "Attribution patching: the first-order estimate of `effect`, (a_source - a_destination) . "
                   "dM/da at the destination run (averaged along the embedding path with ig_steps > 1).",
    "estimate": "Attribution patching: the estimated score after patching (the destination's metric + "
                "attribution, normalised as the metric says).",
    "exact": "Attribution patching: the exact score after patching, at the verify_top places (NaN elsewhere).",
    "patched_metric": "Activation patching: the raw metric of the destination run with the row's place patched.",
    "clean_metric": "The raw metric of the clean run: in patching, the target scored after the clean prompt; in "
                    "methods that take a user metric (metric=...), the run without the method's intervention.",
    "metric_value": "The user metric (parameter metric) of the row's run, in meta['metric_unit'].",
    "corrupted_metric": "Causal tracing with a user metric: the metric of the corrupted run (noise, no restoration).",
    "corrupt_metric": "Patching: the raw metric of the corrupt run (the same target and wrong tokens).",
    "from_layer": "Context masking: the first masked layer l (the span is masked in every layer >= l; "
                  "n_layers = no masking).",
    "composite": "Cross-task patching: the composite task whose task vector is patched in.",
    "subtask": "Cross-task patching: the subtask (the value of the subtask prompts' `subtask` field).",
    "strength": "Cross-task patching: (acc_patch - acc_0) / (acc_icl - acc_0) (NaN where acc_icl = acc_0).",
    "acc_patch": "Cross-task patching: top-1 accuracy of the zero-shot subtask prompts with the task vector "
                 "written into resid_post[layer] at the last position.",
    "acc_0": "Cross-task patching: top-1 accuracy of the zero-shot subtask prompts.",
    "acc_icl": "Cross-task patching: top-1 accuracy of the N-shot subtask prompts.",
    "prob_patch": "Cross-task patching: mean target probability of the patched zero-shot prompts.",
    "prob_0": "Cross-task patching: mean target probability of the zero-shot prompts.",
    "prob_icl": "Cross-task patching: mean target probability of the N-shot prompts.",
    "n_zero": "Cross-task patching: the number of zero-shot subtask prompts.",
    "n_icl": "Cross-task patching: the number of N-shot subtask prompts.",
    "n_vectors": "Cross-task patching: the number of composite prompts averaged into the task vector.",
    # tracing
    "severed": "Causal tracing: the sublayer site frozen at its corrupted value in every layer above the restored "
               "one ('' = none).",
    "in_subject": "The token lies in the subject's span.",
    "corrupted": "Causal tracing: the token's embedding got noise.",
    "clean_target_prob": "Probability of the target token on the clean run (no noise, nothing knocked out).",
    "corrupted_target_prob": "Causal tracing: mean probability of the target token over the corrupted copies "
                             "(ROME's low).",
    "indirect_effect": "Causal tracing: target_prob with the row's state restored minus corrupted_target_prob.",
    "total_effect": "Causal tracing: clean_target_prob - corrupted_target_prob.",
    "analysis": "Relation evidence: 'lens' (the residual after block `layer` decoded) or 'knockout' (`site` "
                "zeroed at the last position in the window).",
    "attribute_rate": "Relation evidence: the share of the top_k decoded tokens that are in the relation's "
                      "attribute set A_r.",
    "clean_attribute_rate": "Relation evidence: the attribute rate of the model's output, nothing knocked out.",
    "attribute_rate_drop": "Relation evidence: clean_attribute_rate - attribute_rate.",
    "target_prob_drop": "Relation evidence: clean_target_prob - target_prob.",
    # moe
    "level": "Expert attribution: the component level of a row: 'attn' / 'ffn' (a layer's attention / FFN or MoE "
             "sublayer), 'head', 'expert', 'shared_expert', 'neuron'.",
    "component": "Expert attribution: the component's label ('attn', 'ffn', 'L{layer}H{head}', 'E{expert}', "
                 "'shared', 'E{expert}/N{neuron}', 'shared/N{neuron}').",
    "routing_weight": "The weight g the routing gives an expert's output (0 off the token's top-k; the shared "
                      "expert's: its sigmoid gate).",
    "router_prob": "The router's softmax probability of an expert (before top-k).",
    "selected": "The expert is in the token's top-k (the shared expert: always).",
    "neuron_sum": "Expert attribution: the sum of an expert's neurons' log-probability gains, in nats (NaN when "
                  "the neuron level was not computed).",
    "expert_rank": "Expert importance: the expert's rank by mean log-probability gain (1 = largest).",
    "score_std": "The standard deviation of score over the prompts a row summarises.",
    "load": "The share of tokens (expert importance: of prompts, at the last token) routed to the expert.",
    "n_prompts": "The number of prompts a row summarises.",
    "n_tokens": "The number of tokens a row summarises.",
    "target_in_top10": "The target token is among the 10 largest logits (target_rank <= 10; HIT@10).",
    "condition": "The run a row was scored under: 'clean', 'blocked' (the given experts blocked), 'control' (a "
                 "random expert set blocked), 'keep{n}' (every token keeps its n top routed experts).",
    "control": "The index of the random control set of a 'control' row (empty otherwise).",
    "mean_routing_weight": "The mean routing_weight over a group's tokens (0 where not routed).",
    "mean_router_prob": "The mean router_prob over a group's tokens.",
    "r_router_prob": "Pearson r across prompts between a head's log-probability gain and an expert's router_prob.",
    "r_gain": "Pearson r across prompts between a head's and an expert's log-probability gains.",
    # statistics over prompts (Result.aggregate, Result.compare)
    "ci_low": "The lower end of the bootstrap interval of a mean over prompts (`<value>_ci_low` for column "
              "`<value>`; `difference_ci_low` for a paired difference).",
    "ci_high": "The upper end of the bootstrap interval of a mean over prompts (`<value>_ci_high`; "
               "`difference_ci_high`).",
    "p_value": "Two-sided p-value of the paired sign-flip permutation test of a zero mean difference.",
    "n_pairs": "Result.compare: the number of prompts scored under both conditions (the pairs).",
    "treatment": "Result.compare: the condition (value of the compared column) of the row.",
    "baseline": "Result.compare: the baseline condition the row's treatment is compared with.",
    "treatment_mean": "Result.compare: the mean value over the pairs under the treatment.",
    "baseline_mean": "Result.compare: the mean value over the pairs under the baseline.",
    "difference": "Result.compare: the mean over the pairs of treatment minus baseline.",
    # generation and capture
    "intervention": "interp.generate: the label of the intervention the row was generated under ('clean': none).",
}


def glossary_markdown() -> str:
    """The glossary page: the conventions, every parameter and column, and each method's contract."""
    lines = ["# Glossary", "", "Generated by `python -m interp.vocabulary` from `interp/vocabulary.py` and the "
             "method registry; do not edit by hand.", ""]
    doc = (__doc__ or "").split("Conventions the names carry:", 1)[-1].strip()
    lines += ["## Conventions", "", doc, "", "## Parameters", "", "| name | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in sorted(PARAMETERS.items())]
    lines += ["", "## Columns", "", "| name | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in sorted(COLUMNS.items())]
    lines += ["", "## Methods", ""]
    for e in package_methods():
        lines += [f"### `{e.name}`", "", e.summary, "", f"- inputs: {e.inputs} (`{', '.join(e.input_names)}`)",
                  f"- paper: {e.paper}", f"- cost: {e.cost}"]
        params = ", ".join(f"`{p}`" + ("" if d is _EMPTY else f"={d!r}") for p, d in e.parameters.items())
        lines.append(f"- parameters: {params or '(none)'}")
        s = e.schema
        if s is not None:
            lines += [f"- keys: {', '.join(f'`{k}`' for k in s.keys)}",
                      f"- value: `{s.value}` ({s.unit}; {s.sign} matters more)",
                      "- columns: " + ", ".join(f"`{c}` ({t})" for c, t in s.columns.items())]
            if s.optional:
                lines.append("- optional columns: " + ", ".join(f"`{c}` ({t})" for c, t in s.optional.items()))
        lines.append("")
    return "\n".join(lines)


def package_methods() -> list:
    """The registered methods that interp itself ships (a user's own methods join the registry too, but their
    names are theirs to choose)."""
    from .methods.registry import list_methods

    return [e for e in list_methods() if (getattr(e.raw, "__module__", "") or "").startswith("interp.")]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


_EMPTY = __import__("inspect").Parameter.empty
GLOSSARY_PATH = Path(__file__).resolve().parent.parent / "docs" / "glossary.md"


def write_glossary(path: str | Path = GLOSSARY_PATH) -> Path:
    """Write the glossary page (atomically: a temporary name, then a rename)."""
    import os

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(glossary_markdown() + "\n")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":  # pragma: no cover
    import interp  # noqa: F401  (registers the methods)

    print(write_glossary())
