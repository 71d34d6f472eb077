"""The reference (KL) term: log pi_ref(y | x) of the policy itself."""

from __future__ import annotations

import torch

from seaflow.layout import Layout, PrefixLayout, active_mask, build_layout, build_prefix_layout, supports_prefix_cache, with_prefix_cache
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
        self._cacheable = self.cache_prefix and supports_prefix_cache(policy.model)

    def prepare(self, batch: ResponseBatch) -> Layout | PrefixLayout:
        pad = self.policy.tokenizer.pad_token_id
        device = self.policy.model.get_input_embeddings().weight.device
        if getattr(self, "_cacheable", False) and all(batch.prompt_ids):
            layout = build_prefix_layout(batch.prompt_ids, batch.lengths, pad).to(device)
            return with_prefix_cache(self.policy.model, layout)
        return build_layout(batch.prompt_ids, batch.lengths, pad).to(device)

    def token_logprobs(self, layout: Layout | PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        """Per-position log-likelihood ``(B, L)``, zero at inactive positions."""
        pieces, start = [], 0
        for logits in layout.next_token_logit_blocks(self.policy.model, response):
            width = logits.shape[1]
            pieces.append(_token_logprobs(logits, response[:, start : start + width]))
            start += width
        per_token = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        mask = active_mask(layout.lengths.to(per_token.device), response.shape[1])
        return per_token * mask

    def value(self, prepared: Layout | PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        return self.token_logprobs(prepared, response).sum(-1)


def _token_logprobs(logits: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v log_softmax(logits)_v`` per position (or the log-probability of token ids)."""
    logits = logits.float()
    if response.dtype == torch.long:
        return logits.gather(-1, response.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return _ExpectedLogSoftmax.apply(logits, response.float())


class _ExpectedLogSoftmax(torch.autograd.Function):
    """``<p, z> - logsumexp(z) * sum_v p_v`` over the last dimension, i.e. ``sum_v p_v log_softmax(z)_v``.

    The same value and gradients as the plain expression, with fewer full-vocabulary
    float32 tensors: the log-softmax is never materialised, the backward pass keeps only
    ``z`` and ``p`` (which exist anyway) and builds each gradient in one buffer in place
    (``dz = g (p - softmax(z) sum p)``, ``dp = g (z - logsumexp z)``).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        normaliser = torch.logsumexp(logits, dim=-1)
        mass = probs.sum(-1)
        ctx.save_for_backward(logits, probs, normaliser, mass)
        return (probs * logits).sum(-1) - normaliser * mass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, probs, normaliser, mass = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = grad_probs = None
        if ctx.needs_input_grad[0]:
            grad_logits = (logits - normaliser.unsqueeze(-1)).exp_()  # softmax(z)
            grad_logits.mul_(-mass.unsqueeze(-1)).add_(probs).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_probs = (logits - normaliser.unsqueeze(-1)).mul_(grad)
        return grad_logits, grad_probs
