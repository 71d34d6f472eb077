"""What every alignment method shares: the policy, the reward, sampling, scoring, records.

A method is a LightningModule whose ``predict_step`` turns a batch of prompts into one
JSON-ready record per prompt (:class:`~seaflow.methods.record.Record`). SEA and the
baselines (Best-of-N, ...) subclass :class:`AlignmentMethod` so they load models the same
way, sample with the same per-prompt seeds, score with the same discrete reward and write
the same record fields. A subclass declares only its own constructor arguments and passes
``**kwargs`` on; LightningCLI (jsonargparse) offers the base's arguments with them.
"""

from __future__ import annotations

import functools
from typing import Callable

import lightning as L
import torch

from seaflow import cost, faults, generation, rng
from seaflow.checks import require
from seaflow.layout import active_mask
from seaflow.energies.base import ResponseBatch, Reward
from seaflow.energies.reference import ReferenceLogLikelihood
from seaflow.methods.pool import Pool, best_of
from seaflow.methods.record import rounded
from seaflow.models import EMBEDDED_DEFAULT, LoadedModel, apply_adapter, load_causal_lm
from seaflow.progress import report


def with_reward_parts(predict_step):
    """Wrap a method's ``predict_step`` so that its records get ``reward_parts`` (:meth:`AlignmentMethod.add_reward_parts`)."""

    @functools.wraps(predict_step)
    def wrapper(self, batch, *args, **kwargs):
        records = predict_step(self, batch, *args, **kwargs)
        if isinstance(records, list) and all(isinstance(r, dict) for r in records):
            self.add_reward_parts(batch, records)
        return records

    return wrapper


def isolating_rows(predict_step):
    """Wrap a method's ``predict_step`` so that a row fault (a reward that raises, or returns a
    non-finite value, on one prompt's responses; seaflow/faults.py) fails that prompt, not its batch.

    The batch runs again without the prompts the fault names, or, when it names none, each half
    runs on its own, down to single prompts; a prompt that fails alone gets an error entry
    (:func:`seaflow.faults.failure`) in place of its record. Every prompt's randomness is its
    own (seeded by its id), so the records of the others are those of a batch without it. A
    ``predict_step`` called inside another (a subclass calling ``super()``) lets faults rise to
    the outer one.
    """
    if getattr(predict_step, "_seaflow_isolating", False):
        return predict_step

    @functools.wraps(predict_step)
    def wrapper(self, batch, *args, **kwargs):
        ids = batch.get("id") if isinstance(batch, dict) else None
        if faults.isolating() or not isinstance(ids, list):
            return predict_step(self, batch, *args, **kwargs)
        with faults.isolation():
            return self.isolated(lambda part: predict_step(self, part, *args, **kwargs), batch, list(range(len(ids))))

    wrapper._seaflow_isolating = True
    return wrapper


