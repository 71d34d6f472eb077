"""Partial responses that grow a block of tokens at a time on the policy's KV cache, and can be
pruned or resampled between blocks.

Speculative Rejection and the particle filter decode many rows a few tokens at a time, score
the text so far, keep some rows (or copies of some rows) and go on. :class:`PartialResponses`
is the policy's sampling rule on a resumable :class:`seaflow.generation.Generation`: the loop
of :func:`seaflow.generation.generate` writes each block, and a kept row never re-reads its
prompt or its prefix. The draws come from the same per-row generators as
:func:`seaflow.generation.sample`'s, so a row that is never pruned or resampled is exactly the
sample ``generation.sample`` draws with its seed (Best-of-N's candidate with that index), and
costs the same model passes.
"""

from __future__ import annotations

import torch

from seaflow import generation


class PartialResponses:
    """A batch of responses being sampled, resumable block by block (see the module docstring).

    Rows are prompt-major: ``copies`` rows per prompt.

    Args:
        model: the policy (a causal LM).
        prompt_ids: one token list per prompt.
        copies: rows per prompt.
        width: response tokens a row may hold (the longest forced start plus the free budget).
        eos_ids, pad_id: as :func:`seaflow.generation.sample`.
        generators: one per row; row ``i`` draws its tokens from ``generators[i]``.
        temperature, top_p: the policy's sampling rule.
        forced: each row's forced response start (``data.response_prefix``) or None.
        share_prompt: run each prompt through the model once and copy its keys and values to
            its rows (fewer FLOPs, the same tokens; :func:`seaflow.generation.prefill`); False
            runs every row's prompt.
    """

    @torch.no_grad()
    def __init__(self, model, prompt_ids: list[list[int]], copies: int, width: int, eos_ids: list[int], pad_id: int,
                 generators: list[torch.Generator], temperature: float = 1.0, top_p: float = 1.0,
                 forced: list[list[int]] | None = None, share_prompt: bool = True):
        rows = len(prompt_ids) * copies
        if len(generators) != rows:
            raise ValueError(f"{len(generators)} generators for {rows} rows")
        context = generation.prefill(model, [ids for ids in prompt_ids for _ in range(copies)], pad_id, share=share_prompt)
        self.model, self.temperature, self.top_p = model, temperature, top_p
        self.state = generation.Generation.start(context, width, eos_ids, pad_id, forced=forced)
        self.use(generators)

    def use(self, generators: list[torch.Generator]) -> None:
        """Row ``i`` draws its next tokens from ``generators[i]``."""
        self.generators = list(generators)
        self.choose, self.rules = generation.sampling_rule(self.generators, self.temperature, self.top_p)

    @property
    def rows(self) -> int:
        return self.state.tokens.shape[0]

    @property
    def width(self) -> int:
        return self.state.tokens.shape[1]

    @property
    def step(self) -> int:
        """Tokens decoded so far (the same for every row)."""
        return self.state.steps

    @property
    def tokens(self) -> torch.Tensor:
        return self.state.tokens

    @property
    def lengths(self) -> torch.Tensor:
        return self.state.lengths

    @property
    def finished(self) -> torch.Tensor:
        """``(rows,)`` bool: the rows that have ended."""
        ended = torch.ones(self.rows, dtype=torch.bool, device=self.state.tokens.device)
        ended[self.state.rows] = self.state.done
        return ended

    @property
    def done(self) -> bool:
        """Every row has ended (EOS or its budget): nothing is left to decode."""
        return self.state.finished

    def so_far(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, lengths)``: each row's response so far (an ended row's whole response)."""
        return self.state.so_far()

    @torch.no_grad()
    def advance(self, tokens: int, on_token=None) -> None:
        """Decode up to ``tokens`` more tokens per row (fewer when every row ends first);
        ``on_token(step)`` is called after each."""
        records = [] if on_token is None else [lambda step, logits, token: on_token(step.index + 1)]
        generation.generate(self.model, self.state, self.choose, self.rules, records, steps=tokens)

    def select(self, index: torch.Tensor | list[int], generators: list[torch.Generator] | None = None) -> None:
        """Keep rows ``index`` (in that order; repeats copy a row, its cache included).

        ``generators``: the new rows' random streams; None keeps each row's own (``index``
        must not repeat a row then: two copies drawing from one stream would not be independent).
        """
        index = torch.as_tensor(index, dtype=torch.long, device=self.state.tokens.device)
        if generators is None:
            if len(set(index.tolist())) < index.numel():
                raise ValueError("select: repeated rows need generators of their own")
            generators = [self.generators[i] for i in index.tolist()]
        if len(generators) != index.numel():
            raise ValueError(f"select: {len(generators)} generators for {index.numel()} rows")
        self.state = self.state.select(index)
        self.use(generators)
