"""Tiny random HF models for tests: built from a config, saved, loaded back through from_pretrained.

The tokenizer is a word-level tokenizer over a small English vocabulary (some words carry
VADER valence, so the lexicon reward has signal) with a ChatML chat template, like the
embedded SmolLM2's.
"""

from __future__ import annotations

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


def run_config_on_tiny(config: dict, tmp_path: Path, tiny_models: dict[str, Path], **init_args) -> list[dict]:
    """Run a (shipped) predict config through ``seaflow predict`` on the tiny policy and two
    prompts, with ``init_args`` overriding the model's; returns the records."""
    import json

    import yaml

    from seaflow.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(["describe the city", "how was the train"])))
    config["model"]["init_args"].update(policy=str(tiny_models["policy"]), **init_args)
    config["data"].update(path=str(prompts), batch_size=2)
    config["output"]["output_dir"] = str(tmp_path / "run")
    config["trainer"]["enable_progress_bar"] = False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["predict", "--config", str(path)])
    return [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]


def build_text_classifier(directory: Path, seed: int = 1) -> Path:
    """A tiny random BERT sequence classifier (2 labels) with its own tokenizer: lower-cased
    words in another order than the policy's, [CLS]/[SEP] specials and words the policy lacks."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = sorted(set(WORDS) | {"sunny", "rainy", "glad"}, reverse=True)
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
    )
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, num_labels=2, pad_token_id=0,
    )
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    return directory
