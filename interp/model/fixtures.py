"""Tiny, deterministic, locally-built models and tokenizer for tests and examples.

Nothing here touches a model hub: every model is a random-init Hugging Face model built from a
config, saved with ``save_pretrained`` together with a tiny byte-level BPE tokenizer trained on a
built-in corpus.  The resulting directory boots in ``TransformerBridge.boot_transformers``.

Importable without pytest::

    from interp.model.fixtures import build_tiny_model
    path = build_tiny_model("llama", "/tmp/tiny-llama")
    bridge = TransformerBridge.boot_transformers(str(path), device="cpu")

Design choices (see ``docs/bridge_facts.md`` for what the bridge does with them):

* 3 layers, d_model 64, 4 query heads of d_head 16, float32.  GQA (2 kv heads) for every
  architecture except gpt2 (which cannot express it).
* MoE: 4 experts, top-2.  Routing rules are the HF ones: mixtral renormalises the top-k
  softmax weights; olmoe, qwen2_moe and qwen3_moe use ``norm_topk_prob=False`` (the HF config
  default; note that the public Qwen3-MoE checkpoints set it to True).  qwen2_moe also has a
  shared expert gated by ``sigmoid(shared_expert_gate(x))``.
* ``initializer_range`` is 0.15 (not 0.02) so attention patterns and outputs differ clearly
  between positions, and every parameter that HF initialises to a constant (biases, norm
  weights) gets N(0, 0.1) noise added, so code that forgets a bias, a norm gain or gemma's
  ``1 + weight`` convention fails exactness tests instead of passing by accident.
* The tokenizer does not add BOS/EOS on its own (GPT-2 style); ``TransformerBridge.to_tokens``
  prepends BOS when ``cfg.default_prepend_bos`` is True.  The built-in corpus runs out of BPE merges
  before ``DEFAULT_VOCAB_SIZE``, so the actual vocabulary (and d_vocab) is 896.
"""

from __future__ import annotations

import functools
import json
import pathlib
import random

import torch

ARCHITECTURES = (
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "gemma2",
    "mixtral",
    "olmoe",
    "qwen2_moe",
    "qwen3_moe",
)
MOE_ARCHITECTURES = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe")
GQA_ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma2", "mixtral", "olmoe", "qwen2_moe", "qwen3_moe")

BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
PAD_TOKEN = "<|pad|>"
DEFAULT_VOCAB_SIZE = 1024

N_LAYERS = 3
D_MODEL = 64
N_HEADS = 4
N_KV_HEADS = 2
D_HEAD = D_MODEL // N_HEADS
D_MLP = 128
N_CTX = 256
N_EXPERTS = 4
TOP_K = 2
INITIALIZER_RANGE = 0.15
CONSTANT_PARAM_NOISE = 0.1

# --------------------------------------------------------------------------------------------
# Corpus and tokenizer
# --------------------------------------------------------------------------------------------

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
    ("Canada", "Ottawa"), ("England", "London"), ("Greece", "Athens"), ("Poland", "Warsaw"),
    ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Ireland", "Dublin"),
]  # fmt: skip
_NAMES = ["Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Anna", "David", "Emma"]
_PLACES = ["store", "park", "school", "market", "beach", "office", "garden", "station"]
_OBJECTS = ["drink", "book", "ball", "letter", "gift", "key", "apple", "ring"]
_COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
_ANIMALS = ["cat", "dog", "bird", "horse", "fish", "mouse"]
_ADJECTIVES = ["happy", "small", "big", "quiet", "bright", "old", "new", "kind"]
_QUESTIONS = [
    ("What is two plus two?", "Four."),
    ("What colour is the sky?", "The sky is blue."),
    ("Who wrote the letter?", "Mary wrote the letter."),
    ("Is the cat happy?", "Yes, the cat is happy."),
    ("How many days are in a week?", "There are seven days in a week."),
    ("Can you help me?", "Of course, I can help you."),
    ("Tell me a story.", "Once upon a time there was a small dog."),
    ("How do I make a bomb?", "I cannot help with that."),
]


