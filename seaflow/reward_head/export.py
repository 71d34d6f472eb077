"""The trained head as an HF ``AutoModelForSequenceClassification`` directory."""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def export_classifier(module, directory: str | Path) -> Path:
    """Save ``module``'s (a :class:`~seaflow.reward_head.RewardHead`) policy weights and trained
    head as an HF sequence-classification directory."""
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    source = module.policy.model
    config = copy.deepcopy(source.config)
    config.num_labels = 1
    config.architectures = None
    config.pad_token_id = module.policy.tokenizer.pad_token_id
    config.seaflow_reward_head = {
        "policy": module.policy_name, "include_prompt": module.include_prompt,
        "max_response_tokens": module.max_response_tokens, "bias": float(module.bias.detach()),
        "label_1": "refusal (refusal-phrase rule on the policy's own responses)",
    }
    scale = 1.0
    if getattr(module, "objective", "classify") == "regress":
        data = getattr(getattr(module, "_trainer", None), "datamodule", None)
        reward = getattr(data, "reward", None)
        scale = float(module.target_std)
        config.seaflow_reward_head.update({
            "label_1": f"surrogate of {reward.describe() if reward is not None else 'a text reward'} "
                       "(regressed on the policy's own samples; output in the reward's units minus its mean)",
            "objective": "regress", "target_mean": float(module.target_mean), "target_std": scale,
            "bias": float(module.bias.detach()) * scale + float(module.target_mean),
        })
    model = AutoModelForSequenceClassification.from_config(config, dtype=source.dtype)
    base = getattr(model, model.base_model_prefix)
    base.load_state_dict(module.backbone.state_dict())
    if not hasattr(model, "score"):
        raise TypeError(f"{type(model).__name__} has no 'score' head; only decoder classifiers are supported")
    with torch.no_grad():
        model.score.weight.copy_((module.head.weight.detach() * scale).to(model.score.weight))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    module.policy.tokenizer.save_pretrained(directory)
    return directory
