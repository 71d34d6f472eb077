"""Tiny random HF models for tests (built by seaflow.testing.tiny, shipped with the package),
a helper that runs a shipped config on them, and one that runs a method without Lightning."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from seaflow.testing.tiny import CHAT_TEMPLATE, SPECIAL, WORDS, build_models, build_tokenizer, llama_config  # noqa: F401


def run_method(method, policy, prompts: list[str] = (), batch_size: int | None = None, rows: list[dict] | None = None,
               **data_options) -> tuple[list[dict], list[dict]]:
    """``(records, items)`` of ``method`` on ``prompts`` (or explicit prompt ``rows``) through the
    data module without Lightning, ``batch_size`` prompts per ``predict_step`` (default: all)."""
    from seaflow.data import PromptDataModule, collate

    method.attach(policy)
    data = PromptDataModule(path="unused", **data_options)
    data.prompts = rows or [{"id": f"p{i}", "prompt": t, "index": i} for i, t in enumerate(prompts)]
    data.attach_tokenizer(policy.tokenizer)
    items = data.items()
    size = batch_size or len(items)
    records = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        records += method.predict_step(collate(chunk))
    return records, items


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



class PauseAfterFirstBatch(L.Callback):
    """A callback for a ``seaflow predict`` process a test starts (``--trainer.callbacks+
    tiny.PauseAfterFirstBatch``): after the first batch rank 0 creates ``<output_dir>/paused``
    and waits until the test creates ``<output_dir>/go`` (at most a minute)."""

    def on_predict_batch_end(self, trainer, *args, **kwargs):
        import time

        root = Path(trainer.default_root_dir)
        if trainer.is_global_zero and not (root / "paused").exists():
            (root / "paused").touch()
            deadline = time.monotonic() + 60
            while not (root / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)


def build_lora_adapter(base: str, directory: Path, classifier: bool = False, seed: int = 0, scale: float = 0.05,
                       target_modules: tuple[str, ...] = ("q_proj", "v_proj"), head: str = "score") -> Path:
    """A LoRA adapter of the model at ``base`` (a causal LM, or a sequence classifier whose ``head``
    it retrains), saved by peft to ``directory``: random nonzero deltas of size ``scale``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from seaflow.models import resolve_location

    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = auto.from_pretrained(resolve_location(base))
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(target_modules), init_lora_weights=False,
                        task_type="SEQ_CLS" if classifier else "CAUSAL_LM", modules_to_save=[head] if classifier else None)
    torch.manual_seed(seed)
    adapted = get_peft_model(model, config)
    with torch.no_grad():
        for name, weight in adapted.named_parameters():
            if "lora_" in name:
                weight.copy_(torch.randn_like(weight) * scale)
            elif "modules_to_save" in name:
                weight.add_(torch.randn_like(weight) * scale)
    adapted.save_pretrained(directory)
    return directory