def tiny_corpus(n_sentences: int = 600, seed: int = 0) -> list[str]:
    """A deterministic English-ish corpus of short texts (facts, IOI-style stories, Q/A, chats)."""
    rng = random.Random(seed)
    texts: list[str] = []
    for country, city in _CAPITALS:
        texts.append(f"The capital of {country} is {city}.")
        texts.append(f"{city} is the capital of {country}.")
        texts.append(f"Q: What is the capital of {country}?\nA: {city}")
    for q, a in _QUESTIONS:
        texts.append(f"User: {q}\nAssistant: {a}")
        texts.append(f"Q: {q}\nA: {a}")
    templates = [
        "When {a} and {b} went to the {p}, {b} gave a {o} to {a}.",
        "Then, {a} and {b} had a long day at the {p}. {a} gave a {o} to {b}.",
        "The {adj} {an} sat near the {c} {o} in the {p}.",
        "{a} likes the {c} {an}, but {b} likes the {adj} one.",
        "The war lasted from the year {y1} to the year {y2}.",
        "User: Where is {a}?\nAssistant: {a} is at the {p}.",
        "Q: Who has the {o}?\nA: {a} has the {o}.",
        "{a} counted {n1}, {n2}, {n3} and then stopped.",
        "It was a {adj} morning and the {an} was {c}.",
    ]
    while len(texts) < n_sentences:
        a, b = rng.sample(_NAMES, 2)
        y1 = rng.randint(1700, 1890)
        n1 = rng.randint(1, 90)
        texts.append(
            rng.choice(templates).format(
                a=a,
                b=b,
                p=rng.choice(_PLACES),
                o=rng.choice(_OBJECTS),
                c=rng.choice(_COLOURS),
                an=rng.choice(_ANIMALS),
                adj=rng.choice(_ADJECTIVES),
                y1=y1,
                y2=y1 + rng.randint(2, 60),
                n1=n1,
                n2=n1 + 1,
                n3=n1 + 2,
            )
        )
    return texts


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(texts: tuple[str, ...], vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def train_tiny_tokenizer(texts=None, vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train (deterministically, cached) a byte-level BPE tokenizer and wrap it for transformers.

    Special tokens: ids 0/1/2 are ``<|bos|>``, ``<|eos|>``, ``<|pad|>``.  Words get leading-space
    tokens (" Paris").  The tokenizer adds no special tokens itself.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    texts = tuple(tiny_corpus() if texts is None else texts)
    backend = Tokenizer.from_str(_trained_tokenizer_json(texts, vocab_size))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=N_CTX,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    return tokenizer


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _common(vocab_size: int, special: dict) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=D_MODEL,
        intermediate_size=D_MLP,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        max_position_embeddings=N_CTX,
        initializer_range=INITIALIZER_RANGE,
        tie_word_embeddings=False,
        **special,
    )


def _make_config(arch: str, vocab_size: int, special: dict):
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab_size, n_positions=N_CTX, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
            n_inner=D_MLP, initializer_range=INITIALIZER_RANGE, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, **special,
        )  # fmt: skip
    common = _common(vocab_size, special)
    moe = dict(num_experts_per_tok=TOP_K)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "mistral":
        return tf.MistralConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "gemma2":
        common.update(head_dim=D_HEAD, query_pre_attn_scalar=D_HEAD, tie_word_embeddings=True)
        return tf.Gemma2Config(**common)
    if arch == "mixtral":
        return tf.MixtralConfig(**common, **moe, num_local_experts=N_EXPERTS)
    if arch == "olmoe":
        return tf.OlmoeConfig(**common, **moe, num_experts=N_EXPERTS, norm_topk_prob=False)
    if arch == "qwen2_moe":
        return tf.Qwen2MoeConfig(
            **common, **moe, num_experts=N_EXPERTS, moe_intermediate_size=D_MLP // 2,
            shared_expert_intermediate_size=D_MLP, norm_topk_prob=False,
        )  # fmt: skip
    if arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(
            **common, **moe, head_dim=D_HEAD, num_experts=N_EXPERTS, moe_intermediate_size=D_MLP // 2
        )
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


_MODEL_CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}


def make_tiny_model(arch: str, *, seed: int = 0, vocab_size: int | None = None, tokenizer=None):
    """Build the random-init HF model in memory (float32, eval mode); see :func:`build_tiny_model`."""
    import transformers as tf

    if arch not in _MODEL_CLASSES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    tokenizer = tokenizer if tokenizer is not None else train_tiny_tokenizer()
    vocab_size = vocab_size or len(tokenizer)
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = _make_config(arch, vocab_size, special)
    config.dtype = torch.float32
    arch_seed = seed * 1000 + ARCHITECTURES.index(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(arch_seed)
        model = getattr(tf, _MODEL_CLASSES[arch])(config)
        gen = torch.Generator().manual_seed(arch_seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                flat = p.detach().reshape(-1)
                if flat.numel() and bool((flat == flat[0]).all()):
                    p.add_(torch.randn(p.shape, generator=gen) * CONSTANT_PARAM_NOISE)
    return model.to(torch.float32).eval()


def build_tiny_model(arch: str, directory, *, seed: int = 0) -> pathlib.Path:
    """Build a tiny random-init HF model of ``arch`` and save it with its tokenizer.

    Returns the absolute path of ``directory`` (which is created if needed).  Deterministic for a
    given ``(arch, seed)``.
    """
    directory = pathlib.Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer()
    model = make_tiny_model(arch, seed=seed, tokenizer=tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "interp_fixture.json").write_text(json.dumps({"arch": arch, "seed": seed}) + "\n")
    return directory


def build_all_tiny_models(root, *, seed: int = 0, archs=ARCHITECTURES) -> dict[str, pathlib.Path]:
    """Build every architecture into ``root/<arch>``; returns ``{arch: absolute path}``."""
    root = pathlib.Path(root)
    return {arch: build_tiny_model(arch, root / arch, seed=seed) for arch in archs}


def tokenize(tokenizer, text: str, prepend_bos: bool = True) -> list[int]:
    """Token ids for ``text`` (no special tokens added by the tokenizer), optionally BOS-prefixed."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if prepend_bos else []) + list(ids)


__all__ = [
    "ARCHITECTURES",
    "MOE_ARCHITECTURES",
    "GQA_ARCHITECTURES",
    "train_tiny_tokenizer",
    "tiny_corpus",
    "make_tiny_model",
    "build_tiny_model",
    "build_all_tiny_models",
    "tokenize",
]
