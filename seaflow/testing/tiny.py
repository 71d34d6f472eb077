"""Tiny random HF models for tests: built from a config, saved, loaded back through from_pretrained.

The tokenizer is a word-level tokenizer over a small English vocabulary (some words carry
VADER valence, so the lexicon reward has signal) with a ChatML chat template, like the
embedded SmolLM2's. seaflow's own tests and a user's (``seaflow.testing``) use the same models.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import torch

WORDS = (
    "the a an and or but is was are be to of in on at for with it this that i you we they "
    "he she my your our day morning night food dog cat city train weather work friend "
    "good great happy love wonderful nice excellent fun beautiful best "
    "bad sad terrible hate awful horrible worst angry boring ugly "
    "yes no maybe very really not so too . , ! ? reply request answer positive cheerful "
    "here write describe tell me about how what why sure sorry cannot help"
).split()
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|> ' + message['role'] + ' ' + message['content'] + ' <|im_end|> '}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}{% endif %}"
)


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
        bos_token="<|im_start|>", eos_token="<|im_end|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    config = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
    )
    config.update(overrides)
    return LlamaConfig(**config)


def build_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """Save a tiny policy, a same-vocabulary reward model and a different-vocabulary one."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    paths = {name: root / name for name in ("policy", "reward", "other_vocab_reward")}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(paths["policy"])
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(llama_config(vocab))
    # sharpen the random policy a little so samples are not uniform noise
    with torch.no_grad():
        policy.lm_head.weight.mul_(8.0)
    policy.generation_config.eos_token_id = 3
    policy.generation_config.pad_token_id = 0
    policy.save_pretrained(paths["policy"])
    reward = LlamaForSequenceClassification(llama_config(vocab, num_labels=1))
    reward.save_pretrained(paths["reward"])
    tokenizer.save_pretrained(paths["reward"])
    other = LlamaForSequenceClassification(llama_config(vocab + 7, num_labels=1))
    other.save_pretrained(paths["other_vocab_reward"])
    build_tokenizer(paths["other_vocab_reward"])
    return paths


@lru_cache(maxsize=None)
def tiny_model_paths() -> dict[str, Path]:
    """:func:`build_models` into a temporary directory, once per process."""
    return build_models(Path(tempfile.mkdtemp(prefix="seaflow-tiny-")))


@lru_cache(maxsize=None)
def tiny_policy():
    """The tiny random policy, loaded once per process (a :class:`~seaflow.models.LoadedModel`)."""
    from seaflow.models import load_causal_lm

    return load_causal_lm(str(tiny_model_paths()["policy"]))
