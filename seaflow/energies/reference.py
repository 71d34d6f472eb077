"""The reference (KL) term: log pi_ref(y | x) of the policy itself."""

from __future__ import annotations

import torch

from seaflow import layout as L
from seaflow.energies.base import EnergyTerm, ResponseBatch
from seaflow.models import LoadedModel


class ReferenceLogLikelihood(EnergyTerm):
    """``log pi_ref(y | x) = sum_t <p_t, log_softmax(ref_logits_t)>`` over active positions.

    The reference model is the policy, run with teacher forcing on ``[prompt ; p @ W_emb]``;
    its energy is ``-log pi_ref``, i.e. the KL regulariser of the RLHF objective. With a
    one-hot ``p`` the value is exactly the log-likelihood of the tokens.

    Args:
        cache_prefix: compute the prompt's key/value cache once per batch in ``prepare`` and
            run only the response positions on every evaluation (same values and gradients
            up to float rounding). Models whose cache is not a plain full-attention cache
            (sliding windows, recurrent layers) always run whole rows.
    """

    def __init__(self, cache_prefix: bool = True):
        super().__init__()
        self.cache_prefix = cache_prefix

    def setup(self, policy: LoadedModel) -> None:
        object.__setattr__(self, "policy", policy)
        self._cacheable = self.cache_prefix and L.supports_prefix_cache(policy.model)

    def prepare(self, batch: ResponseBatch) -> L.Layout | L.PrefixLayout:
        pad = self.policy.tokenizer.pad_token_id
        device = self.policy.model.get_input_embeddings().weight.device
        if getattr(self, "_cacheable", False) and all(batch.prompt_ids):
            layout = L.build_prefix_layout(batch.prompt_ids, batch.lengths, pad).to(device)
            return L.with_prefix_cache(self.policy.model, layout)
        return L.build_layout(batch.prompt_ids, batch.lengths, pad).to(device)

    def token_logprobs(self, layout: L.Layout | L.PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        """Per-position log-likelihood ``(B, L)``, zero at inactive positions."""
        logits = L.next_token_logits(self.policy.model, layout, response)
        logp = torch.log_softmax(logits, dim=-1)
        if response.dtype == torch.long:
            per_token = logp.gather(-1, response.unsqueeze(-1)).squeeze(-1)
        else:
            per_token = (response.float() * logp).sum(-1)
        mask = L.active_mask(layout.lengths.to(per_token.device), response.shape[1])
        return per_token * mask

    def value(self, prepared: L.Layout | L.PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        return self.token_logprobs(prepared, response).sum(-1)
