"""The sampler contract.

A sampler moves a batch of continuous states ``x`` (chain dimension first, any trailing
shape) towards low energy. It knows nothing about language: SEA hands it the response
logits of shape (chains, length, vocab), the contract tests hand it Gaussians.

One step::

    out = sampler.step(x, energy_fn, state, generator)
    x, state = out.sample, out.state

``energy_fn(x)`` returns ``(energy, grad)``: the per-chain energy of shape ``(chains,)``
(lower is better) and its gradient with the shape of ``x``. A sampler may call it more
than once per step (MALA at the proposal, HMC per leapfrog step); ``out.evaluations``
says how many gradient evaluations the step used, so samplers can be compared at equal
cost. All randomness comes from the explicit ``generator``.

Subclasses implement :meth:`step` and, when they carry state between steps (momenta,
preconditioners, cached gradients), :meth:`init_state`. Every subclass is recorded in
``Sampler.registry`` (built-in and user-defined alike) so that ``seaflow list`` can show
them; configs select samplers through LightningCLI's ``class_path`` as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from seaflow.registry import Registered

EnergyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SamplerState:
    """What a sampler carries from one step to the next.

    ``iteration`` counts finished steps, ``num_steps`` is the planned total (schedules use
    the ratio), ``step_scale`` is a per-chain multiplier on the step size that the caller
    may shrink after a numerical fault. ``cache`` holds sampler-specific tensors, e.g. the
    energy and gradient at the current point so they are not recomputed.
    """

    iteration: int = 0
    num_steps: int = 1
    step_scale: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        """Fraction of the planned steps already taken, in [0, 1]."""
        return min(self.iteration / max(self.num_steps, 1), 1.0)


@dataclass
class SamplerOutput:
    """The result of one :meth:`Sampler.step`.

    ``diagnostics`` maps names to per-chain tensors of shape ``(chains,)``; at least
    ``energy`` (at the point the step started from) and ``grad_norm``. Samplers with an
    accept/reject step add ``accept`` (1.0 accepted, 0.0 rejected).
    """

    sample: torch.Tensor
    state: SamplerState
    diagnostics: dict[str, torch.Tensor]
    evaluations: int = 1


class Sampler(Registered):
    """Base class of all samplers; see the module docstring for the contract."""

    registry: ClassVar[dict[str, type]] = {}

    def init_state(self, x: torch.Tensor, num_steps: int) -> SamplerState:
        """Fresh state for chains starting at ``x``, before ``num_steps`` steps."""
        return SamplerState(
            iteration=0,
            num_steps=num_steps,
            step_scale=torch.ones(x.shape[0], dtype=x.dtype, device=x.device),
        )

    def step(
        self,
        x: torch.Tensor,
        energy_fn: EnergyFn,
        state: SamplerState,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        raise NotImplementedError

    # helpers shared by implementations -------------------------------------------------

    @staticmethod
    def per_chain(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Reshape a per-chain vector ``(chains,)`` to broadcast against ``like``."""
        return values.reshape(values.shape[0], *([1] * (like.dim() - 1)))

    @staticmethod
    def grad_norm(grad: torch.Tensor) -> torch.Tensor:
        return grad.flatten(1).norm(dim=1)

    @staticmethod
    def noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def energy_and_grad(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState):
        """Energy and gradient at ``x``, reusing the cached values when ``x`` is the cached point."""
        cached = state.cache.get("point")
        if cached is not None and cached is x:
            return state.cache["energy"], state.cache["grad"], 0
        energy, grad = energy_fn(x)
        return energy, grad, 1

    @staticmethod
    def remember(state: SamplerState, x: torch.Tensor, energy: torch.Tensor, grad: torch.Tensor) -> None:
        state.cache.update(point=x, energy=energy, grad=grad)
