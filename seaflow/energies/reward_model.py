"""A sequence-classification reward model fed relaxed tokens through ``inputs_embeds``."""

from __future__ import annotations

import torch

from seaflow import layout as L
from seaflow.energies.base import ResponseBatch, Reward
from seaflow.models import LoadedModel, load_sequence_classifier


class RewardModel(Reward):
    """``r(x, y)`` = one output logit of an HF ``AutoModelForSequenceClassification``.

    The model sees ``[prompt ; response]`` (or the response alone with
    ``include_prompt: false``), left-padded so that the last position, which HF pools for
    decoder classifiers, is always the last response token. It must share the policy's
    vocabulary (checked at setup).

    Args:
        model: hub id, local directory or GGUF path of the reward model.
        label_index: which output logit is the reward (default 0, the usual single-logit head).
        include_prompt: feed the prompt before the response.
        dtype: model dtype (e.g. ``bfloat16``); None keeps the checkpoint's.
        trust_remote_code: allow custom model code from the checkpoint (off by default).
    """

    def __init__(
        self,
        model: str,
        label_index: int = 0,
        include_prompt: bool = True,
        dtype: str | None = None,
        trust_remote_code: bool = False,
    ):
        super().__init__()
        self.model_name = model
        self.label_index = label_index
        self.include_prompt = include_prompt
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.reward_model: torch.nn.Module | None = None

    def setup(self, policy: LoadedModel) -> None:
        if self.reward_model is not None:
            return
        loaded = load_sequence_classifier(self.model_name, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        self.check_vocabulary(policy, loaded, f"reward model {self.model_name!r}")
        labels = loaded.model.config.num_labels
        if not 0 <= self.label_index < labels:
            raise ValueError(f"label_index {self.label_index} is out of range for {self.model_name!r} with {labels} labels")
        self.reward_model = loaded.model
        self.pad_id = loaded.tokenizer.pad_token_id

    def prepare(self, batch: ResponseBatch) -> L.Layout:
        before = batch.prompt_ids if self.include_prompt else [[] for _ in range(len(batch))]
        device = self.reward_model.get_input_embeddings().weight.device
        return L.build_layout(before, batch.lengths, self.pad_id).to(device)

    def value(self, prepared: L.Layout, response: torch.Tensor) -> torch.Tensor:
        logits = L.run(self.reward_model, prepared, response).logits
        return logits[:, self.label_index].float()
