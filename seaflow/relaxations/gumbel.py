"""Gumbel-softmax relaxation (hard or soft, optionally annealed)."""

from __future__ import annotations

import math

import torch

from seaflow import rng
from seaflow.relaxations.base import Relaxation
from seaflow.schedules import Schedule, resolve


class GumbelSoftmax(Relaxation):
    """``p = softmax((y + g) / tau)`` with Gumbel noise ``g`` drawn from the given generator.

    ``argmax(y + g)`` is an exact sample of ``Categorical(softmax(y))`` (the Gumbel-max
    trick), so the energy becomes an expectation over sampled responses instead of the
    energy of the single argmax response that :class:`StraightThrough` scores.

    - ``hard=True`` (default): the forward value is ``one_hot(argmax(y + g))`` (real tokens,
      a sample of the categorical), the backward pass uses the gradient of the soft
      ``softmax((y + g) / tau)`` (straight-through Gumbel estimator).
    - ``hard=False``: the soft mixture in both passes.

    Temperature ``tau``: lower is closer to one-hot (less biased, higher-variance
    gradients). It may be annealed over the run, either with ``temperature`` given as a
    :class:`~seaflow.samplers.Schedule`, or from ``temperature`` to ``end_temperature``
    geometrically (``tau = start * (end / start) ** progress``, the exponential decay of the
    Gumbel-softmax paper); the run's progress comes from :meth:`set_progress`.

    Each call draws fresh noise, so the energy is stochastic: samplers with an accept/reject
    step (MALA, HMC) then compare noisy energies. Pass a ``generator`` for reproducibility.
    """

    def __init__(self, temperature: float | Schedule = 1.0, hard: bool = True, end_temperature: float | None = None):
        super().__init__()
        if isinstance(temperature, Schedule):
            if end_temperature is not None:
                raise ValueError("GumbelSoftmax takes either a temperature schedule or end_temperature, not both")
        elif not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"GumbelSoftmax temperature must be a finite number > 0 or a Schedule, got {temperature!r}")
        if end_temperature is not None and not (end_temperature > 0 and math.isfinite(end_temperature)):
            raise ValueError(f"GumbelSoftmax end_temperature must be a finite number > 0, got {end_temperature!r}")
        self.temperature = temperature
        self.end_temperature = end_temperature
        self.hard_forward = hard

    def current_temperature(self) -> float:
        """The temperature at the current progress."""
        if self.end_temperature is not None:
            start = float(self.temperature)
            value = start * (self.end_temperature / start) ** self.progress
        else:
            value = resolve(self.temperature, self.progress)
        if not value > 0:
            raise ValueError(f"GumbelSoftmax temperature schedule gave {value!r} at progress {self.progress:.3f}; it must stay > 0")
        return value

    @staticmethod
    def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard Gumbel noise ``-log(Exp(1))`` shaped like ``like``."""
        dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
        exponential = rng.exponential(like.shape, generator, device=like.device, dtype=dtype)
        return -exponential.clamp_min(torch.finfo(exponential.dtype).tiny).log().to(like.dtype)

    def forward(self, logits, generator=None, allowed=None):
        perturbed = self.restrict(logits, allowed) + self.gumbel_noise(logits, generator)
        soft = torch.softmax(perturbed / self.current_temperature(), dim=-1)
        if not self.hard_forward:
            return soft
        return self.hard(perturbed) + (soft - soft.detach())
