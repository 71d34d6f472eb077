"""Multiple-try discrete Langevin: several gradient-informed candidates per step, each scored exactly by forward passes."""

from __future__ import annotations

from typing import Literal

import torch

from seaflow import rng
from seaflow.checks import require, require_one_of
from seaflow.samplers.base import EnergyFn, SamplerOutput, SamplerState
from seaflow.samplers.discrete_langevin import DiscreteLangevin
from seaflow.schedules import Schedule


class MultipleTryDiscreteLangevin(DiscreteLangevin):
    """:class:`DiscreteLangevin` with ``tries`` candidate moves per step, each scored by its exact energy.

    Per step and chain, ``K = tries`` candidates ``y_1 .. y_K`` are drawn independently from the
    discrete Langevin proposal ``q(. | x)`` (the gradient at the current tokens ranks the
    moves). Their exact energies come from ``energy_fn.energies`` (forward passes only, no
    backward; in SEA :meth:`seaflow.refine.EnergyFunction.energies`). Then, by ``selection``:

    - ``metropolis`` (exact): multiple-try Metropolis (Liu, Liang & Wong 2000) with the
      weights ``w(y | x) = exp(-E(y) / T) / q(y | x)``. One candidate ``y`` is chosen with
      probability proportional to its weight; ``K - 1`` reference points ``x*_i`` are drawn
      from ``q(. | y)`` (the gradient at ``y``: one gradient evaluation) and ``x*_K = x``; the
      move is accepted with probability ``min(1, sum_j w(y_j | x) / sum_i w(x*_i | y))``.
      The chain samples ``exp(-E / T)`` exactly; with ``tries: 1`` this is DiscreteLangevin's
      Metropolis test. Cost per step: one gradient evaluation and ``2K - 1`` forward-only ones.
    - ``greedy`` (not a sampler of ``exp(-E / T)``): the candidate of lowest exact energy is
      taken when it does not raise the energy. Cost per step: ``K`` forward-only evaluations
      and one gradient evaluation when some chain moved (none otherwise).

    With ``noise_scale: 0`` (optimisation mode) the selection is ``greedy``; the candidates are
    then ``K`` draws from the proposal at a positive ``proposal_temperature``, or, without one,
    the ``K`` single-token edits with the lowest first-order energy change
    ``g_i[v] - g_i[x_i]`` (gradient-ranked, distinct positions or tokens).

    ``energy_fn`` must provide ``energies(candidates (chains, K, ...), base (chains, ...))``:
    the exact energies ``(chains, K)`` of categorical states given as category indices.

    Diagnostics: DiscreteLangevin's ``flips`` (positions the chosen candidate changes),
    ``accept``, ``accept_prob``, and ``candidates`` (forward-only evaluations per chain this step).

    Args:
        tries: candidates per step, ``K >= 1``.
        selection: ``metropolis`` (exact multiple-try Metropolis) or ``greedy``.
        step_size, noise_scale, proposal_temperature, scale: as :class:`DiscreteLangevin`.
    """

    def __init__(
        self,
        tries: int = 4,
        selection: Literal["metropolis", "greedy"] = "metropolis",
        step_size: float | Schedule = 1.0,
        noise_scale: float | Schedule = 1.0,
        proposal_temperature: float | Schedule | None = None,
        scale: float = 10.0,
    ):
        super().__init__(step_size=step_size, noise_scale=noise_scale, metropolis=True,
                         proposal_temperature=proposal_temperature, scale=scale)
        require(isinstance(tries, int) and tries >= 1, "MultipleTryDiscreteLangevin tries", tries,
                "an integer >= 1 (model.init_args.sampler.init_args.tries)")
        require_one_of("MultipleTryDiscreteLangevin selection", selection, ("metropolis", "greedy"))
        self.tries = tries
        self.selection = selection

    # -- candidates ------------------------------------------------------------------------------

    def draws(self, log_probs: torch.Tensor, tokens: torch.Tensor, count: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` independent draws ``(chains, count, ...)`` from the proposal and their ``log q`` ``(chains, count)``."""
        # one CDF for all draws (inverse-CDF sampling, one uniform per position and draw)
        cdf = log_probs.double().exp_().cumsum_(dim=-1)
        uniform = rng.rand((*tokens.shape, count), generator, device=log_probs.device, dtype=cdf.dtype)
        drawn = torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True).clamp_max_(log_probs.shape[-1] - 1)
        del cdf
        # a draw on a zero-probability token can only come from rounding at the very end of the CDF
        possible = torch.isfinite(log_probs.gather(-1, drawn))
        drawn = torch.where(possible, drawn, tokens.unsqueeze(-1)).movedim(-1, 1)  # (chains, count, ...)
        expanded = log_probs.unsqueeze(1).expand(-1, count, *log_probs.shape[1:])
        log_q = expanded.gather(-1, drawn.unsqueeze(-1)).squeeze(-1).flatten(2).sum(-1)
        return drawn, log_q

    @staticmethod
    def ranked_edits(grad: torch.Tensor, tokens: torch.Tensor, step: torch.Tensor, allowed: torch.Tensor | None, count: int) -> torch.Tensor:
        """The ``count`` single-token edits with the lowest ``g_i[v] - g_i[x_i]``, ``(chains, count, ...)``.

        Chains with step 0 get copies of their current tokens."""
        chains = tokens.shape[0]
        delta = grad - grad.gather(-1, tokens.unsqueeze(-1))
        delta = delta.scatter(-1, tokens.unsqueeze(-1), float("inf"))  # an edit changes the token
        if allowed is not None:
            delta = delta.masked_fill(~allowed, float("inf"))
        flat = delta.reshape(chains, -1)
        count_here = min(count, flat.shape[1])
        values, index = flat.topk(count_here, dim=1, largest=False)
        vocab = grad.shape[-1]
        position, token = index // vocab, index % vocab
        current = tokens.reshape(chains, -1)
        edits = current.unsqueeze(1).repeat(1, count, 1)
        rows = torch.arange(chains, device=tokens.device)
        for j in range(count_here):
            valid = torch.isfinite(values[:, j]) & (step > 0)
            edits[rows, j, position[:, j]] = torch.where(valid, token[:, j], current[rows, position[:, j]])
        return edits.reshape(chains, count, *tokens.shape[1:])

    @staticmethod
    def categorical(log_weights: torch.Tensor, generator) -> torch.Tensor:
        """One index per row from ``softmax(log_weights)`` ``(chains, K)``; rows without a finite weight give 0."""
        finite = torch.isfinite(log_weights).any(1, keepdim=True)
        weights = torch.softmax(torch.where(finite, log_weights, 0.0).double(), dim=1)
        cdf = weights.cumsum(1)
        uniform = rng.rand((log_weights.shape[0], 1), generator, device=log_weights.device, dtype=cdf.dtype)
        return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).clamp_max_(log_weights.shape[1] - 1).squeeze(1)

    @staticmethod
    def candidate_energies(energy_fn: EnergyFn, candidates: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        energies = getattr(energy_fn, "energies", None)
        if energies is None:
            raise ValueError(
                f"MultipleTryDiscreteLangevin needs an energy function with energies(candidates, base) (forward-only exact "
                f"energies of token states); {type(energy_fn).__name__} has none. SEA's EnergyFunction provides it; for a "
                f"plain function pass energies= to FunctionEnergy"
            )
        return energies(candidates, base)

    # -- the step --------------------------------------------------------------------------------

    def step(self, x: torch.Tensor, energy_fn: EnergyFn, state: SamplerState, generator=None) -> SamplerOutput:
        if x.dim() < 2:
            raise ValueError(
                f"MultipleTryDiscreteLangevin reads the last dimension of the state as categories and needs a state of shape "
                f"(chains, ..., categories), got shape {tuple(x.shape)}"
            )
        start, evaluations = self.energy_at(x, energy_fn, state)
        step = self.chain_step(self.scheduled("step_size", self.step_size, state), state, x)
        noise = self.scheduled("noise_scale", self.noise_scale, state)
        temperature = noise * noise
        proposal_temperature = temperature if self.proposal_temperature is None else self.scheduled(
            "proposal_temperature", self.proposal_temperature, state
        )
        exact = self.selection == "metropolis" and temperature > 0
        if exact and proposal_temperature <= 0:
            raise ValueError(
                "MultipleTryDiscreteLangevin with selection 'metropolis' needs a positive proposal_temperature at a positive "
                f"noise_scale (got {proposal_temperature!r}); set proposal_temperature to null or > 0, or selection: greedy"
            )
        allowed = self.allowed_mask(energy_fn, x)
        tokens = x.argmax(dim=-1)
        k = self.tries
        if proposal_temperature > 0:
            log_probs = self.proposal_log_probs(start.grad, tokens, step, proposal_temperature, allowed)
            candidates, log_forward = self.draws(log_probs, tokens, k, generator)
        else:
            candidates, log_forward = self.ranked_edits(start.grad, tokens, step, allowed, k), None
        energies = self.candidate_energies(energy_fn, candidates, tokens)
        rows = torch.arange(x.shape[0], device=x.device)
        if exact:
            log_weights = torch.nan_to_num(-energies / temperature - log_forward, nan=float("-inf"))
            chosen_index = self.categorical(log_weights, generator)
            chosen = candidates[rows, chosen_index]
            proposed = energy_fn(self.rewrite(x, tokens, chosen))
            evaluations += 1
            log_back = self.proposal_log_probs(proposed.grad, chosen, step, proposal_temperature, allowed)
            back_to_x = self.sum_per_chain(log_back.gather(-1, tokens.unsqueeze(-1)).squeeze(-1))
            reference_weights = [(-start.energy / temperature - back_to_x).unsqueeze(1)]
            if k > 1:
                references, log_reference = self.draws(log_back, chosen, k - 1, generator)
                reference_energies = self.candidate_energies(energy_fn, references, chosen)
                reference_weights.insert(0, -reference_energies / temperature - log_reference)
            reference_weights = torch.nan_to_num(torch.cat(reference_weights, 1), nan=float("-inf"))
            log_ratio = torch.logsumexp(log_weights, 1) - torch.logsumexp(reference_weights, 1)
            log_ratio = torch.where(torch.isfinite(log_weights).any(1), log_ratio, float("-inf"))
            kept, accept, probability = self.accept_or_keep(state, start, proposed, log_ratio, generator)
            sample = kept.point
            forward_only = 2 * k - 1
        else:
            finite = torch.where(torch.isfinite(energies), energies, float("inf"))
            best_energy, best = finite.min(1)
            chosen = candidates[rows, best]
            changed = (chosen != tokens).flatten(1).any(1)
            accept = changed & (best_energy <= start.energy)
            probability = accept.to(x.dtype)
            if bool(accept.any()):
                moved = self.rewrite(x, tokens, torch.where(self.per_chain(accept, chosen), chosen, tokens))
                self.remember(state, energy_fn(moved))
                evaluations += 1
                sample = moved
            else:
                self.remember(state, start)
                sample = x
            forward_only = k
        diagnostics = {
            "flips": self.sum_per_chain((chosen != tokens).to(x.dtype)),
            "accept": accept.to(x.dtype),
            "accept_prob": probability.detach().to(x.dtype),
            "candidates": torch.full((x.shape[0],), float(forward_only), dtype=x.dtype, device=x.device),
        }
        return SamplerOutput(sample=sample, start=start, diagnostics=diagnostics, evaluations=evaluations)