class AlignmentMethod(L.LightningModule):
    """Base of SEA and the baselines.

    Args:
        policy: the reference policy (hub id, local directory, GGUF file, or the embedded
            default ``smollm2-135m-instruct``).
        reward: the reward term used for selection (and, for SEA, for the gradient).
        selection_reward: a second reward that selects, accepts/rejects and is reported as the
            records' ``reward`` (e.g. a text reward without a gradient,
            seaflow/energies/text.py); ``reward`` then only guides (SEA's gradient, the
            Metropolis cuts, ARGS's per-token scores) and is reported as ``surrogate_reward``.
            None: ``reward`` does both.
        max_new_tokens: response length L (tokens).
        temperature: sampling temperature of the policy.
        top_p: nucleus sampling threshold of the policy (1.0 = off).
        seed: run seed; each prompt's randomness derives from (seed, prompt id, chain).
        sample_batch: rows (prompts x candidates or chains) per generation call; bounds memory
            (e.g. BoN-64 on 4 prompts is 256 rows, generated 64 at a time by default).
        dtype: policy dtype (``float32``, ``bfloat16``, ``float16``); None keeps the checkpoint's.
        trust_remote_code: allow custom model code from the checkpoint.
        adapter: a PEFT adapter (LoRA, ...) of the policy, a local directory or a hub id, merged
            into its weights at load time; the adapted policy is the reference too. None: the policy as it is.
    """

    def __init__(
        self,
        policy: str = EMBEDDED_DEFAULT,
        reward: Reward | None = None,
        selection_reward: Reward | None = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        sample_batch: int = 64,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        adapter: str | None = None,
    ):
        super().__init__()
        require(max_new_tokens >= 1, "model.init_args.max_new_tokens", max_new_tokens, ">= 1")
        require(temperature >= 0, "model.init_args.temperature", temperature, ">= 0")
        require(0 < top_p <= 1, "model.init_args.top_p", top_p, "in (0, 1]")
        require(sample_batch >= 1, "model.init_args.sample_batch", sample_batch, ">= 1")
        self.policy_name = policy
        self.reward = reward
        self.selection_reward = selection_reward
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.sample_batch = sample_batch
        self.dtype_name = dtype
        self.trust_remote_code = trust_remote_code
        self.adapter = adapter
        self.reference = ReferenceLogLikelihood()
        self.policy: LoadedModel | None = None

    def __init_subclass__(cls, **kwargs):
        # every method's predict_step is metered: its records get a ``cost`` field (seaflow/cost.py),
        # and ``reward_parts`` before it when the reward has named terms; a reward's fault on one
        # prompt fails that prompt only (isolating_rows)
        super().__init_subclass__(**kwargs)
        if "predict_step" in cls.__dict__:
            cls.predict_step = isolating_rows(cost.metered(with_reward_parts(cls.__dict__["predict_step"])))

    # -- set-up ----------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if self.policy is None:
            policy = load_causal_lm(self.policy_name, dtype=self.dtype_name, trust_remote_code=self.trust_remote_code,
                                    role="the policy (model.init_args.policy)")
            if self.adapter is not None:
                policy = apply_adapter(policy, self.adapter, "model.init_args.adapter")
            self.attach(policy)

    def attach(self, policy: LoadedModel) -> None:
        """Use an already loaded policy (``setup`` loads it otherwise) and set up the energy terms."""
        self.policy = policy
        self.policy_model = policy.model  # registered: Lightning moves it to the device
        self.reference.setup(policy)
        if self.reward is not None:
            self.reward.setup(policy)
        if self.selection_reward is not None:
            self.selection_reward.setup(policy)

    @property
    def selector(self) -> Reward | None:
        """The reward that selects and is reported: ``selection_reward`` when set, else ``reward``."""
        return self.selection_reward if self.selection_reward is not None else self.reward

    def require_gradient(self, method: str) -> None:
        """Refuse a ``reward`` without a gradient (a text reward), naming what to configure instead."""
        if self.reward is not None and not self.reward.differentiable:
            from seaflow.energies.text import no_gradient_error

            raise no_gradient_error(self.reward, method)

    def watch_models(self) -> None:
        """Install the cost-counting hooks on the policy and on every model the reward holds."""
        cost.watch(self.policy.model, "policy")
        for term in (self.reward, self.selection_reward):
            for role, model in cost.models_of(term, skip=self.policy.model):
                cost.watch(model, role)

    def context_length(self) -> int | None:
        config = self.policy.model.config
        return getattr(config, "max_position_embeddings", None)

    @property
    def eos_ids(self) -> list[int]:
        return self.policy.eos_ids

    @property
    def pad_id(self) -> int:
        return self.policy.pad_id

    # -- row faults ------------------------------------------------------------------------

    def isolated(self, step, batch: dict[str, list], positions: list[int]) -> list[dict]:
        """``step``'s outputs for the prompts of ``batch`` at ``positions``, in their order: records,
        and an error entry for each prompt that a row fault fails (see :func:`isolating_rows`)."""
        n = len(batch["id"])
        part = batch if len(positions) == n else {
            key: [value[p] for p in positions] if isinstance(value, list) and len(value) == n else value
            for key, value in batch.items()
        }
        try:
            return step(part)
        except faults.RowFault as fault:
            stage = self.reward_key(fault.reward)
            named = [p for p in positions if fault.ids is not None and str(batch["id"][p]) in fault.ids]
            if not named and len(positions) > 1:  # the fault names no prompt of these: each half on its own
                half = len(positions) // 2
                return self.isolated(step, batch, positions[:half]) + self.isolated(step, batch, positions[half:])
            named = named or positions
            failed = {p: self.failure(batch, p, stage, fault.error) for p in named}
            rest = [p for p in positions if p not in failed]
            outputs = {str(out["id"]): out for out in (self.isolated(step, batch, rest) if rest else [])}
            outputs.update((str(entry["id"]), entry) for entry in failed.values())
            return [outputs[str(batch["id"][p])] for p in positions]

    def failure(self, batch: dict[str, list], position: int, stage: str, error: str) -> dict:
        """The error entry of the prompt at ``position`` of ``batch`` (a line of errors.jsonl)."""
        prompt = {key: batch[key][position] for key in ("id", "index", "prompt", "messages")
                  if isinstance(batch.get(key), list)}
        return faults.failure(prompt, self.method_name(), stage, error)

    def reward_key(self, reward) -> str:
        """The config key of ``reward``: ``model.init_args.reward``, ``model.init_args.selection_reward``
        (any reward argument of the method) or, for a term of a RewardSum,
        ``model.init_args.reward.init_args.terms.<name>``."""
        for argument, top in self.named_children():
            if isinstance(top, Reward):
                for name, module in top.named_modules():
                    if module is reward:
                        return f"model.init_args.{argument}" + (f".init_args.{name}" if name else "")
        return type(reward).__name__

    # -- shared steps ----------------------------------------------------------------------

    def expand(self, batch: dict[str, list], chains: int) -> tuple[list[list[int]], list[str], list[str]]:
        """Rows for ``chains`` chains per prompt, prompt-major: (prompt ids, texts, ids)."""
        ids, texts, pids = [], [], []
        for prompt_ids, text, pid in zip(batch["prompt_ids"], batch["prompt"], batch["id"]):
            ids += [prompt_ids] * chains
            texts += [text] * chains
            pids += [pid] * chains
        return ids, texts, pids

    @staticmethod
    def forced_rows(batch: dict[str, list], copies: int = 1) -> list[list[int]] | None:
        """Each row's forced response start (``data.response_prefix``, the prefilling attack),
        ``copies`` rows per prompt, prompt-major; None when no prompt of the batch has one.

        Every method treats these tokens as the first of the response: sampling continues
        after them, scoring includes them, and no refinement or search changes them."""
        prefixes = batch.get("response_prefix_ids")
        if not prefixes or not any(prefixes):
            return None
        return [list(ids) for ids in prefixes for _ in range(copies)]

    @staticmethod
    def proposal_rows(batch: dict[str, list], copies: int = 1) -> list[list[int]] | None:
        """Each row's proposal prompt (``data.proposal_prompt_field`` / ``_system_prompt`` / ``_instruction``),
        ``copies`` rows per prompt, prompt-major; None when the batch has none."""
        prompts = batch.get("proposal_prompt_ids")
        if not prompts:
            return None
        return [list(ids) for ids in prompts for _ in range(copies)]

    def response_width(self, forced: list[list[int]] | None) -> int:
        """Response tokens a row holds: the longest forced start plus ``max_new_tokens`` free ones."""
        return self.max_new_tokens + (max(map(len, forced)) if forced else 0)

    def generators(self, keys: list[str], candidates: list[int], purpose: str) -> list[torch.Generator]:
        """One generator per row, seeded by (seed, ``keys[i]``, ``candidates[i]``, ``purpose``) (:mod:`seaflow.rng`)."""
        return rng.row_generators([rng.prompt_seed(self.seed, key, c, purpose) for key, c in zip(keys, candidates)], self.device)

    def sample_rows(
        self,
        prompt_ids: list[list[int]],
        keys: list[str],
        candidates: list[int],
        purpose: str = "sample",
        max_new_tokens: int | None = None,
        forced: list[list[int]] | None = None,
        progress: bool = True,
        log_probs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy samples for explicit (prompt key, candidate index) rows, ``sample_batch`` at a time:
        the one way a method draws from the policy. Returns ``(tokens, lengths)``.

        Row ``i`` is seeded by ``prompt_seed(seed, keys[i], candidates[i], purpose)``: with
        ``purpose="sample"`` candidate ``c`` is the same draw for every method (Best-of-N's
        candidate ``c``, SEA's initial chain ``c``). ``forced[i]`` is row ``i``'s forced start
        (``data.response_prefix``): the rows hold it and ``max_new_tokens`` free tokens after it.
        ``progress`` reports each block of rows to the progress bar (a caller with its own unit
        of progress turns it off). ``log_probs`` (``(rows, width)``, zeros) receives, at no extra
        model work, the policy's log-probability of each written token (of EOS at the slot where
        a row ends; :class:`~seaflow.generation.RecordLogProbs`): a row's sum is its
        ``log pi_ref(y | x)`` whatever the sampling temperature.
        """
        budget = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        width = budget + (max(map(len, forced)) if forced else 0)
        generators = self.generators(keys, candidates, purpose)
        tokens, lengths = [], []
        for start in cost.side_by_side(range(0, len(prompt_ids), self.sample_batch)):  # chunks bound memory only
            stop = start + self.sample_batch
            chunk = forced[start:stop] if forced else None
            records = [] if log_probs is None else [generation.RecordLogProbs(log_probs[start:stop], self.eos_ids)]
            t, n = generation.sample(
                self.policy.model, prompt_ids[start:stop], budget + (max(map(len, chunk)) if chunk else 0),
                self.eos_ids, self.pad_id, generators[start:stop], temperature=self.temperature, top_p=self.top_p, forced=chunk,
                records=records,
            )
            tokens.append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=self.pad_id))
            lengths.append(n)
            if progress:
                report(min(stop, len(prompt_ids)), len(prompt_ids), "candidates")  # the progress bar (seaflow/progress.py)
        return torch.cat(tokens), torch.cat(lengths)

    @torch.no_grad()
    def best_of_pool(self, batch: dict[str, list], pool: int, keep: int, drawn_after: list[list[int]] | None = None,
                     rank: Callable[[list[list[int]], torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Pool:
        """The best ``keep`` of ``pool`` policy samples per prompt of ``batch`` (:func:`seaflow.methods.pool.best_of`),
        candidate ``c`` being Best-of-N's candidate ``c``; the pool is ranked by the :attr:`selector`,
        ``sample_batch`` rows per reward pass. With ``keep == pool`` nothing is scored.
        ``drawn_after[p]`` (default prompt ``p``'s ids) is what the samples are drawn after (a
        proposal prompt); the reward always scores them as replies to the prompt. ``rank(prompt rows,
        tokens, lengths, rewards)``, when given, ranks the pool instead of the rewards (a method's
        target, say; its passes are the method's cost)."""
        if not 1 <= keep <= pool:
            raise ValueError(f"the pool needs 1 <= keep ({keep}) <= pool ({pool})")
        if self.selector is None and keep < pool:
            raise ValueError("a best-of-pool start ranks samples by reward: set model.init_args.reward")
        prompt_ids, prompts, keys = self.expand(batch, pool)
        sampled_ids = prompt_ids if drawn_after is None else [ids for ids in drawn_after for _ in range(pool)]
        tokens, lengths = self.sample_rows(sampled_ids, keys, [row % pool for row in range(len(keys))],
                                           forced=self.forced_rows(batch, pool), progress=False)
        rewards = None if keep == pool else self.selector.score(prompt_ids, prompts, tokens, lengths, self.sample_batch).cpu()
        if rewards is None or rank is None:
            return best_of(tokens, lengths, rewards, pool, keep)
        chosen = best_of(tokens, lengths, rank(prompt_ids, tokens, lengths, rewards).cpu(), pool, keep)
        chosen.rewards = rewards.view(-1, pool)  # the records report the pool's rewards, whatever ranked it
        return chosen

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], prompts: list[str], tokens: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Discrete scores of responses: reward ``(B,)`` (the :attr:`selector`'s), reference log-probs
        and entropies ``(B, L)``; with a ``selection_reward``, ``surrogate_reward`` ``(B,)`` too
        (``reward``'s, for the records: not counted in the cost)."""
        batch = ResponseBatch(prompt_ids=prompt_ids, prompts=prompts, lengths=lengths.cpu(), max_length=tokens.shape[1])
        logprobs, entropy = self.reference_stats(prompt_ids, prompts, tokens, lengths)
        out = {"ref_token_logprobs": logprobs, "ref_token_entropy": entropy}
        selector = self.selector
        out["reward"] = (
            selector.value(selector.prepare(batch), tokens).float()
            if selector is not None else torch.zeros(tokens.shape[0], device=tokens.device)
        )
        if self.selection_reward is not None and self.reward is not None:
            with cost.uncounted():
                out["surrogate_reward"] = self.reward.value(self.reward.prepare(batch), tokens).float()
        return out

    @torch.no_grad()
    def add_reward_parts(self, batch: dict[str, list], records: list[dict]) -> None:
        """Each record's ``reward_parts``: the :attr:`selector`'s named terms (a RewardSum's) on its
        returned response, scored again from ``response_token_ids`` (not counted in the cost, like
        the reference statistics). Nothing for a reward without named terms."""
        selector = self.selector
        if selector is None or not selector.part_names() or not records or "reward_parts" in records[0]:
            return
        row = {pid: i for i, pid in enumerate(batch["id"])}
        rows = [row[record["id"]] for record in records]
        ids = [record["response_token_ids"] for record in records]
        tokens = torch.full((len(ids), max(map(len, ids), default=0) or 1), self.pad_id, dtype=torch.long)
        for i, response in enumerate(ids):
            tokens[i, : len(response)] = torch.tensor(response, dtype=torch.long)
        lengths = torch.tensor([len(response) for response in ids])
        responses = ResponseBatch([batch["prompt_ids"][i] for i in rows], [batch["prompt"][i] for i in rows], lengths, tokens.shape[1])
        with cost.uncounted():
            _, parts = selector.value_and_parts(selector.prepare(responses), tokens.to(self.device))
        for i, record in enumerate(records):
            record["reward_parts"] = {name: float(values[i]) for name, values in parts.items()}

    def decode_text(self, tokens: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        """The text of each row's first ``lengths`` tokens. A response cut in the middle of a
        character (its last bytes missing) would end in U+FFFD; those incomplete bytes are
        dropped from the text (the token ids keep them)."""
        return [
            self.policy.tokenizer.decode(row[: int(n)].tolist(), skip_special_tokens=True).rstrip("\ufffd")
            for row, n in zip(tokens, lengths)
        ]

    @staticmethod
    def per_token(logprobs: torch.Tensor, lengths: torch.Tensor) -> list[float]:
        """Mean log-likelihood per active token, one float per row."""
        totals = logprobs.sum(-1)
        return [float(t) / max(int(n), 1) for t, n in zip(totals, lengths)]

    def method_name(self) -> str:
        return type(self).__name__

    def response_fields(self, tokens: torch.Tensor, length: int, reward: float | None, ref_logprob_per_token: float,
                        logprobs: torch.Tensor, entropy: torch.Tensor) -> dict:
        """The fields every record has about its response, from one row's ``tokens``, per-position
        reference ``logprobs`` and ``entropy`` (each ``(L,)``) and its first ``length`` active."""
        length = int(length)
        return dict(
            response=self.decode_text(tokens.unsqueeze(0), torch.tensor([length]))[0],
            response_token_ids=tokens[:length].tolist(),
            reward=None if reward is None or reward != reward else float(reward),  # NaN: no reward term
            ref_logprob_per_token=ref_logprob_per_token,
            response_tokens=length,
            ref_token_logprobs=rounded(logprobs, length),
            ref_token_entropy=rounded(entropy, length),
        )

    @torch.no_grad()
    def reference_stats(self, prompt_ids, prompts, tokens: torch.Tensor, lengths: torch.Tensor, chunk: int | None = None):
        """Per-position ``log pi_ref(y_t | x, y_<t)`` and the reference entropy ``H_t`` at that prefix.

        Both ``(B, L)``, zero past each row's length, computed ``chunk`` rows at a time.
        ``-log p_t - H_t`` has mean zero for the policy's own samples and grows as a method
        moves away from the reference at position t (seaflow.metrics' KL-per-position estimate).
        These passes are for the record's metrics: they are not counted in its ``cost``
        (a method that needs ``pi_ref`` for its own decisions calls ``self.reference.value``).
        """
        with cost.uncounted():
            return self._reference_stats(prompt_ids, prompts, tokens, lengths, chunk)

    def _reference_stats(self, prompt_ids, prompts, tokens, lengths, chunk):
        chunk = chunk or tokens.shape[0]
        logprobs, entropies = [], []
        for start in range(0, tokens.shape[0], chunk):
            rows = slice(start, start + chunk)
            n = lengths[rows]
            batch = ResponseBatch(prompt_ids[rows], prompts[rows], n.cpu(), tokens.shape[1])
            layout = self.reference.prepare(batch)
            logp = torch.log_softmax(layout.next_token_logits(self.policy.model, tokens[rows]), dim=-1)
            mask = active_mask(n.to(logp.device), tokens.shape[1])
            logprobs.append(logp.gather(-1, tokens[rows].unsqueeze(-1)).squeeze(-1) * mask)
            entropies.append(-(logp.exp() * logp).sum(-1) * mask)
        return torch.cat(logprobs), torch.cat(entropies)
