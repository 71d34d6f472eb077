"""Partial responses that grow a block of tokens at a time on the policy's KV cache, and can be
pruned or resampled between blocks.

Speculative Rejection and the particle filter decode many rows a few tokens at a time, score
the text so far, keep some rows (or copies of some rows) and go on. :class:`PartialResponses`
holds what going on needs (the key/value cache, attention mask, positions, the logits of the
next token), so a kept row never re-reads its prompt or its prefix. A step is
:func:`seaflow.generation.sample`'s rule with the same draws from the same per-row generators,
so a row that is never pruned or resampled is exactly the sample ``generation.sample`` draws with
its seed (Best-of-N's candidate with that index), and costs the same model passes.
"""

from __future__ import annotations

import torch

from seaflow import rng
from seaflow.generation import filter_top_p, forced_start
from seaflow.layout import build_layout, cache_argument, output_cache


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
            its rows (fewer FLOPs, the same tokens); False runs every row's prompt, as
            :func:`seaflow.generation.sample` does.
    """

    @torch.no_grad()
    def __init__(self, model, prompt_ids: list[list[int]], copies: int, width: int, eos_ids: list[int], pad_id: int,
                 generators: list[torch.Generator], temperature: float = 1.0, top_p: float = 1.0,
                 forced: list[list[int]] | None = None, share_prompt: bool = False):
        self.model, self.width, self.pad_id = model, width, pad_id
        self.temperature, self.top_p = temperature, top_p
        self.generators = list(generators)
        device = model.get_input_embeddings().weight.device
        rows = len(prompt_ids) * copies
        if len(self.generators) != rows:
            raise ValueError(f"{len(self.generators)} generators for {rows} rows")
        run = prompt_ids if share_prompt else [ids for ids in prompt_ids for _ in range(copies)]
        layout = build_layout(run, torch.zeros(len(run), dtype=torch.long), pad_id).to(device)
        out = model(input_ids=layout.ids, attention_mask=layout.attention_mask, position_ids=layout.position_ids,
                    use_cache=True, logits_to_keep=1)
        self.cache = output_cache(out)
        self.logits = out.logits[:, -1].float()  # predicts the next token of every row
        self.mask = layout.attention_mask
        self.next_position = layout.position_ids[:, -1:] + 1
        if share_prompt:  # every row of a prompt starts from its prompt's keys and values
            expand = torch.arange(len(prompt_ids), device=device).repeat_interleave(copies)
            self.cache.reorder_cache(expand)
            self.logits, self.mask, self.next_position = (t.index_select(0, expand) for t in (self.logits, self.mask, self.next_position))
        self.pending: torch.Tensor | None = None  # the last chosen tokens, not yet run through the model
        self.tokens = torch.full((rows, width), pad_id, dtype=torch.long, device=device)
        self.lengths = torch.full((rows,), width, dtype=torch.long, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.eos = torch.tensor(eos_ids, device=device)
        self.start, self.limit = forced_start(forced, rows, width, device)
        self.step = 0  # tokens decoded so far (the same for every row)

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def done(self) -> bool:
        """Every row has ended (EOS or its budget): nothing is left to decode."""
        return self.step >= self.width or bool(self.finished.all())

    def so_far(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (rows, step), lengths (rows,))``: each row's response so far (an ended row's whole response)."""
        lengths = torch.where(self.finished, self.lengths, torch.full_like(self.lengths, self.step))
        return self.tokens[:, : max(self.step, 1)], lengths

    @torch.no_grad()
    def advance(self, tokens: int, on_token=None) -> None:
        """Decode up to ``tokens`` more tokens per row (fewer when every row ends first);
        ``on_token(step)`` is called after each."""
        for _ in range(tokens):
            if self.done:
                return
            self._step()
            if on_token is not None:
                on_token(self.step)

    def _step(self) -> None:
        if self.pending is not None:  # run last step's tokens now that another one is needed
            self.mask = torch.cat([self.mask, (~self.finished).long().unsqueeze(1)], dim=1)
            out = self.model(input_ids=self.pending.unsqueeze(1), attention_mask=self.mask, position_ids=self.next_position,
                             use_cache=True, **{cache_argument(self.model): self.cache})
            self.cache = output_cache(out)
            self.logits = out.logits[:, -1].float()
            self.next_position = self.next_position + 1
        step, finished, lengths = self.step, self.finished, self.lengths
        if self.temperature == 0:
            token = self.logits.argmax(-1)
        else:
            scores = filter_top_p(self.logits / self.temperature, self.top_p)
            token = (scores + rng.gumbel(scores.shape, self.generators, scores.device)).argmax(-1)
        if self.start is not None:
            if step < self.start.shape[1]:
                token = torch.where(self.start[:, step] >= 0, self.start[:, step], token)
            over = (step >= self.limit) & ~finished  # the row's free budget is spent: it ends here
            lengths = torch.where(over, torch.full_like(lengths, step), lengths)
            finished = finished | over
        is_eos = torch.isin(token, self.eos) & ~finished
        self.lengths = torch.where(is_eos, torch.full_like(lengths, step), lengths)
        self.finished = finished | is_eos
        self.tokens[:, step] = torch.where(self.finished, torch.full_like(token, self.pad_id), token)
        self.step += 1
        self.pending = None if self.done else token

    def select(self, index: torch.Tensor | list[int], generators: list[torch.Generator] | None = None) -> None:
        """Keep rows ``index`` (in that order; repeats copy a row, its cache included).

        ``generators``: the new rows' random streams; None keeps each row's own (``index``
        must not repeat a row then: two copies drawing from one stream would not be independent).
        """
        index = torch.as_tensor(index, dtype=torch.long, device=self.tokens.device)
        if generators is None:
            if len(set(index.tolist())) < index.numel():
                raise ValueError("select: repeated rows need generators of their own")
            generators = [self.generators[i] for i in index.tolist()]
        if len(generators) != index.numel():
            raise ValueError(f"select: {len(generators)} generators for {index.numel()} rows")
        self.generators = list(generators)
        self.cache.reorder_cache(index)
        for name in ("logits", "mask", "next_position", "pending", "tokens", "lengths", "finished", "start", "limit"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, index))
