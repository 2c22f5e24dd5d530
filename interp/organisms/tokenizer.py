"""Byte-level BPE tokenizer trained on the organism corpus (GPT-2 / Llama-3 style leading-space tokens)."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
DEFAULT_VOCAB_SIZE = 4096
# No token longer than this many bytes (the byte-level space marker counts 2): keeps every invented
# name (>= 8 letters, so >= 10 bytes with its leading space) split into several tokens, like rare names
# in real tokenizers, while short common words (" capital" excepted) stay whole.
MAX_TOKEN_LENGTH = 8


def training_texts(corpus: dict) -> list[str]:
    """The texts the tokenizer is trained on: every *train* record as the model sees it."""
    texts = []
    for fam in ("factual", "safety", "composite"):
        for r in corpus[fam]:
            if r["split"] != "train":
                continue
            texts.append(r["prompt"] + (r.get("response") or r["target"]))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_LENGTH,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )
