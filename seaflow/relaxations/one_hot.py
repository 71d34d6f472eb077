"""One-hot relaxation with an identity backward pass (for discrete samplers)."""

from __future__ import annotations

import torch

from seaflow.relaxations.base import Relaxation


class OneHot(Relaxation):
    """Forward: ``one_hot(argmax y)``; backward: the identity, so ``dE/dy = dE/dp``.

    The models see real tokens, so the energy of ``y`` is exactly the discrete energy of its
    argmax tokens, and the gradient handed back is the gradient with respect to the one-hot
    inputs themselves: entry ``[t, v]`` is the first-order change of the energy when
    position ``t`` puts its mass on token ``v``. That is what gradient-informed discrete
    samplers (:class:`~seaflow.samplers.DiscreteLangevin`) need; a continuous sampler moving
    ``y`` along it would ignore that ``y`` only matters through its argmax.

    With ``allowed``, the argmax is taken over the allowed tokens only, and disallowed
    tokens get zero gradient.
    """

    one_hot_gradient = True

    def forward(self, logits, generator=None, allowed=None):
        hard = self.hard(self.restrict(logits, allowed)).to(logits.dtype)
        passthrough = logits - logits.detach()  # zero in value, identity in gradient
        if allowed is not None:
            passthrough = torch.where(allowed, passthrough, torch.zeros_like(passthrough))
        return hard + passthrough
