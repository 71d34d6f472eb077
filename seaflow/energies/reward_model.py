"""A sequence-classification reward model fed relaxed tokens through ``inputs_embeds``."""

from __future__ import annotations

import torch

from seaflow.layout import Layout, PrefixLayout, build_layout, build_prefix_layout, supports_prefix_cache, with_prefix_cache
from seaflow.energies.base import ResponseBatch, Reward, check_device
from seaflow.models import LoadedModel, apply_adapter, load_sequence_classifier


class RewardModel(Reward):
    """``r(x, y)`` = one output logit of an HF ``AutoModelForSequenceClassification``.

    The model sees ``[prompt ; response]`` (or the response alone with
    ``include_prompt: false``), left-padded so that the last position, which HF pools for
    decoder classifiers, is always the last response token. It must share the policy's
    vocabulary (checked at setup).

    With ``cache_prefix`` (default) the prompt's key/value cache is computed once per batch
    in ``prepare``; every evaluation runs the classifier's backbone on the response
    positions only and applies its score head to the hidden state of each row's last active
    response position (what the classifier pools). Same values and gradients as whole rows
    up to float rounding. Whole rows are run when there is nothing to cache
    (``include_prompt: false``, an empty prompt), when the model's cache is not a plain
    full-attention cache (sliding windows, recurrent layers), or when the classifier is not
    a decoder with a ``score`` head (e.g. an encoder with a pooler).

    Args:
        model: hub id, local directory or GGUF path of the reward model.
        label_index: which output logit is the reward (default 0, the usual single-logit head).
        include_prompt: feed the prompt before the response.
        dtype: model dtype (e.g. ``bfloat16``); None keeps the checkpoint's.
        trust_remote_code: allow custom model code from the checkpoint (off by default).
        cache_prefix: cache the prompt's keys and values once per batch (see above).
        device: keep the reward model on this device (e.g. ``cuda:1``) instead of the policy's:
            the model is then not a submodule of the method, so Lightning does not move it;
            relaxed tokens are moved to it and the reward back (gradients cross devices).
            None: the model is a submodule and goes wherever Lightning puts the method.
        adapter: a PEFT adapter (LoRA, ...) of the reward model, a local directory or a hub id,
            merged into its weights at load time (``modules_to_save`` such as a retrained score
            head included). None: the model as it is.
    """

    def __init__(
        self,
        model: str,
        label_index: int = 0,
        include_prompt: bool = True,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        cache_prefix: bool = True,
        device: str | None = None,
        adapter: str | None = None,
    ):
        super().__init__()
        self.model_name = model
        self.adapter = adapter
        self.label_index = label_index
        self.include_prompt = include_prompt
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.cache_prefix = cache_prefix
        self.device = check_device(device, "RewardModel")
        self.reward_model: torch.nn.Module | None = None

    def setup(self, policy: LoadedModel) -> None:
        if self.reward_model is not None:
            return
        loaded = self.load_model()
        self.check_vocabulary(policy, loaded, f"reward model {self.model_name!r}")
        labels = loaded.model.config.num_labels
        if not 0 <= self.label_index < labels:
            raise ValueError(f"label_index {self.label_index} is out of range for {self.model_name!r} with {labels} labels")
        self.attach(loaded.model, loaded.tokenizer.pad_token_id)

    def load_model(self) -> LoadedModel:
        """The classifier ``model`` names, with ``adapter`` merged into it when one is given."""
        name = type(self).__name__
        loaded = load_sequence_classifier(self.model_name, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                                          role=f"the reward model ({name} model)")
        if self.adapter is not None:
            loaded = apply_adapter(loaded, self.adapter, f"{name} adapter")
        return loaded

    def attach(self, model: torch.nn.Module, pad_id: int) -> None:
        """Use an already loaded classifier (``setup`` loads one otherwise); no vocabulary check."""
        if self.device is not None:
            self._modules.pop("reward_model", None)
            self._borrow(self, "reward_model", model.to(self.device))  # out of the module tree
        else:
            self.reward_model = model
        self.pad_id = pad_id
        self._cache_parts = _classifier_parts(model) if self.cache_prefix and supports_prefix_cache(model) else None

    def prepare(self, batch: ResponseBatch) -> Layout | PrefixLayout:
        if not hasattr(self, "_cache_parts"):  # a model assigned directly, not through attach()
            self.attach(self.reward_model, self.pad_id)
        before = batch.prompt_ids if self.include_prompt else [[] for _ in range(len(batch))]
        device = self.reward_model.get_input_embeddings().weight.device
        if self._cache_parts is not None and all(before):
            backbone, head = self._cache_parts
            layout = build_prefix_layout(before, batch.lengths, self.pad_id).to(device)
            return with_prefix_cache(backbone, layout, head=head)
        return build_layout(before, batch.lengths, self.pad_id).to(device)

    def value(self, prepared: Layout | PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        home = response.device
        response = response.to(self.reward_model.get_input_embeddings().weight.device)
        if isinstance(prepared, PrefixLayout):
            logits = self._cached_logits(prepared, response)
        else:
            logits = prepared.run(self.reward_model, response).logits
        return logits[:, self.label_index].float().to(home)

    def _cached_logits(self, layout: PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        """The classifier's pooled logits ``(B, labels)``: score head on each row's last active position."""
        backbone, head = self._cache_parts
        if response.shape[1] == 0:
            return layout.last_logits
        hidden = layout.run(backbone, response).last_hidden_state
        lengths = layout.lengths.to(hidden.device)
        last = (lengths - 1).clamp(min=0)
        logits = head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        # a row without response tokens ends with its prompt: the prefix pass scored it
        return torch.where((lengths == 0).unsqueeze(1), layout.last_logits.to(logits.dtype), logits)


def _classifier_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``(backbone, score head)`` of an HF decoder classifier, or None when it has another shape."""
    head = getattr(model, "score", None)
    backbone = getattr(model, "base_model", None)
    if not isinstance(head, torch.nn.Linear) or backbone is None or backbone is model:
        return None
    return backbone, head

