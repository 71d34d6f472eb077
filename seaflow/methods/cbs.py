"""``seaflow.methods.CBS``: chunk-level beam search guided by the reward (weak-to-strong search)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from seaflow.checks import require
from seaflow.layout import pad_rows
from seaflow.methods.discrete import DiscreteMethod
from seaflow.methods.record import Record
from seaflow.progress import report


@dataclass
class Beam:
    tokens: list[int]
    reward: float
    finished: bool


class CBS(DiscreteMethod):
    """Chunk-level beam search: keep ``beams`` partial responses, grow them ``chunk_length`` tokens at a time.

    Each round, every open beam is extended by ``samples_per_beam`` chunks of
    ``chunk_length`` tokens sampled from the policy; the candidates (new extensions plus the
    beams that already ended with EOS, carried unchanged) are scored with the reward on the
    partial response, and the ``beams`` best survive. The first round expands the empty
    response with ``beams * samples_per_beam`` chunks, so every round compares the same
    number of new candidates. The search stops when every beam has ended or reached
    ``max_new_tokens``; the best beam is returned. Chunk ``j`` of beam ``b`` in round ``r``
    is seeded by (seed, prompt id, ``b * samples_per_beam + j``, round ``r``), so results
    do not depend on the batch; round 0 draws from the same stream as Best-of-N, so CBS with
    one beam and ``chunk_length >= max_new_tokens`` is exactly Best-of-``samples_per_beam``. Continuations re-read prompt and prefix each round (no KV
    cache across rounds). A forced start (``data.response_prefix``) is the beams' first tokens:
    chunks are sampled after it and ``max_new_tokens`` counts the tokens after it.

    Args:
        beams: beam width w (default 4).
        samples_per_beam: chunks sampled per beam k (default 4).
        chunk_length: tokens per chunk l (default 10).
        (others: see :class:`DiscreteMethod` and :class:`AlignmentMethod`)
    """

    def __init__(self, beams: int = 4, samples_per_beam: int = 4, chunk_length: int = 10, **kwargs):
        super().__init__(**kwargs)
        require(beams >= 1, "model.init_args.beams", beams, ">= 1")
        require(samples_per_beam >= 1, "model.init_args.samples_per_beam", samples_per_beam, ">= 1")
        require(chunk_length >= 1, "model.init_args.chunk_length", chunk_length, ">= 1")
        self._require_reward()
        self.beams = beams
        self.samples_per_beam = samples_per_beam
        self.chunk_length = chunk_length

    @torch.no_grad()
    def predict_step(self, batch: dict[str, list], batch_idx: int = 0, dataloader_idx: int = 0) -> list[Record]:
        started = time.perf_counter()
        prompt_ids, prompts, keys = batch["prompt_ids"], batch["prompt"], batch["id"]
        n_prompts, k = len(keys), self.samples_per_beam
        forced = self.forced_rows(batch)  # a forced start is every beam's first tokens: chunks grow after it
        beams = [[Beam(list(forced[p]) if forced else [], float("-inf"), False)] for p in range(n_prompts)]
        rounds = scored = 0
        total_rounds = -(-self.max_new_tokens // self.chunk_length)  # a round grows every live beam by one chunk
        while any(not b.finished for group in beams for b in group):
            done_tokens = rounds * self.chunk_length
            chunk = min(self.chunk_length, self.max_new_tokens - done_tokens)
            per_beam = k if rounds > 0 else self.beams * k
            parents = [(p, b, j) for p in range(n_prompts) for b, beam in enumerate(beams[p]) if not beam.finished for j in range(per_beam)]
            tokens, lengths = self.sample_rows(
                [prompt_ids[p] + beams[p][b].tokens for p, b, _ in parents],
                [keys[p] for p, _, _ in parents],
                [b * per_beam + j for _, b, j in parents],
                purpose="sample" if rounds == 0 else f"cbs-round{rounds}",
                max_new_tokens=chunk,
                progress=False,
            )
            grown = [beams[p][b].tokens + tokens[i, : int(lengths[i])].tolist() for i, (p, b, _) in enumerate(parents)]
            padded, grown_lengths = pad_rows(grown, self.pad_id, device=self.device)
            rewards = self.rewards([prompt_ids[p] for p, _, _ in parents], [prompts[p] for p, _, _ in parents], padded, grown_lengths).tolist()
            scored += len(parents)
            candidates: list[list[Beam]] = [[b for b in group if b.finished] for group in beams]
            for i, (p, _, _) in enumerate(parents):
                ended = int(lengths[i]) < chunk or done_tokens + chunk >= self.max_new_tokens
                candidates[p].append(Beam(grown[i], rewards[i], ended))
            # stable sort: ties keep the carried beams and the earlier chunks first
            beams = [sorted(group, key=lambda beam: -beam.reward)[: self.beams] for group in candidates]
            rounds += 1
            report(rounds, max(total_rounds, rounds), "round")  # the progress bar (seaflow/progress.py); beams may all end early
        best = [group[0] for group in beams]
        tokens, lengths = pad_rows([b.tokens for b in best], self.pad_id, width=self.response_width(forced), device=self.device)
        elapsed = time.perf_counter() - started
        extras = [
            {"beam_rewards": [b.reward for b in group], "rounds": rounds, "candidates_scored": scored // n_prompts}
            for group in beams
        ]
        return self.records(batch, prompt_ids, prompts, tokens, lengths, [b.reward for b in best], elapsed, extras)
