"""Prompt contents a method cannot score or read correctly: targets that are only whitespace or invisible, fields
that match inside a word or more than once, prompts longer than the model's context. Each is refused before any
forward pass, naming the prompt."""

import interp
from interp.errors import PromptError, SpanError

P = "The capital of France is"
CASES = [
    ("whitespace-only target", lambda m, t, d: interp.predictions(m, [{"id": "w", "prompt": P, "target": "   "}]),
     PromptError, "Prompt 'w': the target '   ' is only whitespace"),
    ("zero-width target", lambda m, t, d: interp.predictions(m, [{"id": "z", "prompt": P, "target": "\u200b"}]),
     PromptError, "Prompt 'z': the target .* invisible characters"),
    ("newline-only target", lambda m, t, d: interp.predictions(m, [{"id": "n", "prompt": P, "target": "\n"}]),
     PromptError, "only whitespace"),
    ("subject inside a word", lambda m, t, d: interp.capture(m, [{"id": "s", "prompt": "The Parisian is",
                                                                   "subject": "Paris"}], "blocks.0.hook_resid_post",
                                                              positions="subject"),
     SpanError, "Prompt 's': the subject 'Paris' occurs only inside a word"),
    ("subject twice", lambda m, t, d: interp.capture(m, [{"id": "two", "prompt": "Paris and Paris are",
                                                          "subject": "Paris"}], "blocks.0.hook_resid_post",
                                                     positions="subject"),
     SpanError, "Prompt 'two': the subject 'Paris' occurs 2 times in the prompt; say which"),
    ("occurrence out of range", lambda m, t, d: interp.capture(m, [{"id": "o", "prompt": "Paris and Paris are",
                                                                    "subject": "Paris", "subject_occurrence": 2}],
                                                               "blocks.0.hook_resid_post", positions="subject"),
     SpanError, "subject_occurrence=2, but the subject 'Paris' occurs 2 time"),
    ("whitespace-only subject", lambda m, t, d: interp.capture(m, [{"id": "e", "prompt": P, "subject": "  "}],
                                                               "blocks.0.hook_resid_post", positions="subject"),
     SpanError, "the subject is empty or only whitespace"),
    ("prompt longer than the context", lambda m, t, d: interp.predictions(m, [
        {"id": "long", "prompt": " ".join(["France"] * 400)}]), PromptError,
     "Prompt 'long' has \\d+ tokens, more than the model's context of 256"),
    ("prompt longer than the context (GPT-2)", lambda m, t, d: interp.predictions(interp.load_model(d["gpt2"]), [
        {"id": "long", "prompt": " ".join(["France"] * 400)}]), PromptError, "more than the model's context"),
    ("long prompt in capture", lambda m, t, d: interp.capture(m, [{"id": "c", "prompt": "a " * 300}],
                                                              "blocks.0.hook_resid_post"),
     PromptError, "Prompt 'c' has"),
]
