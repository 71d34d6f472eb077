"""A differentiable surrogate of a text reward: the policy's own samples scored by the text
reward, regressed by a head on the frozen policy (``seaflow fit --config configs/distill_reward.yaml``).

:class:`DistillData` samples ``samples_per_prompt`` responses per prompt from the policy
(cached as JSONL, resumable), scores each decoded response with the text reward (any
:class:`~seaflow.energies.text.TextReward`: an HF classifier with its own tokenizer, a Python
callable) and holds out ``val_fraction`` of the prompts. :class:`~seaflow.reward_head.RewardHead`
with ``objective: regress`` fits the scores; the exported classifier is then SEA's
``reward`` (its gradient) while the text reward stays the ``selection_reward``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace


from seaflow.calibrate.data import LabelledJsonl
from seaflow.encoding import encode_chat, encode_text
from seaflow.energies.text import TextReward
from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm, load_tokenizer
from seaflow.reward_head.data import CachedResponsesData, _key, read_prompt_source

log = logging.getLogger(__name__)

UNLABELLED = -1


class DistillData(CachedResponsesData):
    """(prompt, response, target[, label]) rows: the policy's samples scored by a text reward.

    Args:
        reward: the text reward to distil (``TextClassifierReward``, ``CallableReward``, ...).
        prompts: prompt sets: prompt files (.jsonl/.json/.csv/.txt) or ``advbench``/``harmbench``.
            Keep the prompts you report results on out of them.
        limit_per_source: use the first N prompts of each set (None: all).
        samples_per_prompt: policy samples per prompt.
        responses: the cache file of sampled responses (targets are recomputed from it each run,
            so changing the reward needs no new samples).
        policy: the policy that writes the responses (the one whose hidden states the head reads).
        max_new_tokens: response length when sampling (use the methods' ``max_new_tokens``).
        temperature: sampling temperature (1.0: the samples SEA and Best-of-N start from).
        chat_template: wrap each prompt as a user turn of the policy's chat template.
        generation_batch_size: rows per generation batch.
        generate: sample the missing responses in ``prepare_data``; false trains on the cache.
        labelled: extra JSONL files (prompt, response, label): scored by the reward and trained on
            like the samples; their labels give a validation AUC.
        evaluate: labelled JSONL files never trained on: the agreement report
            (``<export_dir>/agreement.json``) gives the surrogate's Spearman with the reward and
            AUC against the labels on them, next to the reward's own AUC.
        val_fraction: share of prompts held out (every sample of a prompt on one side).
        batch_size: rows per training batch.
        seed: sampling seed.
    """

    def __init__(
        self,
        reward: TextReward,
        prompts: list[str] | None = None,
        limit_per_source: int | None = None,
        samples_per_prompt: int = 4,
        responses: str = "runs/distill_reward/responses.jsonl",
        policy: str = EMBEDDED_DEFAULT,
        max_new_tokens: int = 24,
        temperature: float = 1.0,
        chat_template: bool = True,
        generation_batch_size: int = 32,
        generate: bool = True,
        labelled: list[str] | None = None,
        evaluate: list[str] | None = None,
        val_fraction: float = 0.2,
        batch_size: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        if not isinstance(reward, TextReward):
            raise TypeError(f"DistillData reward must be a text reward (TextClassifierReward, CallableReward), got {type(reward).__name__}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"DistillData val_fraction must be in [0, 1), got {val_fraction}")
        if samples_per_prompt < 1:
            raise ValueError(f"DistillData samples_per_prompt must be >= 1, got {samples_per_prompt}")
        self.reward = reward
        self.prompts = list(prompts or [])
        self.limit_per_source = limit_per_source
        self.samples_per_prompt = samples_per_prompt
        self.responses = responses
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.chat_template = chat_template
        self.generation_batch_size = generation_batch_size
        self.generate = generate
        self.labelled = list(labelled or [])
        self.evaluate = list(evaluate or [])
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self.train_rows: list[dict] | None = None
        self.val_rows: list[dict] = []
        self.eval_sets: dict[str, list[dict]] = {}
        self._loaded = None

    def planned(self) -> list[dict]:
        plan = []
        for source in self.prompts:
            for index, prompt in enumerate(read_prompt_source(source)[: self.limit_per_source]):
                for sample in range(self.samples_per_prompt):
                    plan.append({"key": _key(source, index, prompt, sample, self.seed, self.temperature, self.max_new_tokens),
                                 "source": source, "prompt": prompt, "sample": sample})
        return plan

    def load_policy(self):
        if self._loaded is None:
            self._loaded = load_causal_lm(self.policy)
        return self._loaded

    def prepare_data(self) -> None:
        if self.generate and self.prompts:
            self.sample_missing(self.planned(), self.load_policy, self._encode, self._record)

    def _encode(self, tok, item: dict) -> tuple[list[int], list[int]]:
        if self.chat_template:
            return encode_chat(tok, [{"role": "user", "content": item["prompt"]}]), []
        return encode_text(tok, item["prompt"], add_special_tokens=True), []

    def _record(self, tok, item: dict, forced: list[int], sampled: list[int]) -> dict:
        # the text the methods' records write (and score with a text reward)
        response = tok.decode(sampled, skip_special_tokens=True).rstrip("\ufffd")
        return {"response": response, "response_token_ids": sampled, "policy": self.policy}

    def _score(self, rows: list[dict]) -> list[dict]:
        """``target`` = the text reward of each row's response."""
        if not rows:
            return rows
        if getattr(self.reward, "policy_tokenizer", None) is None:  # texts only: the tokenizer is enough
            tokenizer = self._loaded.tokenizer if self._loaded is not None else load_tokenizer(self.policy)[0]
            self.reward.setup(SimpleNamespace(tokenizer=tokenizer))
        targets = self.reward.score_texts([r["prompt"] for r in rows], [r["response"] for r in rows])
        return [{**r, "target": float(t)} for r, t in zip(rows, targets.tolist())]

    @staticmethod
    def _labelled(path: str) -> list[dict]:
        return [{"prompt": r.prompt, "response": r.response, "label": int(r.label)} for r in LabelledJsonl(path).rows()]

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        rows = [{"prompt": r["prompt"], "response": r["response"], "label": UNLABELLED} for r in self.cached_rows(self.planned())]
        for path in self.labelled:
            rows += self._labelled(path)
        if not rows:
            raise ValueError(
                "DistillData has no rows: give it prompts (with generate: true) or labelled files"
            )
        rows = self._score(rows)
        # split by prompt (by response for rows without one): every sample of a prompt on one side
        self.split(rows, by=lambda r: r["prompt"] or r["response"])
        if len({r["target"] for r in self.train_rows}) < 2:
            raise ValueError("every training row has the same reward: there is nothing to distil (more prompts or samples?)")
        self.eval_sets = {Path(path).name: self._score(self._labelled(path)) for path in self.evaluate}
        log.warning("distillation data: %d training rows, %d validation rows, evaluation sets %s",
                    len(self.train_rows), len(self.val_rows), {k: len(v) for k, v in self.eval_sets.items()})
