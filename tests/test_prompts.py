"""PromptSet construction, token spans, target tokens and chat templates."""

import json

import pandas as pd
import pytest

import interp
from interp.prompts import Encoded, encode, token_span, tokenize

from .helpers import PROMPTS


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return interp.load_model(tiny_model_dirs["llama"])


def test_every_source_gives_the_same_records(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in PROMPTS))
    csv = tmp_path / "p.csv"
    pd.DataFrame(PROMPTS).to_csv(csv, index=False)
    sets = [interp.PromptSet(PROMPTS), interp.PromptSet(jsonl), interp.PromptSet(str(csv)),
            interp.PromptSet(pd.DataFrame(PROMPTS)), interp.PromptSet.from_jsonl(jsonl)]
    for ps in sets:
        assert ps.records == sets[0].records
    strings = interp.PromptSet([r["prompt"] for r in PROMPTS])
    assert strings.ids == ["0", "1", "2", "3"]


def test_extra_columns_are_kept_as_metadata():
    ps = interp.PromptSet([{"prompt": "a b", "difficulty": 3, "task": "t"}])
    assert ps[0]["difficulty"] == 3 and ps.filter(task="t").ids == ["0"]


def test_subject_span_covers_leading_space_token(llama):
    enc = encode(llama, PROMPTS, spans=["subject"])
    for rec, item, (s, e) in zip(PROMPTS, enc.items, enc.spans["subject"]):
        decoded = llama.tokenizer.decode(item.ids[s:e])
        assert decoded.strip() == rec["subject"]
        assert s >= int(item.bos)


def test_target_token_is_the_token_after_the_prompt(llama):
    enc = encode(llama, PROMPTS, targets=["target"])
    for rec, item, t in zip(PROMPTS, enc.items, enc.targets["target"]):
        full = tokenize(llama, rec["prompt"] + rec["target"])
        assert full.ids[len(item.ids)] == t
        assert llama.tokenizer.decode([t]).startswith(" ")  # " Paris", not "Paris"


def test_span_cutting_through_a_token_is_an_error(llama):
    item = tokenize(llama, "The capital of France is")
    with pytest.raises(interp.SpanError, match="occurs only inside a word"):
        token_span(item, "apit", prompt_id="x", field_name="subject")
    glued = Encoded(ids=[1, 2], offsets=[(0, 4), (4, 8)], text="ab-cd ef", bos=False)  # a token "ab-c"
    with pytest.raises(interp.SpanError, match="ends inside the token 'ab-c'"):
        token_span(glued, "ab", prompt_id="x", field_name="subject")


def test_spans_match_whole_words_and_a_repeated_one_needs_its_occurrence(llama):
    item = tokenize(llama, "Paris is the capital of France, and Paris is big")
    with pytest.raises(interp.SpanError, match="occurs 2 times.*'subject_occurrence'"):
        token_span(item, "Paris", prompt_id="x", field_name="subject")
    first = token_span(item, "Paris", prompt_id="x", field_name="subject", occurrence=0)
    second = token_span(item, "Paris", prompt_id="x", field_name="subject", occurrence=1)
    assert first[0] < second[0] and llama.tokenizer.decode(item.ids[second[0]:second[1]]).strip() == "Paris"
    ps = interp.PromptSet([{"prompt": item.text, "subject": "Paris", "subject_occurrence": 1}])
    assert encode(llama, ps, spans=["subject"]).spans["subject"] == [second]
    whole = tokenize(llama, "Parisian food in Paris")
    assert token_span(whole, "Paris", prompt_id="x", field_name="subject")[0] > 1  # not the start of "Parisian"


def test_chat_format_string_and_tokenizer_template(llama):
    ps = interp.PromptSet(["how are you"], chat_template="User: {prompt}\nAssistant:")
    assert ps[0]["prompt"] == "User: how are you\nAssistant:" and ps[0]["raw_prompt"] == "how are you"
    tok = llama.tokenizer
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    try:
        ps2 = interp.PromptSet(["hi"], chat_template=True, tokenizer=tok)
        assert ps2[0]["prompt"] == "<user>hi<assistant>"
    finally:
        tok.chat_template = None
