"""``seaflow.methods.GuidedSuffixMCMC``: the policy rewrites a suffix, a Metropolis test on the reward accepts.

The LightningModule around the engine in :mod:`seaflow.chains` (the cut distribution, the
suffix proposals, the chain loop and the derivation of the exact acceptance ratio). One
``predict_step``, numbered as the code numbers it:

1. **start**: each chain at a policy sample (:meth:`~seaflow.methods.base.AlignmentMethod.best_of_pool`:
   chain ``c`` is Best-of-N's candidate ``c``; with ``init_pool`` the best ``chains`` of that many);
2. **wire** the engine: the prompts' keys and values, the suffix proposals, the cut rule on the
   reward's gradient, the per-step seeds;
3. **run the chains**: :func:`seaflow.chains.run_chains`, ``steps`` steps of cut, resample,
   accept (its own 1. to 3.), every chain of every prompt at once;
4. **choose** each prompt's state by the return rule (``returns``);
5. **record** it: the shared record fields and each chain's summary and trace (:meth:`GuidedSuffixMCMC.chain_extras`).
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from seaflow.checks import require, require_one_of
from seaflow.chains import ChainRun, GradientCuts, OneHotRewardGradient, SuffixProposals, TokenMoves, prompt_cache, ranked, run_chains
from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.pool import Pool
from seaflow.methods.record import Record
from seaflow.rng import prompt_seed

RETURN_RULES = ("best_reward", "likeliest_best", "best_target", "final")  # model.init_args.returns


class GuidedSuffixMCMC(DiscreteMethod):
    """Gradient-guided suffix resampling with an exact Metropolis test (see the module docstring).

    Per prompt, ``chains`` chains start from policy samples (or, with ``init_pool``, from the
    best ``chains`` of ``init_pool`` samples, candidate ``c`` being Best-of-N's candidate
    ``c``), run ``steps`` Metropolis steps on ``pi_ref(y|x) exp(alpha r(x, y))``, and the
    state chosen by ``returns`` is returned. A forced start
    (``data.response_prefix``) stays in place: the chains start after it and never cut it.

    Two more moves reach what the policy does not write by itself, each exact
    (:mod:`seaflow.chains`): gradient token moves (``token_moves``: at a token slot the reward's
    gradient proposes a token over the whole vocabulary, the policy writes on after it), and
    steered proposals (the data module's ``data.proposal_prompt_field``,
    ``data.proposal_system_prompt`` or ``data.proposal_instruction``: the policy given an
    instructed version ``x'`` of the prompt writes the suffixes, and the ratio corrects for it,
    so the target stays the one of the prompt ``x`` itself).

    Args:
        alpha: reward weight of the target; ``alpha * (r' - r)`` is the log acceptance ratio's
            reward part (a per-token-mean reward such as the lexicon moves by ~1/L per token).
        chains: chains per prompt.
        steps: Metropolis steps per chain (one suffix generation and one reward gradient each).
        cut_temperature: temperature of the softmax over the slots' gradient scores (in units
            of ``log pi``); null = uniform cuts (no gradient is computed).
        cut_floor: share of the uniform distribution mixed into ``q(t|y)`` (in (0, 1]; 1 = uniform).
        cut_top_k: a slot's score looks at the policy's ``cut_top_k`` most likely next tokens
            there; null = the whole vocabulary.
        init_pool: start from the best ``chains`` of this many policy samples per prompt
            (null = the first ``chains`` samples); its cost is part of the method's.
        init_rank: how the pool's best are chosen: ``reward`` (the highest reward, ties to the
            earlier candidate), or ``target`` (the highest ``log pi_ref(y|x) + alpha r``, ``x`` the
            prompt itself even when the pool follows a proposal prompt: one more policy pass
            over the pool).
        token_moves: share of the steps (drawn per chain and step) that are gradient token
            moves instead of plain suffix moves; 0 = none.
        token_temperature: temperature of the token move's gradient term (2: locally balanced).
        token_direction: ``gradient``, or ``random`` (the same move with the gradient's values
            over the vocabulary permuted at random: an ablation of what the gradient adds).
        returns: which visited state a prompt returns: ``best_reward`` (the highest reward any
            chain visited, the first one on a tie), ``likeliest_best`` (the highest reward, among
            states of equal reward the one of highest ``log pi_ref(y|x)``: with a discrete reward
            such as keywords present, the most fluent reply that has them all), ``best_target``
            (the highest ``log pi_ref(y|x) + alpha r``) or ``final`` (the chains' final states,
            samples of the target after ``steps`` steps: the one of highest reward). With any
            rule but ``best_reward`` the record also keeps the other rules' replies
            (``alternatives``).
        init_from: ``prompt``: the initial samples follow the prompt; ``proposal_prompt``: they
            follow the proposal prompt (needs ``data.proposal_prompt_field``,
            ``data.proposal_system_prompt`` or ``data.proposal_instruction``).
        tries: suffixes proposed per chain and step from the same cut, one picked by its weight
            and tested by multiple-try Metropolis (:class:`seaflow.chains.MultipleTries`): a
            step costs ``tries`` suffix generations per chain, all in one batch with the same
            sequential model calls as one; 1 = the plain Metropolis step. Plain suffix moves
            only (no token moves, no steered proposals).
        (others: see :class:`DiscreteMethod`; ``temperature`` and ``top_p`` must stay 1.0)
    """

    def __init__(
        self,
        alpha: float = 50.0,
        chains: int = 4,
        steps: int = 8,
        cut_temperature: float | None = 1.0,
        cut_floor: float = 0.1,
        cut_top_k: int | None = 50,
        init_pool: int | None = None,
        init_rank: Literal["reward", "target"] = "reward",
        token_moves: float = 0.0,
        token_temperature: float = 2.0,
        token_direction: Literal["gradient", "random"] = "gradient",
        returns: Literal["best_reward", "likeliest_best", "best_target", "final"] = "best_reward",
        init_from: Literal["prompt", "proposal_prompt"] = "prompt",
        tries: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        temperature, top_p = self.temperature, self.top_p
        if temperature != 1.0 or top_p != 1.0:
            raise ValueError(
                f"GuidedSuffixMCMC proposes suffixes from the policy itself, so its Metropolis ratio holds only at "
                f"model.init_args.temperature 1.0 and model.init_args.top_p 1.0 (got {temperature} and {top_p}): "
                "set both to 1.0; the target's sharpness is model.init_args.alpha"
            )
        self._require_reward()
        require(alpha >= 0, "model.init_args.alpha", alpha, ">= 0")
        require(chains >= 1, "model.init_args.chains", chains, ">= 1")
        require(steps >= 0, "model.init_args.steps", steps, ">= 0")
        require(cut_temperature is None or cut_temperature > 0, "model.init_args.cut_temperature", cut_temperature,
                "> 0 or null (uniform cuts)")
        require(0 < cut_floor <= 1, "model.init_args.cut_floor", cut_floor,
                "in (0, 1] (every slot needs a positive probability for the chain to reach every response)")
        require(cut_top_k is None or cut_top_k >= 1, "model.init_args.cut_top_k", cut_top_k, ">= 1 or null (whole vocabulary)")
        require(init_pool is None or init_pool >= chains, "model.init_args.init_pool", init_pool, f">= chains ({chains}) or null")
        require_one_of("model.init_args.init_rank", init_rank, ("reward", "target"))
        if cut_temperature is not None and cut_floor < 1:
            if self.reward is None:
                raise ValueError(
                    "GuidedSuffixMCMC's gradient-guided cut needs a differentiable model.init_args.reward (the "
                    "selection_reward is the target); set one, or model.init_args.cut_temperature: null for uniform cuts"
                )
            self.require_gradient("GuidedSuffixMCMC's gradient-guided cut (model.init_args.cut_temperature)")
        require(0 <= token_moves <= 1, "model.init_args.token_moves", token_moves, "in [0, 1] (the share of token moves)")
        require(token_temperature > 0, "model.init_args.token_temperature", token_temperature, "> 0")
        require_one_of("model.init_args.token_direction", token_direction, ("gradient", "random"))
        require_one_of("model.init_args.returns", returns, RETURN_RULES)
        require_one_of("model.init_args.init_from", init_from, ("prompt", "proposal_prompt"))
        require(tries >= 1, "model.init_args.tries", tries, ">= 1 (suffixes per chain and step)")
        if tries > 1 and token_moves > 0:
            raise ValueError(f"model.init_args.tries {tries} proposes plain suffixes only: set model.init_args.token_moves: 0 "
                             "or model.init_args.tries: 1")
        if token_moves > 0:
            if self.reward is None:
                raise ValueError(
                    "GuidedSuffixMCMC's token moves follow the gradient of a differentiable model.init_args.reward; "
                    "set one, or model.init_args.token_moves: 0"
                )
            self.require_gradient("GuidedSuffixMCMC's token moves (model.init_args.token_moves)")
        self.alpha = alpha
        self.chains = chains
        self.steps = steps
        self.cut_temperature = cut_temperature
        self.cut_floor = cut_floor
        self.cut_top_k = cut_top_k
        self.init_pool = init_pool
        self.init_rank = init_rank
        self.token_moves = token_moves
        self.token_temperature = token_temperature
        self.token_direction = token_direction
        self.returns = returns
        self.init_from = init_from
        self.tries = tries

    @property
    def guided(self) -> bool:
        return self.cut_temperature is not None and self.cut_floor < 1

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        """One batch, ``chains`` rows per prompt: 1. start, 2. wire, 3. run the chains, 4. choose, 5. record."""
        started = time.perf_counter()
        chains = self.chains
        prompt_ids, prompts, keys = self.expand(batch, chains)
        forced = self.forced_rows(batch, chains)  # data.response_prefix: every state starts with it, no cut touches it
        width = self.response_width(forced)
        proposal_ids = self.proposal_rows(batch, chains)  # data.proposal_prompt_field / _system_prompt / _instruction: steered proposals
        if proposal_ids is not None and forced:
            raise ValueError("steered proposals (data.proposal_prompt_field / _system_prompt / _instruction) with a forced "
                             "response start (data.response_prefix) are not supported: set one of them to null")
        if self.tries > 1 and proposal_ids is not None:
            raise ValueError(f"model.init_args.tries {self.tries} proposes plain suffixes only, not steered ones: set "
                             "data.proposal_prompt_field, data.proposal_system_prompt and data.proposal_instruction to null, or "
                             "model.init_args.tries: 1")
        if self.init_from == "proposal_prompt" and proposal_ids is None:
            raise ValueError("model.init_args.init_from: proposal_prompt needs proposal prompts: set data.proposal_prompt_field, "
                             "data.proposal_system_prompt or data.proposal_instruction, or model.init_args.init_from: prompt")
        # 1. start: chain c at Best-of-N's candidate c (with init_pool, the best `chains` of that many samples)
        pool = self.best_of_pool(batch, self.init_pool or chains, chains,
                                 drawn_after=self.proposal_rows(batch) if self.init_from == "proposal_prompt" else None,
                                 rank=self.target_rank if self.init_rank == "target" else None)
        tokens, lengths = pool.tokens, pool.lengths
        starts = limits = None
        if forced:
            starts = torch.tensor([len(ids) for ids in forced], device=tokens.device)
            limits = starts + self.max_new_tokens
            if bool((lengths < starts).any()):
                raise ValueError(
                    "a forced response start contains the policy's end-of-sequence token, so the response ends inside it: "
                    "remove it from data.response_prefix (or the data.response_prefix_field texts), or shorten it with "
                    "data.response_prefix_tokens"
                )
        # 2. wire the engine: the prompts' keys and values, the proposals, the cut rule on the reward's gradient, the seeds
        model = self.policy.model
        cache = prompt_cache(model, prompt_ids if proposal_ids is None else proposal_ids, self.pad_id, width)
        top_k = min(self.cut_top_k, self.policy.vocab_size) if (self.guided and self.cut_top_k is not None) else None
        proposals = SuffixProposals(model, cache, width, self.eos_ids, self.pad_id, top_k, limits=limits)
        score = OneHotRewardGradient(self.reward, self.selection_reward, self.policy.vocab_size, prompt_ids, prompts)
        cuts_fn = GradientCuts(
            score, self.alpha, self.cut_temperature, self.cut_floor, starts=starts, limits=limits, keep_grad=self.token_moves > 0,
            batch_rows=self.score_batch,
        )
        token_moves = None
        if self.token_moves > 0:
            token_moves = TokenMoves(self.token_moves, self.alpha, self.token_temperature, self.eos_ids,
                                     random_direction=self.token_direction == "random")
        target_log_prob = None
        if proposal_ids is not None:  # log pi_ref(y | x) under the prompt itself: the importance correction
            scorer = SuffixProposals(model, prompt_cache(model, prompt_ids, self.pad_id, width), width, self.eos_ids, self.pad_id)

            def target_log_prob(t, n):
                return scorer.read(t, n, log_probs=True)[2].sum(1)

        def seeds(step: int) -> list[int]:
            return [prompt_seed(self.seed, key, row % chains, f"suffix-mcmc-{step}") for row, key in enumerate(keys)]

        def try_seeds(step: int) -> list[list[int]]:
            return [[prompt_seed(self.seed, key, row % chains, f"suffix-mcmc-{step}-try-{k}") for row, key in enumerate(keys)]
                    for k in range(1, self.tries)]

        # 3. run the chains: `steps` steps of cut, resample, accept, every chain at once (seaflow/chains.py)
        run = run_chains(proposals, tokens, lengths, cuts_fn, self.alpha, self.steps, seeds, token_moves=token_moves,
                         target_log_prob=target_log_prob, track_target=self.returns != "best_reward",
                         tries=self.tries, try_seeds=try_seeds)
        # 4. choose: per prompt, the chain whose state the return rule ranks first (ties: the earlier chain)
        n_prompts = len(batch["id"])
        candidates = {  # each return rule's state per row: (tokens, lengths, reward, ranking value)
            "best_reward": (run.best_tokens, run.best_lengths, run.best_reward, run.best_reward),
        }
        if self.returns != "best_reward":
            candidates["best_target"] = (run.best_target_tokens, run.best_target_lengths, run.best_target_reward,
                                         run.best_target_value)
            candidates["final"] = (run.final.tokens, run.final.lengths, run.final.reward, run.final.reward)
            tokens_, lengths_, reward_, value_ = run.likeliest_best
            top = reward_.view(n_prompts, chains).max(-1, keepdim=True).values  # the prompt's best reward, then the likeliest
            candidates["likeliest_best"] = (tokens_, lengths_, reward_,
                                            torch.where(reward_.view(n_prompts, chains) == top, value_.view(n_prompts, chains),
                                                        torch.full_like(top, float("-inf"))).view(-1))
        chosen = {
            rule: torch.arange(n_prompts) * chains + ranked(value).cpu().view(n_prompts, chains).argmax(-1)
            for rule, (_, _, _, value) in candidates.items()
        }
        rows = chosen[self.returns]
        elapsed = time.perf_counter() - started  # the method's own work; what follows is for metrics
        # 5. record: the chosen state of each prompt, with every chain's summary and trace
        device_rows = rows.to(tokens.device)
        out_tokens, out_lengths, out_rewards, _ = candidates[self.returns]
        return self.records(
            batch, [prompt_ids[int(r)] for r in rows], [prompts[int(r)] for r in rows], out_tokens[device_rows],
            out_lengths[device_rows], out_rewards.cpu()[rows], elapsed, self.chain_extras(run, pool, candidates, chosen),
        )

    def target_rank(self, prompt_rows: list[list[int]], tokens: torch.Tensor, lengths: torch.Tensor,
                    rewards: torch.Tensor) -> torch.Tensor:
        """``log pi_ref(y | x) + alpha r`` of each pool row, ``x`` the prompt itself: the chains'
        target density, EOS slot included, read with each distinct prompt's pass shared
        (``sample_batch`` rows at a time)."""
        model, width = self.policy.model, tokens.shape[1]
        values = []
        for start in range(0, tokens.shape[0], self.sample_batch):
            rows = slice(start, start + self.sample_batch)
            scorer = SuffixProposals(model, prompt_cache(model, prompt_rows[rows], self.pad_id, width), width, self.eos_ids, self.pad_id)
            values.append(scorer.read(tokens[rows], lengths[rows], log_probs=True)[2].sum(1).cpu())
        return torch.cat(values) + self.alpha * rewards.cpu()

    def chain_extras(self, run: ChainRun, pool: Pool, candidates: dict[str, tuple], chosen: dict[str, torch.Tensor]) -> list[dict]:
        """Each prompt's record fields beyond the shared ones: the returned chain, every chain's
        start, best and final state, acceptance and trace, and with more than one return rule the
        other rules' replies (docs/outputs.md)."""
        chains = self.chains
        n_prompts = len(chosen[self.returns])
        chosen_chain = chosen[self.returns] - torch.arange(n_prompts) * chains
        best = run.best_reward.cpu().view(n_prompts, chains)
        final_texts = self.decode_text(run.final.tokens, run.final.lengths)
        acceptance = run.acceptance
        extras = []
        for p in range(n_prompts):
            span = slice(p * chains, (p + 1) * chains)
            initial = run.rewards[0, span]
            extra = {
                "chain": int(chosen_chain[p]),
                "chain_best_rewards": best[p].tolist(),
                "chain_initial_rewards": initial.tolist(),
                "chain_initial_candidates": [int(c) for c in pool.candidates[span]],
                "chain_rewards": run.final.reward[span].cpu().tolist(),
                "chain_responses": final_texts[span],
                "chain_acceptance": acceptance[span].tolist(),
                "tries": self.tries,
                "initial_reward": float(initial[0] if pool.rewards is None else pool.rewards[p, 0]),
                "initial_best_reward": float(initial.max()),
                "trace": {
                    "reward": run.rewards[:, span].T.tolist(),
                    "proposal_reward": run.proposal_rewards[:, span].T.tolist(),
                    "cut": run.cuts[:, span].T.tolist(),
                    "accepted": run.accepted[:, span].T.int().tolist(),
                    # a RewardSum's terms of each chain's state, as "reward"
                    **{f"reward.{name}": values[:, span].T.tolist() for name, values in run.reward_parts.items()},
                },
                "steps": self.steps,
                "init_pool": self.init_pool,
                "init_rank": self.init_rank,
                "returns": self.returns,
            }
            if run.token_moves is not None:
                moved = run.token_moves[:, span]
                extra["trace"]["token_move"] = moved.T.int().tolist()
                extra["token_move_acceptance"] = [
                    float(run.accepted[:, c][moved[:, i]].float().mean()) if bool(moved[:, i].any()) else None
                    for i, c in enumerate(range(span.start, span.stop))
                ]
            if len(candidates) > 1:
                extra["alternatives"] = {
                    rule: {"response": self.decode_text(tokens_[rule_rows[p]].unsqueeze(0), lengths_[rule_rows[p]].unsqueeze(0))[0],
                           "reward": float(reward_[rule_rows[p]]), "chain": int(rule_rows[p]) - p * chains}
                    for rule, (tokens_, lengths_, reward_, _) in candidates.items()
                    for rule_rows in [chosen[rule].to(tokens_.device)]
                }
            if pool.rewards is not None:
                extra["pool_rewards"] = pool.rewards[p].tolist()
            extras.append(extra)
        return extras
